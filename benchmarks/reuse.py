"""Reuse and embargo benchmark on SeaweedFS.

- Reusing a ~1 GB Zarr in a second Dandiset: attach by reference, and an upload of an identical
  copy (dedup), next to uploading it again as a new Zarr.
- Lifting the embargo of a Zarr of 1 k and 10 k objects (server-side move), to see the growth.

    python benchmarks/reuse.py [--size-mb 1024] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import icechunk

sys.path.insert(0, str(Path(__file__).parent))
from common import Timer, make_chunked_v2, prefix_usage, write_results  # noqa: E402

from dandi_icechunk.archive_hooks import attach_zarr_to_dandiset, unembargo_dandiset_zarrs  # noqa: E402
from dandi_icechunk.chunk_layout import INLINE_MAX  # noqa: E402
from dandi_icechunk.testing import run_seaweedfs  # noqa: E402
from dandi_icechunk.upload import upload_zarr  # noqa: E402


EMBARGO_CHUNK = 2 * INLINE_MAX


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--chunk-kb", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    size = (128 if args.quick else args.size_mb) * 1024 * 1024
    embargo_sizes = [100, 1_000] if args.quick else [1_000, 10_000]
    icechunk.set_logs_filter("error")
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="dandi-icechunk-bench-") as tmp:
        work = Path(tmp)
        src = work / "a.zarr"
        make_chunked_v2(src, total_bytes=size, chunk_bytes=args.chunk_kb * 1024)
        copy = work / "copy.zarr"
        shutil.copytree(src, copy)
        with run_seaweedfs(work / "s3") as s3:
            location, client = s3.location(), s3.client()
            zarr_id = str(uuid.uuid4())
            with Timer() as first:
                upload_zarr(src, location, zarr_id, dandiset="000001")
            _, before = prefix_usage(client, s3.bucket, "")
            with Timer() as attach:
                attach_zarr_to_dandiset(zarr_id, "000002", location=location)
            with Timer() as dedup:
                reused = upload_zarr(copy, location, str(uuid.uuid4()), dandiset="000003")
            assert reused.reused
            _, after = prefix_usage(client, s3.bucket, "")
            with Timer() as again:
                upload_zarr(copy, location, str(uuid.uuid4()), dedup=False)
            results["reuse"] = {
                "bytes": size, "upload_again_s": again.seconds, "first_upload_s": first.seconds,
                "attach_s": attach.seconds, "dedup_upload_s": dedup.seconds,
                "bytes_stored_by_attach_and_dedup": after - before,
            }
            embargo = []
            for n in embargo_sizes:
                zsrc = work / f"e{n}.zarr"
                # chunks past INLINE_MAX: each is an object of its own, as a microscopy Zarr's are
                make_chunked_v2(zsrc, total_bytes=n * EMBARGO_CHUNK, chunk_bytes=EMBARGO_CHUNK, seed=n)
                zid = str(uuid.uuid4())
                upload_zarr(zsrc, location, zid, embargoed=True)
                [moved] = unembargo_dandiset_zarrs([zid], location=location)
                embargo.append({"files": n, "objects_moved": moved.objects_moved, "seconds": moved.seconds})
            results["unembargo"] = embargo
    r = results["reuse"]
    rows = [
        f"Reusing a {size / 1e6:.0f} MB Zarr ({args.chunk_kb} KiB chunks) in another Dandiset, SeaweedFS on loopback", "",
        "| how | s | bytes stored |", "|---|---|---|",
        f"| upload it again as a new Zarr | {r['upload_again_s']:.1f} | {size / 1e6:.0f} MB |",  # type: ignore[index]
        f"| attach by reference (hook / `attach`) | {r['attach_s']:.3f} | |",  # type: ignore[index]
        f"| upload an identical copy (dedup finds it) | {r['dedup_upload_s']:.1f} (hashing) | |",  # type: ignore[index]
        f"| attach + dedup together stored | | {r['bytes_stored_by_attach_and_dedup']} B |",  # type: ignore[index]
        "", "Lifting an embargo (server-side move of every object):", "",
        "| Zarr files | objects moved | s |", "|---|---|---|",
    ] + [f"| {e['files']:,} | {e['objects_moved']:,} | {e['seconds']:.1f} |" for e in embargo]
    write_results(args.out, "reuse", results, "\n".join(rows))


if __name__ == "__main__":
    main()

"""Publish time against Zarr size: one Zarr of 10 k, 100 k and 1 M chunks on SeaweedFS.

Chunks are metadata-only (1-byte chunks Icechunk keeps inline in its manifests), so the
repositories are built quickly; publish never reads chunks, so its time is what it would be for
full-size chunks. Each size is published three times (three versions) and the median is kept.

    python benchmarks/publish.py [--quick]      # --quick: 1 k, 10 k, 100 k
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import icechunk
import zarr
from zarr.core.buffer import cpu

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results  # noqa: E402

from dandi_icechunk.archive_hooks import publish_dandiset  # noqa: E402
from dandi_icechunk.index import DigestIndex, FileDigest, store_index  # noqa: E402
from dandi_icechunk.session import CommitInfo, ZarrRepository  # noqa: E402
from dandi_icechunk.testing import draft_zarr_asset, run_seaweedfs  # noqa: E402


def build_repository(location, zarr_id: str, n_chunks: int) -> CommitInfo:  # type: ignore[no-untyped-def]
    """A repository whose tip is a dandi-icechunk commit of one array of ``n_chunks`` chunks."""
    repo = ZarrRepository.open(location, zarr_id, create=True)
    session = repo.writable_session()
    zarr.create_array(session.store, name="a", shape=(n_chunks,), chunks=(1,), dtype="u1",
                      fill_value=0, compressors=None, zarr_format=3)
    data = cpu.Buffer.from_bytes(b"\x01")

    async def fill() -> None:
        semaphore = asyncio.Semaphore(256)

        async def one(i: int) -> None:
            async with semaphore:
                await session.store.set(f"a/c/{i}", data)

        await asyncio.gather(*(one(i) for i in range(n_chunks)))

    asyncio.run(fill())
    digest = FileDigest(hashlib.md5(b"\x01").hexdigest(), 1)
    index = DigestIndex(3, {f"a/c/{i}": digest for i in range(n_chunks)}, {})
    info = CommitInfo(
        zarr_checksum=index.zarr_checksum(), file_count=index.file_count, size=index.size,
        index_id=store_index(repo.objects, index), zarr_format=3, user="benchmark",
    )
    session.commit("benchmark data", info.to_metadata())
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    sizes = [1_000, 10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    icechunk.set_logs_filter("error")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dandi-icechunk-bench-") as tmp, \
            run_seaweedfs(Path(tmp) / "s3") as server:
        location = server.location()
        for n in sizes:
            zarr_id = str(uuid.uuid4())
            start = time.perf_counter()
            info = build_repository(location, zarr_id, n)
            build = time.perf_counter() - start
            asset = draft_zarr_asset(zarr_id, f"z{n}.zarr", info.zarr_checksum, info.size)
            times = []
            for day in (1, 2, 3):
                start = time.perf_counter()
                publish_dandiset("000123", f"0.2601{day:02d}.1200", [asset], location=location)
                times.append(time.perf_counter() - start)
            rows.append({"chunks": n, "build_s": build, "publish_s": times, "publish_median_s": statistics.median(times)})
            print(rows[-1], flush=True)
    ratio = rows[-1]["publish_median_s"] / rows[0]["publish_median_s"]
    table = "\n".join(
        ["Publish time of one Zarr (median of 3 publishes), SeaweedFS on loopback", "",
         "| chunks | publish (s) |", "|---|---|"]
        + [f"| {r['chunks']:,} | {r['publish_median_s']:.3f} |" for r in rows]
        + ["", f"{sizes[-1]:,} vs {sizes[0]:,} chunks: {ratio:.2f}x"]
    )
    write_results(args.out, "publish", {"rows": rows, "largest_over_smallest": ratio}, table)


if __name__ == "__main__":
    main()

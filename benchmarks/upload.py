"""Upload benchmark: a fresh ~1 GB Zarr of ~64 KiB chunks, then a re-upload after changing 1%.

Contenders, same SeaweedFS server (started here on 127.0.0.1), same data, same concurrency:
- raw parallel PUT of every file with boto3 and Content-MD5 (how DANDI uploads today; also the
  physical limit of writes here);
- dandi-icechunk `upload_zarr` (hash, write chunks into a session, one commit).
For the 1% update DANDI today re-hashes locally, lists the remote prefix (ETags) and re-PUTs
changed files; dandi-icechunk hashes only files changed since its last upload (digest cache),
compares with its digest index and commits only changed chunks.

    python benchmarks/upload.py [--size-mb 1024] [--chunk-kb 64] [--jobs 16] [--quick]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import uuid
from pathlib import Path

import icechunk

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    Timer,
    change_chunks,
    fresh_server,
    local_files,
    make_chunked_v2,
    md5_rate_one_core,
    prefix_usage,
    put_files_like_dandi_today,
    update_like_dandi_today,
    write_results,
)

from dandi_icechunk.upload import upload_zarr  # noqa: E402
from dandi_icechunk.upload.digest_cache import DigestCache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--chunk-kb", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--changed", type=float, default=0.01, help="fraction changed")
    parser.add_argument("--quick", action="store_true", help="128 MB instead")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    size = (128 if args.quick else args.size_mb) * 1024 * 1024
    icechunk.set_logs_filter("error")

    with tempfile.TemporaryDirectory(prefix="dandi-icechunk-bench-") as tmp:
        work = Path(tmp)
        src = work / "sample.zarr"
        n_chunks = make_chunked_v2(src, total_bytes=size, chunk_bytes=args.chunk_kb * 1024)
        files = local_files(src)
        nbytes = sum(p.stat().st_size for _, p in files)
        with fresh_server(work / "s3") as server:
            client = server.client()
            location = server.location()
            zarr_id = str(uuid.uuid4())
            cache = DigestCache(work / "digest-cache")  # what the CLI uses by default

            with Timer() as raw:
                put_files_like_dandi_today(client, server.bucket, f"zarr/{zarr_id}", files, args.jobs)
            with Timer() as ours:
                first = upload_zarr(src, location, zarr_id, jobs=args.jobs, digest_cache=cache)
            repo_prefix = location.repository_prefix(zarr_id)
            _, stored_first = prefix_usage(client, server.bucket, repo_prefix)

            changed = change_chunks(src, n_chunks, args.changed)
            changed_bytes = sum((src / k).stat().st_size for k in changed)
            with Timer() as raw_update:
                files_put = update_like_dandi_today(client, server.bucket, f"zarr/{zarr_id}", src, args.jobs)
            with Timer() as ours_update:
                second = upload_zarr(src, location, zarr_id, jobs=args.jobs, digest_cache=cache)
            _, stored_second = prefix_usage(client, server.bucket, repo_prefix)

    mb = nbytes / 1e6
    results = {
        "data": {"bytes": nbytes, "chunks": n_chunks, "chunk_bytes": args.chunk_kb * 1024, "jobs": args.jobs},
        "md5_one_core_MBps": md5_rate_one_core(),
        "first_upload": {
            "raw_put_s": raw.seconds, "raw_put_MBps": mb / raw.seconds,
            "dandi_icechunk_s": ours.seconds, "dandi_icechunk_MBps": mb / ours.seconds,
            "ratio_to_raw_put": raw.seconds / ours.seconds,
            "stored_bytes": stored_first, "snapshot_id": first.snapshot_id,
        },
        "update": {
            "changed_files": len(changed), "changed_bytes": changed_bytes,
            "dandi_today_s": raw_update.seconds, "dandi_today_files_put": files_put,
            "dandi_icechunk_s": ours_update.seconds,
            "dandi_icechunk_files_written": second.files_written,
            "dandi_icechunk_bytes_written": stored_second - stored_first,
            "written_over_changed": (stored_second - stored_first) / changed_bytes,
            "update_over_first_upload_time": ours_update.seconds / ours.seconds,
        },
        "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    f, u = results["first_upload"], results["update"]
    table = "\n".join([
        f"Upload of {mb:.0f} MB in {n_chunks} chunks of {args.chunk_kb} KiB, {args.jobs} parallel, SeaweedFS on loopback",
        "",
        "| | DANDI today (boto3 PUT + MD5) | dandi-icechunk | ratio |",
        "|---|---|---|---|",
        f"| first upload | {f['raw_put_s']:.1f} s ({f['raw_put_MBps']:.0f} MB/s) | {f['dandi_icechunk_s']:.1f} s ({f['dandi_icechunk_MBps']:.0f} MB/s) | {f['ratio_to_raw_put']:.2f}x raw PUT rate |",
        f"| update, {len(changed)} chunks ({changed_bytes / 1e6:.1f} MB) changed | {u['dandi_today_s']:.1f} s | {u['dandi_icechunk_s']:.1f} s | |",
        f"| bytes stored by the update | {changed_bytes / 1e6:.2f} MB (+ old versions kept) | {u['dandi_icechunk_bytes_written'] / 1e6:.2f} MB (chunks + manifests + snapshot + index) | {u['written_over_changed']:.2f}x changed bytes |",
        "",
        f"MD5 on one core: {results['md5_one_core_MBps']:.0f} MB/s; peak client RSS {results['peak_rss_MB']:.0f} MB.",
    ])
    write_results(args.out, "upload", results, table)


if __name__ == "__main__":
    main()

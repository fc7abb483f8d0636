"""Read benchmark: a full ~1 GB array by snapshot ID, three ways, on the same SeaweedFS server.

- through Icechunk (``dandi_icechunk.open_zarr`` by snapshot ID: a read-only session), with
  signed S3 requests and anonymously over plain HTTP (``icechunk.http_storage``);
- zarr-python on the same data stored as a plain Zarr prefix (``zarr/<id>/``, as DANDI stores
  Zarrs today), read anonymously over HTTP (fsspec's HTTP store, what public readers use);
- zarr-python through ``dandi-icechunk serve`` (the plain-Zarr HTTP view of the snapshot);
- and, as the physical limit, boto3 GETs of the plain objects at the same concurrency.

    python benchmarks/read.py [--size-mb 1024] [--chunk-kb 1024] [--jobs 16] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import icechunk
import numpy as np
import uvicorn
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    Timer,
    get_files,
    local_files,
    make_chunked_v2,
    put_files_like_dandi_today,
    write_results,
)

from dandi_icechunk.read import open_zarr  # noqa: E402
from dandi_icechunk.read.serve import create_app  # noqa: E402
from dandi_icechunk.testing import run_seaweedfs  # noqa: E402
from dandi_icechunk.upload import upload_zarr  # noqa: E402


def serve_in_thread(app) -> tuple[str, uvicorn.Server]:  # type: ignore[no-untyped-def]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--chunk-kb", type=int, default=1024)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="128 MB instead")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    size = (128 if args.quick else args.size_mb) * 1024 * 1024
    icechunk.set_logs_filter("error")
    zarr.config.set({"async.concurrency": args.jobs})

    with tempfile.TemporaryDirectory(prefix="dandi-icechunk-bench-") as tmp:
        work = Path(tmp)
        src = work / "sample.zarr"
        make_chunked_v2(src, total_bytes=size, chunk_bytes=args.chunk_kb * 1024)
        expected = zarr.open_array(str(src), mode="r")[:]
        nbytes = expected.nbytes
        with run_seaweedfs(work / "s3") as s3:
            client = s3.client()
            zarr_id = str(uuid.uuid4())
            policy = {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                "Resource": [f"arn:aws:s3:::{s3.bucket}/zarr/*", f"arn:aws:s3:::{s3.bucket}/zarr-icechunk/*"]}]}
            client.put_bucket_policy(Bucket=s3.bucket, Policy=json.dumps(policy))
            files = local_files(src)
            put_files_like_dandi_today(client, s3.bucket, f"zarr/{zarr_id}", files, args.jobs)
            location = s3.location()
            snapshot = upload_zarr(src, location, zarr_id, jobs=args.jobs).snapshot_id
            view, server = serve_in_thread(create_app(location))

            readers = {
                "icechunk_by_snapshot_id": lambda: open_zarr(zarr_id, location=location, snapshot_id=snapshot)[:],
                "icechunk_over_http": lambda: open_zarr(
                    f"{s3.endpoint_url}/{s3.bucket}/{location.repository_prefix(zarr_id)}/", snapshot_id=snapshot)[:],
                "zarr_python_plain_prefix_http": lambda: zarr.open_array(
                    f"{s3.endpoint_url}/{s3.bucket}/zarr/{zarr_id}/", mode="r", zarr_format=2)[:],
                "zarr_python_http_view": lambda: zarr.open_array(
                    f"{view}/{zarr_id}/{snapshot}/", mode="r", zarr_format=2)[:],
            }
            results: dict[str, float] = {}
            for _ in range(args.rounds):  # rounds interleave the readers; the best round counts
                for name, read in readers.items():
                    with Timer() as t:
                        data = read()
                    assert np.array_equal(data, expected)
                    results[name] = min(results.get(name, float("inf")), t.seconds)
                with Timer() as t:
                    get_files(client, s3.bucket, [f"zarr/{zarr_id}/{k}" for k, _ in files], args.jobs)
                results["raw_parallel_get_boto3"] = min(results.get("raw_parallel_get_boto3", float("inf")), t.seconds)
            server.should_exit = True

    mb = nbytes / 1e6
    rates = {k: mb / v for k, v in results.items()}
    base = rates["zarr_python_plain_prefix_http"]
    labels = {
        "icechunk_by_snapshot_id": "Icechunk, by snapshot ID, signed S3 (dandi_icechunk.open_zarr)",
        "icechunk_over_http": "Icechunk, by snapshot ID, anonymous HTTPS-style (http_storage)",
        "zarr_python_plain_prefix_http": "zarr-python, plain Zarr prefix over HTTP (DANDI today)",
        "zarr_python_http_view": "zarr-python, through dandi-icechunk serve",
        "raw_parallel_get_boto3": "raw parallel GET, boto3 (physical limit)",
    }
    table = "\n".join(
        [f"Read of a full {mb:.0f} MB array in {args.chunk_kb} KiB chunks, {args.jobs} concurrent, "
         f"SeaweedFS on loopback (best of {args.rounds} interleaved rounds)", "",
         "| reader | s | MB/s | vs plain prefix |", "|---|---|---|---|"]
        + [f"| {labels[k]} | {results[k]:.1f} | {rates[k]:.0f} | {rates[k] / base:.2f}x |" for k in labels]
    )
    write_results(args.out, "read", {"bytes": nbytes, "chunk_bytes": args.chunk_kb * 1024,
                                     "seconds": results, "MBps": rates}, table)


if __name__ == "__main__":
    main()

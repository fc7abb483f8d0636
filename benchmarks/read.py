"""Read benchmark: a published array read whole and at a random 1 % of its chunks, by each
reader in its own process, on the same SeaweedFS server.

Readers:
- dandi-icechunk by snapshot ID (``open_zarr``: a read-only Icechunk session), with signed S3
  requests and anonymously (Icechunk's HTTP storage, which an anonymous S3 location uses too);
- zarr-python and tensorstore on the same data stored as a plain Zarr prefix (``zarr/<id>/``,
  as DANDI stores Zarrs today), anonymous HTTP;
- zarr-python and tensorstore through ``dandi-icechunk serve`` (the plain-Zarr HTTP view);
- boto3 parallel GET of the same objects, no decoding: not a limit here, where boto3's own
  CPU per request is what bounds it (it trails every other reader).
Each round runs every reader once per pattern, the order rotating, each in a process that
first fills and frees an array of 1.5x the bytes it reads (``fresh_pages``: on this VM, so that
no reader's speed hangs on its place in the order); reported: median seconds
(min-max) from opening to the last byte, MB/s, peak RSS of the reader's process; every read is
checked against the local data; the CPU time of the reader's process per chunk and, for the
readers of the HTTP view, the view's CPU time per request (the view runs in this process, idle
otherwise). Output: results/read.{json,md,png}.

    python benchmarks/read.py [--size-mb 1024] [--chunk-kb 256] [--jobs 16] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import uvicorn
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    Timer,
    child_payload,
    fresh_pages,
    get_files,
    make_chunked_v2,
    median_bars,
    peak_rss_mb,
    publish_sample,
    pyplot,
    rotated,
    run_child,
    summarize_runs,
    write_results,
)

from dandi_icechunk.location import S3Credentials, StorageLocation  # noqa: E402
from dandi_icechunk.testing import run_seaweedfs  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
READERS = {
    "icechunk-signed": "dandi-icechunk by snapshot ID, signed S3",
    "icechunk-anonymous": "dandi-icechunk by snapshot ID, anonymous HTTP",
    "zarr-plain": "zarr-python, plain prefix (DANDI today)",
    "zarr-view": "zarr-python, HTTP view",
    "tensorstore-plain": "tensorstore, plain prefix",
    "tensorstore-view": "tensorstore, HTTP view",
    "raw-get": "raw parallel GET, boto3",
}
PATTERNS = {"whole": "whole array", "random": "random 1 % of chunks"}
BASELINE = "zarr-plain"


def selection(pattern: str, n_chunks: int) -> np.ndarray:
    """The chunk rows a pattern reads (the array has one chunk per row)."""
    if pattern == "whole":
        return np.arange(n_chunks)
    rng = np.random.default_rng(7)
    return np.sort(rng.choice(n_chunks, size=max(1, n_chunks // 100), replace=False))


def digest(values: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(values).data).hexdigest()


def child(reader: str, pattern: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """One reader, one pattern, in this process: seconds from open to the last byte, the CPU
    this process spent meanwhile (every thread's) per chunk, what it read (as a digest), and
    this process's peak RSS."""
    rows = selection(pattern, cfg["n_chunks"])
    plain = f"{cfg['endpoint_url']}/{cfg['bucket']}/zarr/{cfg['zarr_id']}/"
    view = f"{cfg['view']}/{cfg['zarr_id']}/{cfg['snapshot']}/"
    zarr.config.set({"async.concurrency": cfg["jobs"]})
    import boto3
    import tensorstore

    from dandi_icechunk.read import open_zarr

    fresh_pages(3 * len(rows) * cfg["chunk_bytes"] // 2)  # above what any reader holds
    cpu_before = _cpu_seconds()
    with Timer() as t:  # from opening to the last byte; imports are done
        if reader.startswith(("icechunk", "zarr")):
            if reader == "icechunk-signed":
                location = StorageLocation(kind="s3", bucket=cfg["bucket"], endpoint_url=cfg["endpoint_url"],
                                           credentials=S3Credentials(cfg["access_key_id"], cfg["secret_access_key"]))
                array = open_zarr(cfg["zarr_id"], location=location, snapshot_id=cfg["snapshot"])
            elif reader == "icechunk-anonymous":
                array = open_zarr(cfg["repository_url"], snapshot_id=cfg["snapshot"])
            else:
                array = zarr.open_array(plain if reader == "zarr-plain" else view, mode="r", zarr_format=2)
            values = array[:] if pattern == "whole" else array.oindex[rows, :]
        elif reader.startswith("tensorstore"):
            context = tensorstore.Context({"http_request_concurrency": {"limit": cfg["jobs"]},
                                           "cache_pool": {"total_bytes_limit": 0}})
            spec = {"driver": "zarr", "kvstore": plain if reader == "tensorstore-plain" else view}
            store = tensorstore.open(spec, read=True, context=context).result()
            values = (store if pattern == "whole" else store[rows, :]).read().result()
        else:
            client = boto3.client("s3", endpoint_url=cfg["endpoint_url"], region_name="us-east-1",
                                  aws_access_key_id=cfg["access_key_id"], aws_secret_access_key=cfg["secret_access_key"])
            get_files(client, cfg["bucket"], [f"zarr/{cfg['zarr_id']}/{r}/0" for r in rows], cfg["jobs"])
            values = None
    return {"s": t.seconds, "reader_cpu_ms_per_chunk": 1000 * (_cpu_seconds() - cpu_before) / len(rows),
            "digest": digest(values) if values is not None else None, "peak_rss_MB": peak_rss_mb()}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve_in_thread(app: Any) -> tuple[str, uvicorn.Server]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server


def _median(runs: list[dict[str, Any]], field: str) -> str:
    values = [r[field] for r in runs if field in r]
    return f"{statistics.median(values):.2f}" if values else ""


def table(results: dict[str, Any]) -> str:
    data = results["data"]
    lines = [
        f"Read of a {data['bytes'] / 1e6:.0f} MB Zarr v2 array in {data['n_chunks']} chunks of "
        f"{data['chunk_bytes'] // 1024} KiB, {data['jobs']} concurrent requests, median of "
        f"{results['rounds']} interleaved rounds (min-max), each reader in its own process, "
        f"SeaweedFS on loopback; zarr-python {zarr.__version__}, icechunk {icechunk.__version__}.",
        "",
        "| pattern | reader | s (min-max) | MB/s | peak RSS MB | speed vs zarr-python on the plain prefix | reader CPU ms per chunk | view CPU ms per request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pattern, label in PATTERNS.items():
        by = results["summary"][pattern]
        base = by[BASELINE].get("s")
        for key, reader in READERS.items():
            s = by[key]
            if "s" not in s:
                lines.append(f"| {label} | {reader} | failed: {s['error'].strip().splitlines()[-1:]} | | | | | |")
                continue
            ratio = f"{base / s['s']:.2f}x" if base else ""
            reader_cpu, view_cpu = (_median(results["runs"][pattern][key], f) for f in ("reader_cpu_ms_per_chunk", "view_cpu_ms_per_request"))
            lines.append(f"| {label} | {reader} | {s['s']:.2f} ({s['min_s']:.2f}-{s['max_s']:.2f}) | "
                         f"{s['MBps']:.0f} | {s['peak_rss_MB']:.0f} | {ratio} | {reader_cpu} | {view_cpu} |")
            label = ""
    return "\n".join(lines)


def plot(results: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(PATTERNS), figsize=(12, 4.5))
    for ax, (pattern, label) in zip(axes, PATTERNS.items(), strict=True):
        median_bars(ax, READERS, results["summary"][pattern])
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "read.png", dpi=110)


def main() -> None:
    if (payload := child_payload()) is not None:
        print(json.dumps(child(payload["reader"], payload["pattern"], payload["cfg"])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--chunk-kb", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="128 MB, 3 rounds")
    args = parser.parse_args()
    size_mb, rounds = (128, 3) if args.quick else (args.size_mb, args.rounds)
    from dandi_icechunk.read.serve import create_app

    icechunk.set_logs_filter("error")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dandi-icechunk-read-") as tmp:
        work = Path(tmp)
        src = work / "sample.zarr"
        n_chunks = make_chunked_v2(src, total_bytes=size_mb * 1024 * 1024, chunk_bytes=args.chunk_kb * 1024)
        local = zarr.open_array(str(src), mode="r")
        expected = {p: digest(local.oindex[selection(p, n_chunks), :]) for p in PATTERNS}
        nbytes = {p: len(selection(p, n_chunks)) * args.chunk_kb * 1024 for p in PATTERNS}
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {p: {k: [] for k in READERS} for p in PATTERNS}
        with run_seaweedfs(work / "s3") as s3:
            zarr_id, snapshot = publish_sample(s3, src, args.jobs)
            location = s3.location()
            view, server = serve_in_thread(create_app(location))
            cfg = {"endpoint_url": s3.endpoint_url, "bucket": s3.bucket, "access_key_id": s3.access_key_id,
                   "secret_access_key": s3.secret_access_key, "zarr_id": zarr_id, "snapshot": snapshot,
                   "view": view, "n_chunks": n_chunks, "chunk_bytes": args.chunk_kb * 1024, "jobs": args.jobs,
                   "repository_url": f"{s3.endpoint_url}/{s3.bucket}/{location.repository_prefix(zarr_id)}/"}
            for round_ in range(rounds):
                order = rotated(READERS, round_)
                for pattern in PATTERNS:
                    for reader in order:
                        cpu_before = _cpu_seconds()
                        run = run_child(__file__, {"reader": reader, "pattern": pattern, "cfg": cfg}, timeout=1800)
                        if reader.endswith("-view") and "s" in run:
                            run["view_cpu_ms_per_request"] = 1000 * (_cpu_seconds() - cpu_before) / len(selection(pattern, n_chunks))
                        if run.get("digest") not in (None, expected[pattern]):
                            run = {"error": f"{reader} read other values than the local data ({pattern})"}
                        runs[pattern][reader].append(run)
                print(f"round {round_ + 1}/{rounds} done", flush=True)
            server.should_exit = True
    results = {
        "data": {"bytes": n_chunks * args.chunk_kb * 1024, "n_chunks": n_chunks, "chunk_bytes": args.chunk_kb * 1024,
                 "jobs": args.jobs, "pattern_bytes": nbytes},
        "rounds": rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "runs": runs,
        "summary": {p: {k: summarize_runs(v, nbytes[p]) for k, v in by.items()} for p, by in runs.items()},
    }
    write_results(OUT, "read", results, table(results))
    plot(results)


if __name__ == "__main__":
    main()

"""What one chunk fetch costs, by route: the same snapshot's chunks fetched through Icechunk's
signed S3 client, its unsigned S3 client and its plain HTTP storage (what an anonymous location
uses, and the HTTP view for public repositories), against aiohttp GETs of the same bytes as a
plain prefix (zarr-python's transport). No decoding: each chunk's bytes only.

Each route runs in its own process, doing nothing else, the order rotating over rounds; reported:
median seconds (min-max), MB/s and the process's CPU milliseconds per chunk (every thread,
Icechunk's included). Output: results/read-routes.{json,md,png}.

    python benchmarks/read_routes.py [--size-mb 128] [--chunk-kb 256] [--jobs 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    child_payload,
    chunk_key,
    make_chunked_v2,
    peak_rss_mb,
    publish_sample,
    pyplot,
    rotated,
    run_child,
    summarize_runs,
    write_results,
)

OUT = Path(__file__).resolve().parent / "results"
ROUTES = {
    "s3-signed": "Icechunk, S3 client, signed",
    "object-store-signed": "Icechunk, object_store S3 client, signed",
    "s3-unsigned": "Icechunk, S3 client, unsigned",
    "http": "Icechunk, HTTP storage (anonymous)",
    "aiohttp-plain": "aiohttp GET, plain prefix",
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _fetch_all(get: Any, keys: list[str], jobs: int) -> int:
    limit = asyncio.Semaphore(jobs)

    async def one(key: str) -> int:
        async with limit:
            return await get(key)

    return sum(await asyncio.gather(*(one(k) for k in keys)))


def child(route: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Fetch every chunk once by ``route``; seconds, CPU per chunk, bytes checked."""
    import aiohttp
    import icechunk
    from zarr.buffer import default_buffer_prototype

    from dandi_icechunk.hierarchy import Hierarchy
    from dandi_icechunk.location import S3Credentials, StorageLocation
    from dandi_icechunk.session import ZarrRepository

    keys = [chunk_key(i) for i in range(cfg["n_chunks"])]
    admin = StorageLocation(kind="s3", bucket=cfg["bucket"], endpoint_url=cfg["endpoint_url"],
                            credentials=S3Credentials(cfg["access_key_id"], cfg["secret_access_key"]))
    repo = ZarrRepository.open(admin, cfg["zarr_id"])
    hierarchy = Hierarchy.from_documents(repo.index_reader(cfg["snapshot"]).documents)
    if route == "aiohttp-plain":
        async def run() -> int:
            async with aiohttp.ClientSession() as http:
                async def get(key: str) -> int:
                    async with http.get(f"{cfg['plain']}{key}") as response:
                        return len(await response.read())
                return await _fetch_all(get, keys, cfg["jobs"])
    else:
        storage = {
            "s3-signed": lambda: admin.icechunk_storage(cfg["zarr_id"]),
            "object-store-signed": lambda: icechunk.Storage.new_s3_object_store(
                icechunk.S3Options(region="us-east-1", endpoint_url=cfg["endpoint_url"], allow_http=True,
                                   force_path_style=True),
                cfg["bucket"], admin.repository_prefix(cfg["zarr_id"]),
                icechunk.s3_static_credentials(access_key_id=cfg["access_key_id"],
                                               secret_access_key=cfg["secret_access_key"])),
            "s3-unsigned": lambda: icechunk.s3_storage(
                bucket=cfg["bucket"], prefix=admin.repository_prefix(cfg["zarr_id"]), region="us-east-1",
                endpoint_url=cfg["endpoint_url"], allow_http=True, force_path_style=True, anonymous=True),
            "http": lambda: icechunk.http_storage(str(admin.http_url(cfg["zarr_id"]))),
        }[route]()
        store = icechunk.Repository.open(storage).readonly_session(snapshot_id=cfg["snapshot"]).store
        prototype = default_buffer_prototype()
        targets = {k: hierarchy.icechunk_key(k) for k in keys}

        async def run() -> int:
            async def get(key: str) -> int:
                return len((await store.get(targets[key], prototype)).to_bytes())
            return await _fetch_all(get, keys, cfg["jobs"])

    cpu, start = _cpu(), time.perf_counter()
    nbytes = asyncio.run(run())
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    if nbytes != cfg["n_chunks"] * cfg["chunk_bytes"]:
        return {"error": f"{route} fetched {nbytes} bytes, expected {cfg['n_chunks'] * cfg['chunk_bytes']}"}
    return {"s": seconds, "cpu_ms_per_chunk": 1000 * cpu / cfg["n_chunks"], "peak_rss_MB": peak_rss_mb()}


def table(results: dict[str, Any]) -> str:
    data = results["data"]
    lines = [
        f"Fetch of {data['n_chunks']} chunks of {data['chunk_bytes'] // 1024} KiB, {data['jobs']} at a time, "
        f"no decoding, median of {results['rounds']} rounds (min-max), each route in its own process, "
        "SeaweedFS on loopback.",
        "",
        "| route | s (min-max) | MB/s | CPU ms per chunk (min-max) | vs aiohttp on the plain prefix |",
        "|---|---|---|---|---|",
    ]
    base = results["summary"]["aiohttp-plain"].get("s")
    for key, label in ROUTES.items():
        s = results["summary"][key]
        if "s" not in s:
            lines.append(f"| {label} | failed: {s['error'].strip().splitlines()[-1:]} | | | |")
            continue
        cpu = [r["cpu_ms_per_chunk"] for r in results["runs"][key] if "cpu_ms_per_chunk" in r]
        ratio = f"{base / s['s']:.2f}x" if base else ""
        lines.append(f"| {label} | {s['s']:.2f} ({s['min_s']:.2f}-{s['max_s']:.2f}) | {s['MBps']:.0f} | "
                     f"{statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) | {ratio} |")
    return "\n".join(lines)


def plot(results: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    keys = [k for k in ROUTES if any("cpu_ms_per_chunk" in r for r in results["runs"][k])]
    cpu = [[r["cpu_ms_per_chunk"] for r in results["runs"][k] if "cpu_ms_per_chunk" in r] for k in keys]
    medians = [statistics.median(c) for c in cpu]
    spread = [[m - min(c) for m, c in zip(medians, cpu, strict=True)],
              [max(c) - m for m, c in zip(medians, cpu, strict=True)]]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh([ROUTES[k] for k in keys], medians, xerr=spread, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel("CPU ms per chunk (median; bars: min-max)")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "read-routes.png", dpi=110)


def main() -> None:
    if (payload := child_payload()) is not None:
        print(json.dumps(child(payload["route"], payload["cfg"])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=128)
    parser.add_argument("--chunk-kb", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import icechunk

    from dandi_icechunk.testing import run_seaweedfs
    icechunk.set_logs_filter("error")
    with tempfile.TemporaryDirectory(prefix="dandi-icechunk-read-routes-") as tmp:
        src = Path(tmp) / "sample.zarr"
        chunk_bytes = args.chunk_kb * 1024
        n_chunks = make_chunked_v2(src, total_bytes=args.size_mb * 1024 * 1024, chunk_bytes=chunk_bytes)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ROUTES}
        with run_seaweedfs(Path(tmp) / "s3") as s3:
            zarr_id, snapshot = publish_sample(s3, src, args.jobs)
            cfg = {"endpoint_url": s3.endpoint_url, "bucket": s3.bucket, "access_key_id": s3.access_key_id,
                   "secret_access_key": s3.secret_access_key, "zarr_id": zarr_id, "snapshot": snapshot,
                   "plain": f"{s3.endpoint_url}/{s3.bucket}/zarr/{zarr_id}/", "n_chunks": n_chunks,
                   "chunk_bytes": chunk_bytes, "jobs": args.jobs}
            for round_ in range(args.rounds):
                order = rotated(ROUTES, round_)
                for route in order:
                    runs[route].append(run_child(__file__, {"route": route, "cfg": cfg}, timeout=600))
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    results = {
        "data": {"n_chunks": n_chunks, "chunk_bytes": chunk_bytes, "jobs": args.jobs},
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "load_average_after": os.getloadavg()},
        "runs": runs,
        "summary": {k: summarize_runs(v, n_chunks * chunk_bytes) for k, v in runs.items()},
    }
    write_results(OUT, "read-routes", results, table(results))
    plot(results)


if __name__ == "__main__":
    main()

"""Big objects: the first upload of DANDI's most common Zarr shape, a sharded OME-Zarr v3 whose
shards are ~220 MB (21,628 of DANDI's 29 k Zarrs), by each contender in its own process.

Contenders, interleaved over rounds (the order rotates), each round on a fresh SeaweedFS server
on 127.0.0.1 (its disk space comes back between rounds), the same files and ``--jobs``:
- "DANDI today": boto3 PUT of each file with its Content-MD5, as dandi-cli's presigned PUTs;
- "raw PUT": obstore (Rust) PUT of each file, no MD5: what this server and machine can take;
- "dandi-icechunk": ``upload_zarr`` (hash, write into a session, commit);
- "dandi-icechunk, multipart from 100 MB": the same with Icechunk's default multipart
  threshold, to measure the choice of single PUTs up to 1 GiB.
Reported: median seconds (min-max), MB/s, peak RSS of each contender's process (largest over
rounds). Output: results/big-objects.{json,md,png}.

    python benchmarks/big_objects.py [--shards 16] [--shard-mb 220] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    Timer,
    child_payload,
    fresh_server,
    local_files,
    md5_rate_one_core,
    peak_rss_mb,
    put_files_like_dandi_today,
    pyplot,
    rotated,
    run_child,
    summarize_runs,
    write_results,
)
from workloads import ROW_VALUES, Workload  # noqa: E402

from dandi_icechunk.location import S3Credentials, StorageLocation  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
CONTENDERS = {
    "dandi-today": "DANDI today (boto3 PUT + Content-MD5)",
    "raw-put": "raw PUT (obstore, no MD5)",
    "icechunk": "dandi-icechunk",
    "icechunk-multipart": "dandi-icechunk, multipart from 100 MB",
}


def child(contender: str, server: dict[str, str], src: Path, jobs: int) -> dict[str, Any]:
    """One contender's upload of ``src``, in this process; its time and this process's peak RSS."""
    files = local_files(src)
    credentials = S3Credentials(server["access_key_id"], server["secret_access_key"])
    location = StorageLocation(kind="s3", bucket=server["bucket"], endpoint_url=server["endpoint_url"],
                               credentials=credentials)
    zarr_id = str(uuid.uuid4())
    if contender == "dandi-today":
        import boto3

        client = boto3.client("s3", endpoint_url=server["endpoint_url"], region_name="us-east-1",
                              aws_access_key_id=credentials.access_key_id,
                              aws_secret_access_key=credentials.secret_access_key)
        with Timer() as t:
            put_files_like_dandi_today(client, server["bucket"], f"zarr/{zarr_id}", files, jobs)
    elif contender == "raw-put":
        import obstore
        from obstore.store import S3Store

        store = S3Store(server["bucket"], prefix=f"raw/{zarr_id}", config={
            "endpoint": server["endpoint_url"], "region": "us-east-1", "virtual_hosted_style_request": False,
            "access_key_id": credentials.access_key_id, "secret_access_key": credentials.secret_access_key,
        }, client_options={"allow_http": True})

        async def put_all() -> None:
            slots = asyncio.Semaphore(jobs)

            async def put(key: str, path: Path) -> None:
                async with slots:
                    await obstore.put_async(store, key, await asyncio.to_thread(path.read_bytes))

            await asyncio.gather(*(put(k, p) for k, p in files))

        with Timer() as t:
            asyncio.run(put_all())
    else:
        import icechunk

        from dandi_icechunk.upload import commit, upload_zarr

        icechunk.set_logs_filter("error")
        if contender == "icechunk-multipart":
            commit._MULTIPART_MIN = 100 * 1024 * 1024  # Icechunk's own default, for comparison
        with Timer() as t:
            upload_zarr(src, location, zarr_id, jobs=jobs, dedup=False)
    return {"s": t.seconds, "peak_rss_MB": peak_rss_mb()}


def table(results: dict[str, Any]) -> str:
    data, by = results["data"], results["summary"]
    today = by["dandi-today"].get("s")
    raw = by["raw-put"].get("s")
    lines = [
        f"First upload of {data['shards']} shards of {data['shard_bytes'] / 1e6:.0f} MB and the metadata "
        f"({data['files']} files, {data['bytes'] / 1e9:.2f} GB, Zarr v3), {data['jobs']} parallel transfers, median of "
        f"{results['rounds']} interleaved round(s) (min-max), SeaweedFS on loopback; "
        f"MD5 on one core: {results['md5_one_core_MBps']:.0f} MB/s.",
        "",
        "| contender | s (min-max) | MB/s | peak RSS MB | speed vs DANDI today | speed vs raw PUT |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in CONTENDERS.items():
        s = by[key]
        if "s" not in s:
            lines.append(f"| {label} | failed: {str(s.get('error', '')).splitlines()[-1:]} | | | | |")
            continue
        vs_today = f"{today / s['s']:.2f}x" if today else ""
        vs_raw = f"{raw / s['s']:.2f}x" if raw else ""
        lines.append(f"| {label} | {s['s']:.1f} ({s['min_s']:.1f}-{s['max_s']:.1f}) | {s['MBps']:.0f} | "
                     f"{s['peak_rss_MB']:.0f} | {vs_today} | {vs_raw} |")
    return "\n".join(lines)


def plot(results: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    keys = [k for k in CONTENDERS if "s" in results["summary"][k]]
    labels = [CONTENDERS[k].replace(" (", "\n(").replace(", ", ",\n") for k in keys]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, field, title in ((left, "s", "time (s, median; bars: min-max)"), (right, "peak_rss_MB", "peak RSS (MB)")):
        values = [results["summary"][k][field] for k in keys]
        if field == "s":
            errors = [[v - results["summary"][k]["min_s"] for k, v in zip(keys, values, strict=True)],
                      [results["summary"][k]["max_s"] - v for k, v in zip(keys, values, strict=True)]]
            ax.bar(labels, values, yerr=errors, capsize=4)
        else:
            ax.bar(labels, values)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    data = results["data"]
    fig.suptitle(f"First upload, {data['shards']} shards of {data['shard_bytes'] / 1e6:.0f} MB", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "big-objects.png", dpi=110)


def main() -> None:
    if (payload := child_payload()) is not None:
        print(json.dumps(child(payload["contender"], payload["server"], Path(payload["src"]), payload["jobs"])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--shard-mb", type=int, default=220)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="4 shards, 1 round")
    args = parser.parse_args()
    shards, rounds = (4, 1) if args.quick else (args.shards, args.rounds)
    rows = max(1, args.shard_mb * 1_000_000 // (ROW_VALUES * 2))
    workload = Workload("sharded", shards, 1, shard_rows=rows)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in CONTENDERS}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="big-objects-") as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "sharded.zarr"
        workload.make(src)
        files = local_files(src)
        nbytes = sum(p.stat().st_size for _, p in files)
        for round_ in range(rounds):
            order = rotated(CONTENDERS, round_)
            for key in order:
                with fresh_server(tmp / f"s3-{round_}-{key}") as server:
                    config = {"endpoint_url": server.endpoint_url, "bucket": server.bucket,
                              "access_key_id": server.access_key_id, "secret_access_key": server.secret_access_key}
                    runs[key].append(run_child(__file__, {"contender": key, "server": config, "src": str(src),
                                                          "jobs": args.jobs}, timeout=3600))
                print(f"round {round_ + 1}/{rounds} {key}: {runs[key][-1].get('s', 'failed')}", flush=True)
    results = {
        "data": {"files": len(files), "shards": shards, "shard_bytes": rows * ROW_VALUES * 2, "bytes": nbytes,
                 "jobs": args.jobs},
        "rounds": rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "md5_one_core_MBps": md5_rate_one_core(),
        "runs": runs,
        "summary": {k: summarize_runs(v, nbytes) for k, v in runs.items()},
    }
    write_results(OUT, "big-objects", results, table(results))
    plot(results)


if __name__ == "__main__":
    main()

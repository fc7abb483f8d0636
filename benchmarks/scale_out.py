"""Scale-out: the first upload of one Zarr in one process and on a Dask cluster of 1 and 2
worker processes (``upload_zarr(dask=...)``), each contender in its own process.

Two shapes: hash-heavy (incompressible 16 MiB chunks: MD5 and the transfers dominate) and many
small files (1 KiB chunks: per-file work dominates). The route is a lab's (``dedup``: a hashing
pass, the checksum lookup, then the changed chunks sent), no digest cache. Each run gets a
fresh SeaweedFS server on 127.0.0.1; the Dask cluster (``LocalCluster``, one thread per worker
process) is started before the clock. Contenders interleave over rounds (the order rotates).
Reported: median seconds (min-max), files/s and MB/s, the time in the hashing and sending
phases against the rest (scan, checksum, commit: the uploading process's own work), and peak
RSS of the uploading process and of the largest worker. Output: results/scale-out.{json,md,png}.

On this machine the cluster's workers, the uploading process and the S3 server share two
cores, so two workers cannot double anything; the run measures what distribution costs and
what the uploading process keeps (docs/scale-out.md has the model for N machines).

    python benchmarks/scale_out.py [--rounds 3] [--shapes hash-heavy small-files] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    Timer,
    child_payload,
    fresh_server,
    local_files,
    make_chunked_v2,
    peak_rss_mb,
    pyplot,
    rotated,
    run_child,
    summarize_runs,
    write_results,
)

from dandi_icechunk.location import S3Credentials, StorageLocation  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
CONTENDERS = {"local": "one process", "dask-1": "Dask, 1 worker", "dask-2": "Dask, 2 workers"}
SHAPES = {  # name: (total bytes, chunk bytes)
    "hash-heavy": (1024 * 1024 * 1024, 16 * 1024 * 1024),
    "small-files": (20_000 * 1024, 1024),
}


class _Phases:
    """A Progress that records when each phase (hashing, uploading) starts and ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def start(self, label: str, files: int, nbytes: int) -> None:
        self._current = (label, time.perf_counter())

    def advance(self, files: int, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        if self._current:
            label, began = self._current
            self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - began
            self._current = None


def child(contender: str, server: dict[str, str], src: Path, jobs: int) -> dict[str, Any]:
    import icechunk

    from dandi_icechunk.upload import upload_zarr

    icechunk.set_logs_filter("error")
    location = StorageLocation(kind="s3", bucket=server["bucket"], endpoint_url=server["endpoint_url"],
                               credentials=S3Credentials(server["access_key_id"], server["secret_access_key"]))
    phases = _Phases()
    if contender == "local":
        with Timer() as t:
            upload_zarr(src, location, str(uuid.uuid4()), jobs=jobs, progress=phases)
        return {"s": t.seconds, "phases": phases.seconds, "peak_rss_MB": peak_rss_mb()}
    from distributed import Client, LocalCluster

    workers = int(contender.split("-")[1])
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("dandi_icechunk.upload.chunks"))  # imports before the clock
        with Timer() as t:
            upload_zarr(src, location, str(uuid.uuid4()), jobs=jobs, progress=phases, dask=client)
        worker_rss = max(client.run(peak_rss_mb).values())
    return {"s": t.seconds, "phases": phases.seconds, "peak_rss_MB": peak_rss_mb(), "worker_peak_rss_MB": worker_rss}


def table(results: dict[str, Any]) -> str:
    lines = [
        f"First upload (hashing pass, then sending), median of {results['rounds']} interleaved round(s) "
        f"(min-max), {results['jobs']} transfers per process, SeaweedFS on loopback, {results['machine']['cpus']} cores "
        "shared by the S3 server, the uploading process and the workers.",
        "",
        "| shape | contender | s (min-max) | files/s | MB/s | vs one process | hashing + sending s | rest s | peak RSS MB (uploader / worker) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, data in results["shapes"].items():
        base = data["summary"]["local"].get("s")
        for key, label in CONTENDERS.items():
            s = data["summary"][key]
            if "s" not in s:
                lines.append(f"| {shape} | {label} | failed: {str(s.get('error', '')).splitlines()[-1:]} | | | | | | |")
                continue
            work = s["phases_s"]
            lines.append(
                f"| {shape} | {label} | {s['s']:.1f} ({s['min_s']:.1f}-{s['max_s']:.1f}) | {data['files'] / s['s']:.0f} | "
                f"{s['MBps']:.1f} | {base / s['s']:.2f}x | {work:.1f} | {s['s'] - work:.1f} | "
                f"{s['peak_rss_MB']:.0f} / {s.get('worker_peak_rss_MB', 0):.0f} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(results["shapes"]), figsize=(5 * len(results["shapes"]), 3.6), squeeze=False)
    axes = axes[0]
    for ax, (shape, data) in zip(axes, results["shapes"].items(), strict=True):
        keys = [k for k in CONTENDERS if "s" in data["summary"][k]]
        work = [data["summary"][k]["phases_s"] for k in keys]
        rest = [data["summary"][k]["s"] - w for k, w in zip(keys, work, strict=True)]
        labels = [CONTENDERS[k] for k in keys]
        ax.bar(labels, work, label="hashing + sending")
        ax.bar(labels, rest, bottom=work, label="uploading process only (scan, checksum, commit)")
        ax.set_title(f"{shape}: {data['files']} files, {data['bytes'] / 1e6:.0f} MB (s, median)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "scale-out.png", dpi=110)


def main() -> None:
    if (payload := child_payload()) is not None:
        print(json.dumps(child(payload["contender"], payload["server"], Path(payload["src"]), payload["jobs"])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="a tenth of each shape, 1 round")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    results: dict[str, Any] = {"rounds": rounds, "jobs": args.jobs, "shapes": {},
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "load_average_before": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp_name:
        tmp = Path(tmp_name)
        for shape in args.shapes:
            total, chunk = SHAPES[shape]
            src = tmp / f"{shape}.zarr"
            make_chunked_v2(src, total_bytes=total // 10 if args.quick else total, chunk_bytes=chunk)
            files = local_files(src)
            nbytes = sum(p.stat().st_size for _, p in files)
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in CONTENDERS}
            for round_ in range(rounds):
                order = rotated(CONTENDERS, round_)
                for key in order:
                    with fresh_server(tmp / f"s3-{shape}-{round_}-{key}") as server:
                        config = {"endpoint_url": server.endpoint_url, "bucket": server.bucket,
                                  "access_key_id": server.access_key_id,
                                  "secret_access_key": server.secret_access_key}
                        runs[key].append(run_child(__file__, {"contender": key, "server": config, "src": str(src),
                                                              "jobs": args.jobs}, timeout=3600))
                    print(f"{shape} round {round_ + 1}/{rounds} {key}: {runs[key][-1].get('s', runs[key][-1])}",
                          flush=True)
            summary = {}
            for key, key_runs in runs.items():
                summary[key] = summarize_runs(key_runs, nbytes)
                good = [r for r in key_runs if "s" in r]
                if good:
                    summary[key]["phases_s"] = sorted(sum(r["phases"].values()) for r in good)[len(good) // 2]
                    if "worker_peak_rss_MB" in good[0]:
                        summary[key]["worker_peak_rss_MB"] = max(r["worker_peak_rss_MB"] for r in good)
            results["shapes"][shape] = {"files": len(files), "bytes": nbytes, "runs": runs, "summary": summary}
    results["machine"]["load_average_after"] = os.getloadavg()
    write_results(OUT, "scale-out", results, table(results))
    plot(results)


if __name__ == "__main__":
    main()

"""Versions of a Zarr, four ways, side by side: DANDI today, DANDI's versioned-Zarr proposal
(S3 versions + PostgreSQL rows + manifests), Icechunk used directly, and dandi-icechunk.

For each workload (a classic chunked Zarr, a sharded one, and a larger classic one for growth)
one SeaweedFS server on 127.0.0.1 holds a bucket per contender; each contender runs in its own
process. Every version of the workload (1% of the chunk files rewritten each time) is uploaded
by every contender in turn; versions 1, 5 and the last are published; at the end each contender
reads the whole array at the first and the last version (best of 3 rounds, each checked
against the local data) and reports the bytes it stores. The physical limits (raw parallel
PUT/GET with a Rust client, MD5 on one core) are measured in the same run. Writes ``results/compare.json``, ``results/compare.md``
and PNG plots.

    python benchmarks/compare.py [--quick] [--jobs 16]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import icechunk
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from common import md5_rate_one_core  # noqa: E402
from contenders import CONTENDERS, physical_limits  # noqa: E402
from plots import write_plots  # noqa: E402
from report import markdown_report  # noqa: E402
from workloads import Workload, array_digest, workloads  # noqa: E402

from dandi_icechunk.testing import run_postgres, run_seaweedfs  # noqa: E402

PUBLISHED_VERSIONS = (1, 5, 10)
READ_ROUNDS = 3


class Worker:
    """One contender in its own process, called method by method."""

    def __init__(self, key: str, cfg: dict[str, Any], workload: Workload) -> None:
        context = multiprocessing.get_context("spawn")
        self.key = key
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, key, cfg, workload), daemon=True)
        self.process.start()

    def call(self, method: str, *args: Any) -> Any:
        self.conn.send((method, args))
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"{self.key}.{method} failed:\n{value}")
        return value

    def close(self) -> None:
        self.conn.send(None)
        self.process.join()


def _serve(
    conn: multiprocessing.connection.Connection, key: str, cfg: dict[str, Any], workload: Workload
) -> None:
    icechunk.set_logs_filter("error")
    contender = CONTENDERS[key](cfg, key, workload)
    while (message := conn.recv()) is not None:
        method, args = message
        try:
            if method == "peak_rss_MB":
                value: Any = _peak_rss_mb()
            else:
                value = getattr(contender, method)(*args)
            conn.send(("ok", value))
        except Exception:  # reported to the driver, which stops the run
            conn.send(("error", traceback.format_exc()))


def _peak_rss_mb() -> float:
    """This process's peak resident memory. (``ru_maxrss`` would not do: Linux carries it across
    exec, so a spawned worker would report the driver's peak at the time it was started.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_workload(workload: Workload, work: Path, postgres: str, jobs: int) -> dict[str, Any]:
    print(
        f"== {workload.name}: {workload.nbytes / 1e6:.0f} MB, {workload.versions} versions",
        flush=True,
    )
    src = work / f"{workload.name}.zarr"
    workload.make(src)
    file_bytes = workload.nbytes // workload.files
    with run_seaweedfs(work / f"s3-{workload.name}") as server:
        cfg = {
            "endpoint_url": server.endpoint_url,
            "access_key_id": server.access_key_id,
            "secret_access_key": server.secret_access_key,
            "postgres": postgres,
            "jobs": jobs,
            "work": str(work),
        }
        limits = physical_limits(cfg, src)
        print(f"   limits: {limits}", flush=True)
        workers = {key: Worker(key, cfg, workload) for key in CONTENDERS}
        history: dict[str, list[dict[str, Any]]] = {key: [] for key in workers}
        expected: dict[int, str] = {}
        read_versions = (1, workload.versions) if workload.versions > 2 else ()
        try:
            for version in range(1, workload.versions + 1):
                changed = workload.change(src, version) if version > 1 else []
                if version in read_versions:
                    expected[version] = array_digest(zarr.open_array(str(src), mode="r")[...])
                order = (
                    list(workers)[version % len(workers) :]
                    + list(workers)[: version % len(workers)]
                )
                for key in order:  # a different contender goes first each time, to spread noise
                    step = workers[key].call("upload", src, version, changed)
                    step["stored"] = workers[key].call("storage")
                    step["changed_bytes"] = len(changed) * file_bytes
                    if version in PUBLISHED_VERSIONS or version == workload.versions:
                        step["publish_s"] = workers[key].call("publish", version)
                    history[key].append(step)
                print(
                    f"   v{version}: "
                    + ", ".join(f"{k} {history[k][-1]['s']:.2f}s" for k in workers),
                    flush=True,
                )
            peak_upload = {key: w.call("peak_rss_MB") for key, w in workers.items()}
            reads = _best_reads(workers, read_versions, expected)
            peak_read = {key: w.call("peak_rss_MB") for key, w in workers.items()}
        finally:
            for w in workers.values():
                w.close()
    return {
        "workload": workload.name,
        "kind": workload.kind,
        "files": workload.files,
        "bytes": workload.nbytes,
        "file_bytes": file_bytes,
        "versions": workload.versions,
        "limits": limits,
        "history": history,
        "reads": reads,
        "peak_rss_MB": {"upload": peak_upload, "read": peak_read},
    }


def _best_reads(
    workers: dict[str, Worker], versions: tuple[int, ...], expected: dict[int, str]
) -> dict[str, dict[str, Any]]:
    """The fastest of READ_ROUNDS interleaved reads of each version by each contender (single
    reads on this 2-core machine vary by +-40%), each checked against the local data."""
    best: dict[str, dict[str, Any]] = {key: {} for key in workers}
    for _ in range(READ_ROUNDS):
        for key, worker in workers.items():
            for version in versions:
                result = worker.call("read", version)
                if result is not None and result["digest"] != expected[version]:
                    raise RuntimeError(f"{key} read wrong data at version {version}")
                kept = best[key].get(str(version))
                if kept is None or (result is not None and result["MBps"] > kept["MBps"]):
                    best[key][str(version)] = result
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    parser.add_argument("--jobs", type=int, default=16, help="parallel transfers, every contender")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    icechunk.set_logs_filter("error")
    started = time.perf_counter()
    results: dict[str, Any] = {
        "quick": args.quick,
        "jobs": args.jobs,
        "machine": {
            "cpus": multiprocessing.cpu_count(),
            "python": platform.python_version(),
            "icechunk": icechunk.__version__,
            "zarr": zarr.__version__,
        },
        "md5_one_core_MBps": md5_rate_one_core(),
        "workloads": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="dandi-icechunk-compare-") as tmp,
        run_postgres(database="postgres", server_options=("fsync=on", "shared_buffers=256MB")) as pg,
    ):
        postgres = pg.conninfo
        for workload in workloads(args.quick):
            results["workloads"].append(run_workload(workload, Path(tmp), postgres, args.jobs))
            results["seconds"] = time.perf_counter() - started
            (args.out / "compare.json").write_text(json.dumps(results, indent=2))
    report = markdown_report(results)
    (args.out / "compare.md").write_text(report)
    write_plots(results, args.out)
    print(report)


if __name__ == "__main__":
    main()

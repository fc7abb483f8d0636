"""Icechunk's own memory for one upload's worth of chunks: the floor under an upload's peak RSS.

An upload writes every changed chunk into one writable session and commits once (atomicity).
Icechunk holds each chunk reference written in the session until the commit, and builds the
manifests at the commit. Here Icechunk alone (no dandi-icechunk code) writes N chunks of 1 KiB
through its Zarr store, 16 at a time, into one session on local-filesystem storage, and
commits, each size in a fresh process: RSS before the writes, after them, and the peak (VmHWM)
through the commit.

    python benchmarks/session_memory.py [--sizes 100000 300000 1300000] [--rounds 1]

Writes ``benchmarks/results/session-memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import child_payload, peak_rss_mb, run_child, write_results  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
PER_DIRECTORY = 64


def _rss_mb() -> float:
    """Resident set now, in the unit of :func:`peak_rss_mb` (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Write ``cfg["n"]`` chunks into one session of a new repository and commit."""
    import icechunk
    import zarr
    from zarr.buffer import cpu

    icechunk.set_logs_filter("error")
    n = cfg["n"]
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(cfg["path"]))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(-(-n // PER_DIRECTORY), PER_DIRECTORY * 512),
                      chunks=(1, 512), dtype="<u2", compressors=None, fill_value=0)
    data = cpu.Buffer.from_bytes(os.urandom(1024))
    before = _rss_mb()

    async def write() -> None:
        slots = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with slots:
                await session.store.set(f"a/c/{i // PER_DIRECTORY}/{i % PER_DIRECTORY}", data)

        for start in range(0, n, 10_000):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 10_000))))

    started = time.perf_counter()
    asyncio.run(write())
    written = _rss_mb()
    session.commit(f"{n} chunks")
    return {"before_MB": before, "after_writes_MB": written, "peak_MB": peak_rss_mb(),
            "s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_300_000])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.sizes}
    with tempfile.TemporaryDirectory(prefix="session-memory-") as tmp:
        for round_number in range(args.rounds):
            for n in args.sizes if round_number % 2 == 0 else list(reversed(args.sizes)):
                path = Path(tmp) / f"{n}-{round_number}"
                run = run_child(__file__, {"n": n, "path": str(path)}, timeout=3600)
                shutil.rmtree(path, ignore_errors=True)  # 1.3 M objects: removed as we go
                runs[n].append(run)
                print(f"{n} chunks, round {round_number + 1}: {run}", flush=True)
    by_size = {}
    for n, done in runs.items():
        good = [r for r in done if "peak_MB" in r]
        if not good:
            by_size[str(n)] = {"error": done[-1].get("error", "")}
            continue
        held = [(r["after_writes_MB"] - r["before_MB"]) * (1 << 20) / n for r in good]
        peak = [(r["peak_MB"] - r["before_MB"]) * (1 << 20) / n for r in good]
        by_size[str(n)] = {
            "held_B_per_chunk": statistics.median(held), "held_min": min(held), "held_max": max(held),
            "peak_B_per_chunk": statistics.median(peak), "peak_MB": statistics.median(r["peak_MB"] for r in good),
            "before_MB": statistics.median(r["before_MB"] for r in good),
        }
    results = {"sizes": args.sizes, "rounds": args.rounds, "chunk_bytes": 1024, "by_size": by_size}
    lines = [
        f"Icechunk alone, one session, 1 KiB chunks, median of {args.rounds} round(s) (min-max), local filesystem.",
        "",
        "| chunks | RSS before writes (MB) | held after the writes, per chunk (B) | peak through the commit (MB) | peak over before, per chunk (B) |",
        "|---|---|---|---|---|",
    ]
    for n in args.sizes:
        r = by_size[str(n)]
        if "error" in r:
            lines.append(f"| {n:,} | failed | | | |")
            continue
        lines.append(f"| {n:,} | {r['before_MB']:.0f} | {r['held_B_per_chunk']:.0f} ({r['held_min']:.0f}-{r['held_max']:.0f}) "
                     f"| {r['peak_MB']:.0f} | {r['peak_B_per_chunk']:.0f} |")
    write_results(OUT, "session-memory", results, "\n".join(lines))


if __name__ == "__main__":
    if (payload := child_payload()) is not None:
        print(json.dumps(child(payload)))
    else:
        main()

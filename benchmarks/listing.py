"""Listing a large local Zarr, the start of every upload (a no-change upload is almost only
this): dandi-icechunk's listing in one process and in several, against GNU ``find`` listing and
stat'ing the same files in one process (C, no Python: the floor of one process).

The Zarr: Zarr v2 of 1 KiB chunks, ``--files-per-directory`` chunk files in each directory (as
in ``scale.py``), generated once (or ``--path`` to an existing one; its page cache is warm after
the first round). Each listing runs in its own process, the order rotating over rounds;
reported: median seconds (min-max), peak RSS of the listing process and of its largest worker
(sampled).
Output: results/listing.{json,md,png}.

    python benchmarks/listing.py [--files 300000] [--files-per-directory 64] [--rounds 5]
                                 [--path ZARR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    Timer,
    child_payload,
    make_chunked_v2,
    median_bars,
    peak_rss_mb,
    pyplot,
    rotated,
    run_child,
    summarize_runs,
    write_results,
)

OUT = Path(__file__).resolve().parent / "results"


def contenders(cores: int) -> dict[str, str]:
    """Contender key -> label: one process, every core, and ``find`` when it is GNU's."""
    out = {"one": "dandi-icechunk, 1 process", f"cores-{cores}": f"dandi-icechunk, {cores} processes"}
    if shutil.which("find") and subprocess.run(["find", "--version"], capture_output=True, check=False).returncode == 0:
        out["find"] = "GNU find -printf (C, 1 process)"
    return out


class ChildrenPeak:
    """The largest ``VmHWM`` of this process's child processes, sampled every 20 ms while
    in use (``ru_maxrss`` of children counts the parent's pages they were started from)."""

    def __enter__(self) -> Self:
        self.mb = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        me = os.getpid()
        children = Path(f"/proc/{me}/task/{me}/children")  # of the main thread, which starts them
        while not self._done.wait(0.02):
            for pid in children.read_text().split():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.mb = max(self.mb, int(line.split()[1]) / 1024)


def child(contender: str, path: str) -> dict[str, Any]:
    """One listing in this process: seconds, files, peak RSS of this process and its largest
    worker (for ``find``: find's own)."""
    from dandi_icechunk.upload.local_zarr import LocalListing

    with Timer() as t, ChildrenPeak() as children:
        if contender == "find":
            with subprocess.Popen(["find", path, "-type", "f", "-printf", "%P %s %T@ %i\n"], stdout=subprocess.PIPE) as find:
                stream = find.stdout
                assert stream is not None
                files = sum(block.count(b"\n") for block in iter(lambda: stream.read(1 << 20), b""))
        else:
            workers = 1 if contender == "one" else int(contender.split("-")[1])
            files = len(LocalListing.of(path, workers=workers).stats)
    if contender == "find":
        return {"s": t.seconds, "files": files, "peak_rss_MB": children.mb}
    return {"s": t.seconds, "files": files, "peak_rss_MB": peak_rss_mb(), "workers_peak_rss_MB": children.mb}


def table(results: dict[str, Any]) -> str:
    labels, summary = results["contenders"], results["summary"]
    one = summary["one"].get("s")
    layout = results["path"] or f"{results['files_per_directory']} a directory"
    lines = [f"Listing {results['files']:,} files ({layout}), {results['rounds']} rounds, {results['cores']} cores",
             "", "| contender | s (min-max) | files/s | vs 1 process | peak RSS MB | largest worker MB |",
             "|---|---|---|---|---|---|"]
    for key, label in labels.items():
        s = summary[key]
        if "s" not in s:
            lines.append(f"| {label} | failed: {s['error'][-200:]!r} | | | | |")
            continue
        worker = s.get("workers_peak_rss_MB")
        lines.append(f"| {label} | {s['s']:.2f} ({s['min_s']:.2f}-{s['max_s']:.2f}) | {results['files'] / s['s']:,.0f} | "
                     f"{one / s['s']:.2f}x | {s['peak_rss_MB']:.0f} | {'' if not worker else f'{worker:.0f}'} |")
    return "\n".join(lines)


def plot(results: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 3))
    median_bars(ax, results["contenders"], results["summary"])
    ax.set_title(f"listing {results['files']:,} files", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "listing.png", dpi=110)


def main() -> None:
    if (payload := child_payload()) is not None:
        print(json.dumps(child(payload["contender"], payload["path"])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300_000)
    parser.add_argument("--files-per-directory", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--path", type=Path, help="list this Zarr instead of generating one")
    parser.add_argument("--quick", action="store_true", help="30 k files, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.files, args.rounds = 30_000, 3
    cores = os.cpu_count() or 1
    labels = contenders(cores)
    with tempfile.TemporaryDirectory(prefix="dandi-icechunk-listing-") as tmp:
        path = args.path
        if path is None:
            path = Path(tmp) / "z.zarr"
            make_chunked_v2(path, total_bytes=args.files * 1024, chunk_bytes=1024, per_directory=args.files_per_directory)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in labels}
        for round_ in range(args.rounds):
            for key in rotated(labels, round_):
                runs[key].append(run_child(__file__, {"contender": key, "path": str(path)}, timeout=3600))
        files = next((r["files"] for r in runs["one"] if "files" in r), 0)
    summary = {}
    for key, key_runs in runs.items():
        summary[key] = summarize_runs(key_runs)
        workers = [r["workers_peak_rss_MB"] for r in key_runs if r.get("workers_peak_rss_MB")]
        if workers and "s" in summary[key]:
            summary[key]["workers_peak_rss_MB"] = max(workers)
    results = {"files": files, "path": str(args.path) if args.path else None, "files_per_directory": args.files_per_directory, "rounds": args.rounds, "cores": cores,
               "machine": platform.platform(), "contenders": labels, "runs": runs, "summary": summary}
    write_results(OUT, "listing", results, table(results))
    plot(results)


if __name__ == "__main__":
    main()

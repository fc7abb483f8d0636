"""The HTTP view's memory against the Zarr's size: peak RSS of ``dandi-icechunk serve`` answering
random file requests on snapshots of 10 k, 100 k and 1.3 M files (DANDI's largest Zarr), next to
the peak RSS of loading that snapshot's whole digest index (what the view held before the index
was sharded). Snapshots are synthetic (a digest index of N files committed over one node): the
view's memory depends on the index, not on the chunk bytes. Sizes interleaved over rounds.

    python benchmarks/serve_memory.py [--sizes 10000 100000 1300000] [--rounds 3] [--requests 2000]

Writes ``benchmarks/results/serve-memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results  # noqa: E402

from dandi_icechunk.location import StorageLocation  # noqa: E402
from dandi_icechunk.testing import synthetic_key, synthetic_snapshot  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"


def _peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def serve_peak(root: Path, zarr_id: str, snapshot: str, n: int, requests: int) -> dict[str, float]:
    """Start the view in a fresh process, ask for ``requests`` random files and one directory
    listing, and return its peak RSS and request rate."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import uvicorn; from dandi_icechunk.location import StorageLocation; "
            "from dandi_icechunk.read.serve import create_app; "
            f"uvicorn.run(create_app(StorageLocation(kind='file', bucket={str(root)!r})), host='127.0.0.1', "
            f"port={port}, log_level='warning')")
    server = subprocess.Popen([sys.executable, "-c", code])
    base = f"http://127.0.0.1:{port}/{zarr_id}/{snapshot}/"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "zarr.json", timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        rng = random.Random(n)
        start = time.perf_counter()
        for _ in range(requests):
            request = urllib.request.Request(base + synthetic_key(rng.randrange(n)), method="HEAD")
            urllib.request.urlopen(request, timeout=30).read()
        seconds = time.perf_counter() - start
        urllib.request.urlopen(base + "0/c/0/", timeout=60).read()
        return {"peak_rss_mb": _peak_kb(server.pid) / 1024, "requests_per_s": requests / seconds}
    finally:
        server.terminate()
        server.wait()


def whole_index_peak(root: Path, zarr_id: str, snapshot: str) -> float:
    """Peak RSS (MB) of a fresh process that loads the snapshot's whole digest index."""
    code = ("from pathlib import Path; from dandi_icechunk.location import StorageLocation; "
            "from dandi_icechunk.session import ZarrRepository; "
            f"r = ZarrRepository.open(StorageLocation(kind='file', bucket={str(root)!r}), {zarr_id!r}); "
            f"i = r.index({snapshot!r}); "
            "print(next(l.split()[1] for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM')))")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_300_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-memory-") as tmp:
        root = Path(tmp)
        location = StorageLocation(kind="file", bucket=str(root))
        built = {n: synthetic_snapshot(location, n) for n in args.sizes}
        samples: dict[int, dict[str, list[float]]] = {n: {"view": [], "rate": [], "whole": []} for n in args.sizes}
        for round_number in range(args.rounds):
            order = args.sizes if round_number % 2 == 0 else list(reversed(args.sizes))
            for n in order:
                zarr_id, snapshot = built[n]
                view = serve_peak(root, zarr_id, snapshot, n, args.requests)
                samples[n]["view"].append(view["peak_rss_mb"])
                samples[n]["rate"].append(view["requests_per_s"])
                samples[n]["whole"].append(whole_index_peak(root, zarr_id, snapshot))
    results = {
        "sizes": args.sizes, "rounds": args.rounds, "requests": args.requests,
        "by_size": {str(n): {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in s.items()}
                    for n, s in samples.items()},
    }
    smallest = results["by_size"][str(args.sizes[0])]["view"]["median"]
    lines = ["| files | view peak RSS (MB), median [min-max] | vs smallest | HEAD/s | whole index loaded: peak RSS (MB) |",
             "|---|---|---|---|---|"]
    for n in args.sizes:
        r = results["by_size"][str(n)]
        lines.append(f"| {n:,} | {r['view']['median']:.0f} [{r['view']['min']:.0f}-{r['view']['max']:.0f}] | "
                     f"{r['view']['median'] / smallest:.2f}x | {r['rate']['median']:.0f} | {r['whole']['median']:.0f} |")
    write_results(OUT, "serve-memory", results, "\n".join(lines))
    print(json.dumps({"view_growth": results["by_size"][str(args.sizes[-1])]["view"]["median"] / smallest}))


if __name__ == "__main__":
    main()

"""Fault soak: `dandi-icechunk verify` and `audit` run as processes through a proxy that fails a
share of S3 requests (503, connection reset, response cut short), many times. Every run must end
with exit 0 or our one-line error (exit 1): never a signal (the SIGSEGV seen once), never a
traceback. Writes results/faults.{json,md}.

    python benchmarks/faults.py --runs 30 --seed 1 --rate 0.3
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from dandi_icechunk.archive_hooks import publish_dandiset
from dandi_icechunk.testing import draft_zarr_asset, make_zarr_v3, run_seaweedfs
from dandi_icechunk.testing.faults import run_fault_proxy
from dandi_icechunk.upload import upload_zarr

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.3, help="share of requests that fail")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    bad: list[str] = []
    with tempfile.TemporaryDirectory() as work, run_seaweedfs(Path(work) / "s3") as server:
        location = server.location(prefix="soak")
        zarr_id = str(uuid.uuid4())
        src = make_zarr_v3(Path(work) / "a.zarr", shape=(32, 128, 128), chunks=(4, 16, 16))
        result = upload_zarr(src, location, zarr_id, dedup=False)
        asset = draft_zarr_asset(zarr_id, "a.zarr", result.zarr_checksum, result.size)
        published = publish_dandiset("000123", "0.260101.1200", [asset], location=location)
        (Path(work) / "published.json").write_text(json.dumps(published))

        def decide(method: str, path: str) -> str | None:
            return rng.choice(["503", "reset", "cut"]) if rng.random() < args.rate else None

        with run_fault_proxy(server.endpoint_url, decide) as (proxy, faults):
            storage = dataclasses.replace(location, endpoint_url=proxy).url
            env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key_id,
                   "AWS_SECRET_ACCESS_KEY": server.secret_access_key, "PYTHONFAULTHANDLER": "1"}
            for run in range(args.runs):
                command = ["verify", zarr_id] if run % 2 == 0 else ["audit", str(Path(work) / "published.json")]
                done = subprocess.run(
                    [sys.executable, "-m", "dandi_icechunk", "--storage", storage, *command, "--json"],
                    env=env, capture_output=True, text=True, timeout=900,
                )
                outcomes[f"{command[0]} exit {done.returncode}"] += 1
                if done.returncode not in (0, 1) or "Traceback" in done.stderr:
                    bad.append(f"{command[0]} exit {done.returncode}: {done.stderr[-2000:]}")
            injected = dict(faults)
    report = {"runs": args.runs, "seed": args.seed, "rate": args.rate, "faults": injected,
              "outcomes": dict(outcomes), "crashes_or_tracebacks": bad}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(report, indent=2))
    table = "| runs | faults injected | outcomes | crashes or tracebacks |\n|---|---|---|---|\n"
    table += f"| {args.runs} | {sum(injected.values())} {injected} | {dict(outcomes)} | {len(bad)} |\n"
    (RESULTS / "faults.md").write_text(table)
    print(table)
    for line in bad:
        print(line)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

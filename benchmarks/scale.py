"""Scale: DANDI's many-small-file Zarrs (Zarr v2, 1 KiB chunks) from 10 k to 1.3 M files.

For each size, on a fresh SeaweedFS server on 127.0.0.1, in lockstep (each phase runs every
contender, the order rotating over rounds; each run in its own process, for its peak RSS):
- first upload: dandi-icechunk (the archive's route: ``dedup=False``, with the digest cache the
  CLI keeps) against DANDI today (boto3 PUT with Content-MD5 of every file);
- no-change upload, then a scattered 1 % change, then a regional 1 % change (one contiguous
  run of chunks): dandi-icechunk against DANDI today's re-upload (hash every file, list the
  remote ETags, PUT what differs); for ours, the bytes it stored (chunks, manifests, index,
  snapshot) against the changed bytes;
- verify (recompute the checksum from the stored bytes) and export (write every file of the
  snapshot to disk) against a raw parallel GET of the same objects (boto3, no hashing).
Output: results/scale.{json,md,png} (time and peak RSS against file count).

The layout: ``--files-per-directory`` chunk files in each directory (default 64, as in a
nested-key OME-Zarr whose x axis has 64 chunks); 1 is the worst case for listing (a directory
per file).

``--phases`` and ``--contenders`` run a part (the 1.3 M-file size with DANDI today's route
alone takes hours here); ``--no-stored-bytes`` skips listing the repository around each change
(several minutes a listing at 1.3 M objects on SeaweedFS).

    python benchmarks/scale.py [--sizes 10000 100000 300000 1300000] [--rounds 1]
                               [--files-per-directory 64] [--phases first nochange ...]
                               [--contenders icechunk ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    Timer,
    child_payload,
    chunk_key,
    fresh_server,
    get_files,
    local_files,
    make_chunked_v2,
    peak_rss_mb,
    prefix_usage,
    put_files_like_dandi_today,
    pyplot,
    run_child,
    summarize_runs,
    update_like_dandi_today,
    write_results,
)

from dandi_icechunk.location import S3Credentials, StorageLocation  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
CHUNK = 1024
PHASES = {
    "first": ("first upload", ("icechunk", "dandi-today")),
    "nochange": ("no-change upload", ("icechunk", "dandi-today")),
    "scattered": ("scattered 1 % change", ("icechunk", "dandi-today")),
    "regional": ("regional 1 % change", ("icechunk", "dandi-today")),
    "verify": ("verify", ("icechunk", "raw-get")),
    "export": ("export", ("icechunk", "raw-get")),
}
LABELS = {"icechunk": "dandi-icechunk", "dandi-today": "DANDI today", "raw-get": "raw parallel GET"}


def change(src: Path, n: int, regional: bool, seed: int, per_directory: int) -> list[str]:
    """Rewrite 1 % of the chunk files, scattered or as one contiguous run; their keys."""
    rng = np.random.default_rng(seed)
    count = max(1, n // 100)
    if regional:
        start = int(rng.integers(0, n - count + 1))
        chunks = range(start, start + count)
    else:
        chunks = sorted(int(i) for i in rng.choice(n, size=count, replace=False))
    keys = [chunk_key(i, per_directory) for i in chunks]
    for key in keys:
        (src / key).write_bytes(rng.bytes(CHUNK))
    return keys


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One phase of one contender in this process."""
    src, phase, contender = Path(cfg["src"]), cfg["phase"], cfg["contender"]
    location = StorageLocation(kind="s3", bucket=cfg["bucket"], endpoint_url=cfg["endpoint_url"],
                               credentials=S3Credentials(cfg["access_key_id"], cfg["secret_access_key"]))
    out: dict[str, Any] = {}
    if contender == "icechunk":
        import icechunk

        from dandi_icechunk.read.export import export_snapshot
        from dandi_icechunk.session import ZarrRepository
        from dandi_icechunk.snapshot_files import verify_snapshot
        from dandi_icechunk.upload import upload_zarr
        from dandi_icechunk.upload.digest_cache import DigestCache

        icechunk.set_logs_filter("error")
        with Timer() as t:
            if phase == "verify":
                out["ok"] = verify_snapshot(ZarrRepository.open(location, cfg["zarr_id"]), jobs=cfg["jobs"]).ok
            elif phase == "export":
                export_snapshot(ZarrRepository.open(location, cfg["zarr_id"]), cfg["export_to"], jobs=cfg["jobs"])
            else:
                result = upload_zarr(src, location, cfg["zarr_id"], jobs=cfg["jobs"], dedup=False,
                                     digest_cache=DigestCache(cfg["cache"]))
                out["files_written"] = result.files_written
    else:
        import boto3

        client = boto3.client("s3", endpoint_url=cfg["endpoint_url"], region_name="us-east-1",
                              aws_access_key_id=cfg["access_key_id"], aws_secret_access_key=cfg["secret_access_key"])
        prefix = f"zarr/{cfg['zarr_id']}"
        with Timer() as t:
            if phase == "first":
                put_files_like_dandi_today(client, cfg["bucket"], prefix, local_files(src), cfg["jobs"])
            elif contender == "dandi-today":
                out["files_written"] = update_like_dandi_today(client, cfg["bucket"], prefix, src, cfg["jobs"])
            else:
                keys = [f"{prefix}/{k}" for k, _ in local_files(src)]
                get_files(client, cfg["bucket"], keys, cfg["jobs"])
    return {"s": t.seconds, "peak_rss_MB": peak_rss_mb(), **out}


def one_size(n: int, rounds: int, jobs: int, per_directory: int, phases: dict[str, list[str]], work: Path,
             stored_bytes: bool = True) -> dict[str, Any]:
    """Each phase of ``phases`` for its contenders at ``n`` files, ``rounds`` times."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {p: {c: [] for c in cs} for p, cs in phases.items()}
    changed_bytes: dict[str, int] = {}
    for round_ in range(rounds):
        src = work / "src.zarr"
        shutil.rmtree(src, ignore_errors=True)
        make_chunked_v2(src, total_bytes=n * CHUNK, chunk_bytes=CHUNK, per_directory=per_directory)
        with fresh_server(work / f"s3-{round_}") as s3:
            zarr_id = str(uuid.uuid4())
            base = {"src": str(src), "bucket": s3.bucket, "endpoint_url": s3.endpoint_url, "jobs": jobs,
                    "access_key_id": s3.access_key_id, "secret_access_key": s3.secret_access_key,
                    "zarr_id": zarr_id, "cache": str(work / f"cache-{round_}"), "export_to": str(work / "export")}
            repo_prefix = s3.location().repository_prefix(zarr_id)
            for phase, contenders in phases.items():
                if phase in ("scattered", "regional"):
                    keys = change(src, n, phase == "regional", seed=round_ + len(phase), per_directory=per_directory)
                    changed_bytes[phase] = len(keys) * CHUNK
                order = list(contenders)[round_ % 2:] + list(contenders)[: round_ % 2]
                for contender in order:
                    stored = stored_bytes and contender == "icechunk" and phase in ("nochange", "scattered", "regional")
                    before = prefix_usage(s3.client(), s3.bucket, repo_prefix)[1] if stored else 0
                    run = run_child(__file__, {**base, "phase": phase, "contender": contender}, timeout=4 * 3600)
                    if stored and "s" in run:
                        run["bytes_stored"] = prefix_usage(s3.client(), s3.bucket, repo_prefix)[1] - before
                    shutil.rmtree(base["export_to"], ignore_errors=True)
                    runs[phase][contender].append(run)
                    print(f"{n} files, round {round_ + 1}, {phase}, {contender}: {run.get('s', 'failed')} s, "
                          f"peak RSS {run.get('peak_rss_MB')} MB, stored {run.get('bytes_stored')} B", flush=True)
    return {"runs": runs, "changed_bytes": changed_bytes}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = summarize_runs(runs)
    good = [r for r in runs if "s" in r]
    if good and all("bytes_stored" in r for r in good):
        out["bytes_stored"] = statistics.median(r["bytes_stored"] for r in good)
    return out


def table(results: dict[str, Any]) -> str:
    lines = [
        f"Zarr v2 of 1 KiB chunks, {results['files_per_directory']} in each directory, {results['jobs']} "
        f"parallel transfers, median of {results['rounds']} round(s) "
        "(min-max), each run in its own process, SeaweedFS on loopback.",
        "",
        "| files | phase | contender | s (min-max) | files/s (changed files for a change) | peak RSS MB | ours: time vs other | ours: stored / changed bytes | ours: time / first upload |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, size in results["sizes"].items():
        first = size["summary"]["first"]["icechunk"].get("s")
        for phase, contenders in results["phases"].items():
            label, by = PHASES[phase][0], size["summary"][phase]
            ours = by.get("icechunk", {}).get("s")
            other = by[contenders[-1]].get("s") if contenders[-1] != "icechunk" else None
            for contender in contenders:
                s = by[contender]
                if "s" not in s:
                    lines.append(f"| {n} | {label} | {LABELS[contender]} | failed | | | | | |")
                    continue
                files = max(1, int(n) // 100) if phase in ("scattered", "regional") else int(n)
                extra = ["", "", ""]
                if contender == "icechunk":
                    extra[0] = f"{other / ours:.2f}x faster" if other and ours else ""
                    if phase in size["changed_bytes"] and "bytes_stored" in s:
                        extra[1] = f"{s['bytes_stored'] / size['changed_bytes'][phase]:.2f}x"
                    if phase in ("nochange", "scattered", "regional") and first:
                        extra[2] = f"{100 * s['s'] / first:.1f} %"
                lines.append(f"| {n} | {label} | {LABELS[contender]} | {s['s']:.2f} ({s['min_s']:.2f}-{s['max_s']:.2f}) "
                             f"| {files / s['s']:.0f} | {s['peak_rss_MB']:.0f} | {' | '.join(extra)} |")
    return "\n".join(lines)


def plot(results: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    sizes = sorted(results["sizes"], key=int)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for color, (phase, contenders) in enumerate(results["phases"].items()):
        label = PHASES[phase][0]
        for contender in contenders:
            points = [(int(n), results["sizes"][n]["summary"][phase][contender]) for n in sizes]
            points = [(n, s) for n, s in points if "s" in s]
            style = "-" if contender == "icechunk" else "--"
            name = f"{label}, {LABELS[contender]}"
            left.plot([n for n, _ in points], [s["s"] for _, s in points], style, color=f"C{color}", marker="o",
                      label=name)
            right.plot([n for n, _ in points], [s["peak_rss_MB"] for _, s in points], style, color=f"C{color}",
                       marker="o", label=name)
    for ax, ylabel in ((left, "seconds (median)"), (right, "peak RSS of the process (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("files in the Zarr")
        ax.set_ylabel(ylabel)
    left.set_yscale("log")
    left.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(OUT / "scale.png", dpi=110)


def main() -> None:
    if (payload := child_payload()) is not None:
        print(json.dumps(child(payload)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000, 1_300_000])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--files-per-directory", type=int, default=64)
    parser.add_argument("--no-stored-bytes", action="store_true",
                        help="skip listing the repository before and after each change (minutes each at 1.3 M objects)")
    parser.add_argument("--phases", nargs="+", choices=list(PHASES), default=list(PHASES))
    parser.add_argument("--contenders", nargs="+", choices=list(LABELS), default=list(LABELS))
    parser.add_argument("--quick", action="store_true", help="10 k and 100 k files")
    args = parser.parse_args()
    sizes, rounds = ([10_000, 100_000], args.rounds) if args.quick else (args.sizes, args.rounds)
    load_before = os.getloadavg()
    if "first" not in args.phases:
        parser.error("--phases must include first: every other phase works on what it uploaded")
    phases = {p: [c for c in PHASES[p][1] if c in args.contenders] for p in args.phases}
    phases = {p: cs for p, cs in phases.items() if cs}
    results: dict[str, Any] = {"jobs": args.jobs, "rounds": rounds, "files_per_directory": args.files_per_directory,
                               "phases": phases, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="dandi-icechunk-scale-") as tmp:
        for n in sizes:  # results are written after each size: a long run keeps what it measured
            measured = one_size(n, rounds, args.jobs, args.files_per_directory, phases, Path(tmp),
                                stored_bytes=not args.no_stored_bytes)
            measured["summary"] = {p: {c: summarize(r) for c, r in by.items()} for p, by in measured["runs"].items()}
            results["sizes"][str(n)] = measured
            results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                                  "load_average_before": load_before, "load_average_after": os.getloadavg()}
            write_results(OUT, "scale", results, table(results))
            plot(results)


if __name__ == "__main__":
    main()

"""Arraylake-backed vs bucket-backed: what going through Arraylake's service costs.

The same operations on the same Zarr, with its repository in the bucket directly
(``s3://...``) and registered in Arraylake (``arraylake://ORG/BUCKET``, the real ``arraylake``
client against the local stand-in for Earthmover's service, which answers on loopback: the
service's own latency over the internet is not in these numbers, its request count is). Each
round, each contender runs in its own process on a fresh zarr_id: first upload, an upload
that changes nothing, publish, open by zarr_id and read the whole array, gc. Contenders
interleave over rounds (the order rotates).

Reported: median seconds (min-max) per operation and the ratio Arraylake / bucket, peak RSS,
and per operation the requests to the service and the bytes it answered, beside the data bytes
that went between the process and the bucket: the answer to the egress question (the data
never passes through the service). Output: results/arraylake-vs-bucket.{json,md,png}.

    python benchmarks/arraylake_vs_bucket.py [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
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
    make_chunked_v2,
    peak_rss_mb,
    pyplot,
    run_child,
    write_results,
)

OUT = Path(__file__).resolve().parent / "results"
CONTENDERS = {"bucket": "bucket (s3://)", "arraylake": "Arraylake (arraylake://)"}
OPERATIONS = ("first upload", "no-change upload", "publish", "open + read", "gc")


def child(storage: str, src: Path) -> dict[str, Any]:
    """One contender's operations on a fresh zarr_id; seconds and wall-clock spans of each."""
    from datetime import timedelta

    import numpy as np
    import zarr

    from dandi_icechunk.archive.gc import collect_garbage
    from dandi_icechunk.archive_hooks import publish_dandiset
    from dandi_icechunk.location import StorageLocation
    from dandi_icechunk.session import ZarrRepository
    from dandi_icechunk.testing import draft_zarr_asset
    from dandi_icechunk.upload import upload_zarr

    location = StorageLocation.resolve(storage)
    zarr_id = str(uuid.uuid4())
    out: dict[str, Any] = {"seconds": {}, "spans": {}}

    def timed(name: str, fn: Any) -> Any:
        start = time.time()
        with Timer() as t:
            value = fn()
        out["seconds"][name], out["spans"][name] = t.seconds, (start, time.time())
        return value

    first = timed("first upload", lambda: upload_zarr(src, location, zarr_id, dedup=False))
    timed("no-change upload", lambda: upload_zarr(src, location, zarr_id))
    asset = draft_zarr_asset(zarr_id, src.name, first.zarr_checksum, first.size)
    timed("publish", lambda: publish_dandiset("000123", "0.260101.1200", [asset], location=location))

    def read() -> int:
        session = ZarrRepository.open(location, zarr_id).readonly_session()
        return int(np.asarray(zarr.open_array(session.store, mode="r")[:]).nbytes)

    out["read_bytes"] = timed("open + read", read)
    timed("gc", lambda: collect_garbage(location, zarr_id, restore_window=timedelta(0)))
    out["upload_bytes"] = first.bytes_written
    out["peak_rss_MB"] = peak_rss_mb()
    return out


def _service_traffic(traffic: list[tuple[float, str, str, int]], spans: dict[str, Any]) -> dict[str, Any]:
    """Requests and answered bytes of the service within each operation's span."""
    out = {}
    for name, (start, end) in spans.items():
        hits = [t for t in traffic if start <= t[0] <= end]
        out[name] = {"requests": len(hits), "bytes": sum(t[3] for t in hits)}
    return out


def table(results: dict[str, Any]) -> str:
    r = results["summary"]
    lines = [
        f"Zarr: {results['files']} files, {results['nbytes'] / 1e6:.0f} MB; {results['rounds']} rounds; "
        "the stand-in service on loopback (no internet latency)",
        "",
        "| operation | bucket s | Arraylake s | Arraylake / bucket | service requests | service bytes | data bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    for op in OPERATIONS:
        b, a = r["bucket"][op], r["arraylake"][op]
        traffic = r["arraylake_service"][op]
        data = {"first upload": results["upload_bytes"], "open + read": results["read_bytes"]}.get(op)
        lines.append(
            f"| {op} | {b['s']:.2f} ({b['min_s']:.2f}-{b['max_s']:.2f}) | {a['s']:.2f} ({a['min_s']:.2f}-{a['max_s']:.2f}) "
            f"| {a['s'] / b['s']:.2f}x | {traffic['requests']} | {traffic['bytes'] / 1e3:.1f} kB "
            f"| {f'{data / 1e6:.0f} MB' if data else '-'} |"
        )
    lines += ["", f"Peak RSS: bucket {r['bucket']['peak_rss_MB']:.0f} MB, Arraylake {r['arraylake']['peak_rss_MB']:.0f} MB"]
    return "\n".join(lines)


def plot(results: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.38
    for i, key in enumerate(CONTENDERS):
        medians = [results["summary"][key][op]["s"] for op in OPERATIONS]
        lows = [m - results["summary"][key][op]["min_s"] for m, op in zip(medians, OPERATIONS, strict=True)]
        highs = [results["summary"][key][op]["max_s"] - m for m, op in zip(medians, OPERATIONS, strict=True)]
        ax.bar([x + i * width for x in range(len(OPERATIONS))], medians, width, yerr=[lows, highs],
               label=CONTENDERS[key], capsize=3)
    ax.set_xticks([x + width / 2 for x in range(len(OPERATIONS))], OPERATIONS)
    ax.set_ylabel("seconds (median, min-max)")
    ax.set_title("The same operations, bucket-backed and Arraylake-backed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "arraylake-vs-bucket.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds of a small Zarr (CI-time check)")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    total, chunk = (4 * 1024 * 1024, 16 * 1024) if args.quick else (64 * 1024 * 1024, 64 * 1024)

    from dandi_icechunk.testing import run_seaweedfs
    from dandi_icechunk.testing.arraylake_service import ArraylakeStandIn

    work = Path(tempfile.mkdtemp(prefix="bench-arraylake-"))
    os.environ.setdefault("ARRAYLAKE_CONFIG", str(work / "arraylake-config"))
    src = work / "src.zarr"
    files = make_chunked_v2(src, total_bytes=total, chunk_bytes=chunk) + 1  # + .zarray
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in CONTENDERS}
    with run_seaweedfs(work / "s3") as s3, ArraylakeStandIn(s3, prefix="al") as service:
        env = {"AWS_ACCESS_KEY_ID": s3.access_key_id, "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
               "ARRAYLAKE_TOKEN": service.token}
        os.environ.update(env)
        storages = {
            "bucket": f"s3://{s3.bucket}/plain?endpoint_url={s3.endpoint_url}",
            "arraylake": f"arraylake://{service.org}/{service.nickname}?service_uri={service.url}",
        }
        for round_ in range(rounds):
            order = list(CONTENDERS)[round_ % 2:] + list(CONTENDERS)[:round_ % 2]
            for key in order:
                result = run_child(__file__, {"storage": storages[key], "src": str(src)}, timeout=1800)
                if "error" in result:
                    raise SystemExit(f"{key} failed: {result['error']}")
                if key == "arraylake":
                    result["service"] = _service_traffic(service.traffic, result.pop("spans"))
                runs[key].append(result)
                print(f"round {round_ + 1}/{rounds} {key}: "
                      + ", ".join(f"{op} {s:.2f}s" for op, s in result["seconds"].items()), flush=True)

    summary: dict[str, Any] = {}
    for key, key_runs in runs.items():
        summary[key] = {"peak_rss_MB": max(r["peak_rss_MB"] for r in key_runs)}
        for op in OPERATIONS:
            times = [r["seconds"][op] for r in key_runs]
            summary[key][op] = {"s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    summary["arraylake_service"] = {
        op: {k: statistics.median(r["service"][op][k] for r in runs["arraylake"]) for k in ("requests", "bytes")}
        for op in OPERATIONS
    }
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rounds": rounds, "files": files, "nbytes": total,
        "upload_bytes": runs["arraylake"][0]["upload_bytes"], "read_bytes": runs["arraylake"][0]["read_bytes"],
        "summary": summary, "runs": runs,
    }
    write_results(OUT, "arraylake-vs-bucket", results, table(results))
    plot(results)


if __name__ == "__main__":
    payload = child_payload()
    if payload is not None:
        import json

        print(json.dumps(child(payload["storage"], Path(payload["src"]))))
    else:
        main()

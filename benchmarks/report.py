"""Summaries of ``compare.json``: per-contender numbers, growth with chunk count, the targets."""

from __future__ import annotations

import math
import statistics
from typing import Any

LABELS = {
    "today": "DANDI today",
    "proposal": "DANDI's proposal",
    "direct": "Icechunk used directly",
    "ours": "dandi-icechunk",
}


def stored(step: dict[str, Any]) -> int:
    """All bytes a contender keeps after a step (objects + manifests + database)."""
    return sum(step["stored"].values())


def summarize(workload: dict[str, Any], key: str) -> dict[str, Any]:
    """The numbers of one contender on one workload."""
    history = workload["history"][key]
    mb = workload["bytes"] / 1e6
    first = history[0]
    updates = history[1:]
    written = [stored(b) - stored(a) for a, b in zip(history, history[1:])]
    reads = workload["reads"].get(key, {})
    return {
        "first_s": first["s"],
        "first_MBps": mb / first["s"],
        "update_s": statistics.median(u["s"] for u in updates) if updates else None,
        "update_written": statistics.median(written) if written else None,
        "changed_bytes": updates[0]["changed_bytes"] if updates else None,
        "written_over_changed": (
            statistics.median(w / u["changed_bytes"] for w, u in zip(written, updates))
            if updates
            else None
        ),
        "publish": {str(i + 1): s["publish_s"] for i, s in enumerate(history) if "publish_s" in s},
        "storage_by_version": [stored(s) / workload["bytes"] for s in history],
        "storage_parts": history[-1]["stored"],
        "read": {v: (r["MBps"] if r else None) for v, r in reads.items()},
        "rss_upload_MB": workload["peak_rss_MB"]["upload"][key],
        "rss_read_MB": workload["peak_rss_MB"]["read"][key],
    }


def growth(results: dict[str, Any]) -> dict[str, Any]:
    """Publish/finalize and first-upload time against chunk count over the classic workloads.
    Growth is fitted as ``t = a * chunks**k`` through the smallest and largest (k = 0: flat,
    k = 1: linear) and extrapolated to 1 M chunks."""
    classic = sorted(
        (w for w in results["workloads"] if w["kind"] == "classic"), key=lambda w: w["files"]
    )
    out: dict[str, Any] = {"chunks": [w["files"] for w in classic]}
    if len(classic) < 2:
        return out
    scale = classic[-1]["files"] / classic[0]["files"]
    for key in LABELS:
        pub = [summarize(w, key)["publish"].get("1") for w in classic]
        first = [summarize(w, key)["first_s"] for w in classic]
        entry: dict[str, Any] = {"publish_s": pub, "first_s": first}
        if pub[0] is not None and pub[-1] is not None:
            exponent = math.log(pub[-1] / pub[0]) / math.log(scale)
            entry["publish_large_over_small"] = pub[-1] / pub[0]
            entry["publish_exponent"] = exponent
            entry["publish_fit_1M_s"] = pub[-1] * (1_000_000 / classic[-1]["files"]) ** exponent
        out[key] = entry
    return out


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(target, what ours measured, against, met) for the targets of the issue."""
    primary = next(w for w in results["workloads"] if w["versions"] > 2)
    ours, today = summarize(primary, "ours"), summarize(primary, "today")
    largest = max(results["workloads"], key=lambda w: w["bytes"])  # steadiest upload rates
    upload = summarize(largest, "ours")["first_MBps"]
    limit = largest["limits"]["put_MBps"]
    rows = []
    ratio = upload / limit
    rows.append(
        (
            f"first upload >= 0.9x raw parallel PUT ({largest['workload']})",
            f"{upload:.0f} MB/s = {ratio:.2f}x",
            f"raw PUT {limit:.0f} MB/s",
            ratio >= 0.9,
        )
    )
    rows.append(
        (
            "1% update writes <= 1.1x changed bytes + manifest delta",
            f"{ours['written_over_changed']:.2f}x",
            f"{ours['changed_bytes'] / 1e6:.1f} MB changed",
            ours["written_over_changed"] <= 1.1,
        )
    )
    share = ours["update_s"] / ours["first_s"]
    rows.append(
        (
            "1% update <= 5% of first upload time",
            f"{ours['update_s']:.2f} s = {share:.1%}",
            f"first upload {ours['first_s']:.1f} s",
            share <= 0.05,
        )
    )
    grow = growth(results)
    if "ours" in grow and "publish_large_over_small" in grow["ours"]:
        g = grow["ours"]["publish_large_over_small"]
        p = grow["proposal"]["publish_large_over_small"]
        c = grow["chunks"]
        rows.append(
            (
                f"publish flat in chunk count ({c[0]:,} to {c[-1]:,} within 2x)",
                f"{g:.2f}x",
                f"proposal's finalize {p:.1f}x",
                g <= 2,
            )
        )
    last = ours["storage_by_version"][-1]
    rows.append(
        (
            f"storage after {primary['versions']} versions <= 1.12x one version",
            f"{last:.3f}x",
            f"proposal {summarize(primary, 'proposal')['storage_by_version'][-1]:.3f}x",
            last <= 1.12,
        )
    )
    v = str(primary["versions"])
    read_ratio = ours["read"][v] / today["read"][v]
    rows.append(
        (
            "read a snapshot >= 1.0x zarr-python on the plain prefix",
            f"{ours['read'][v]:.0f} MB/s = {read_ratio:.2f}x",
            f"plain prefix {today['read'][v]:.0f} MB/s",
            read_ratio >= 1.0,
        )
    )
    return rows


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{unit}"


def markdown_report(results: dict[str, Any]) -> str:
    lines = [
        f"# Versions of a Zarr, four ways ({'quick' if results['quick'] else 'full'} run, "
        f"{results['machine']['cpus']} cores, SeaweedFS on loopback, {results['jobs']} parallel transfers)",
        "",
        f"MD5 on one core: {results['md5_one_core_MBps']:.0f} MB/s. Run took {results.get('seconds', 0) / 60:.1f} min.",
    ]
    for w in results["workloads"]:
        s = {key: summarize(w, key) for key in LABELS}
        last = str(w["versions"])
        lines += [
            "",
            f"## {w['workload']}: {w['bytes'] / 1e6:.0f} MB in {w['files']:,} files of "
            f"{w['file_bytes'] / 1024:.0f} KiB, {w['versions']} versions",
            "",
            f"Physical limits here (obstore, Rust): PUT {w['limits']['put_MBps']:.0f} MB/s, "
            f"GET {w['limits']['get_MBps']:.0f} MB/s.",
            "",
            "| | " + " | ".join(LABELS.values()) + " |",
            "|---" * (len(LABELS) + 1) + "|",
            "| first upload | "
            + " | ".join(f"{x['first_s']:.1f} s ({x['first_MBps']:.0f} MB/s)" for x in s.values())
            + " |",
            "| update of 1% (median) | "
            + " | ".join(_num(x["update_s"], ".2f", " s") for x in s.values())
            + " |",
            "| bytes stored by an update / changed bytes | "
            + " | ".join(_num(x["written_over_changed"], ".2f", "x") for x in s.values())
            + " |",
        ]
        for v in sorted({v for x in s.values() for v in x["publish"]}, key=int):
            lines.append(
                f"| publish v{v} | "
                + " | ".join(_num(x["publish"].get(v), ".3f", " s") for x in s.values())
                + " |"
            )
        lines.append(
            f"| stored after {last} versions / one version | "
            + " | ".join(f"{x['storage_by_version'][-1]:.3f}x" for x in s.values())
            + " |"
        )
        for v in w["reads"].get("ours") or {}:
            lines.append(
                f"| read all of v{v} | "
                + " | ".join(_num(x["read"].get(v), ".0f", " MB/s") for x in s.values())
                + " |"
            )
        lines.append(
            "| peak RSS upload / read | "
            + " | ".join(
                f"{x['rss_upload_MB']:.0f} / {x['rss_read_MB']:.0f} MB" for x in s.values()
            )
            + " |"
        )
    grow = growth(results)
    if "ours" in grow:
        lines += [
            "",
            "## Growth with chunk count (classic)",
            "",
            "| | "
            + " | ".join(f"{c:,} chunks" for c in grow["chunks"])
            + " | growth ~ chunks^k | fit at 1,000,000 |",
            "|---" * (len(grow["chunks"]) + 3) + "|",
        ]
        for key, label in LABELS.items():
            g = grow[key]
            if any(p is not None for p in g["publish_s"]):
                lines.append(
                    f"| publish/finalize, {label} | "
                    + " | ".join(_num(p, ".3f", " s") for p in g["publish_s"])
                    + f" | k = {_num(g.get('publish_exponent'), '.2f')}"
                    + f" | {_num(g.get('publish_fit_1M_s'), '.2f', ' s')} |"
                )
        for key, label in LABELS.items():
            lines.append(
                f"| first upload, {label} | "
                + " | ".join(f"{t:.1f} s" for t in grow[key]["first_s"])
                + " | | |"
            )
    lines += [
        "",
        "## Targets (dandi-icechunk, same run)",
        "",
        "| target | measured | against | met |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t} | {m} | {a} | {'yes' if ok else '**no**'} |" for t, m, a, ok in targets(results)
    ]
    return "\n".join(lines) + "\n"

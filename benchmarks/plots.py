"""PNG plots of ``compare.json``: time against chunk count, storage against versions, and
throughput next to the physical limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from report import LABELS, growth, summarize  # noqa: E402

COLORS = {"today": "tab:gray", "proposal": "tab:orange", "direct": "tab:blue", "ours": "tab:green"}


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    return [
        p
        for p in (
            _time_vs_chunks(results, out),
            _storage_vs_versions(results, out),
            _throughput(results, out),
        )
        if p is not None
    ]


def _time_vs_chunks(results: dict[str, Any], out: Path) -> Path | None:
    grow = growth(results)
    if "ours" not in grow:
        return None
    chunks = grow["chunks"]
    fig, (publish, upload) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in LABELS.items():
        g = grow[key]
        if all(p is not None for p in g["publish_s"]):
            publish.plot(chunks, g["publish_s"], "o-", color=COLORS[key], label=label)
            if "publish_fit_1M_s" in g:
                publish.plot(
                    [chunks[-1], 1_000_000],
                    [g["publish_s"][-1], g["publish_fit_1M_s"]],
                    ":",
                    color=COLORS[key],
                )
        upload.plot(chunks, g["first_s"], "o-", color=COLORS[key], label=label)
    publish.set(
        xscale="log",
        yscale="log",
        xlabel="chunks",
        ylabel="seconds",
        title="Publish / finalize one version (dotted: fit t ~ chunks^k to 1 M)",
    )
    upload.set(
        xscale="log",
        yscale="log",
        xlabel="chunks (64 KiB each)",
        ylabel="seconds",
        title="First upload",
    )
    for ax in (publish, upload):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out / "time_vs_chunks.png")


def _history_panels(results: dict[str, Any], width: float) -> tuple[Any, list[tuple[Any, Any]]]:
    """A figure with one panel per workload that has a version history, paired with it."""
    history = [w for w in results["workloads"] if w["versions"] > 2]
    fig, axes = plt.subplots(1, len(history), figsize=(width * len(history), 4.2), squeeze=False)
    return fig, list(zip(axes[0], history))


def _storage_vs_versions(results: dict[str, Any], out: Path) -> Path:
    fig, panels = _history_panels(results, 5.5)
    for ax, w in panels:
        for key, label in LABELS.items():
            ratios = summarize(w, key)["storage_by_version"]
            ax.plot(range(1, len(ratios) + 1), ratios, "o-", color=COLORS[key], label=label)
        ax.axhline(1.12, color="black", linestyle="--", linewidth=0.8, label="target 1.12x")
        ax.set(
            xlabel="versions (1% of chunk files rewritten each)",
            ylabel="bytes stored / bytes of one version",
            title=w["workload"],
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out / "storage_vs_versions.png")


def _throughput(results: dict[str, Any], out: Path) -> Path:
    fig, panels = _history_panels(results, 6)
    for ax, w in panels:
        keys = list(LABELS)
        s = {key: summarize(w, key) for key in keys}
        last = str(w["versions"])
        width = 0.38
        xs = range(len(keys))
        ax.bar(
            [x - width / 2 for x in xs],
            [s[k]["first_MBps"] for k in keys],
            width,
            label="first upload",
            color=[COLORS[k] for k in keys],
        )
        ax.bar(
            [x + width / 2 for x in xs],
            [s[k]["read"].get(last) or 0 for k in keys],
            width,
            label=f"read v{last}",
            color=[COLORS[k] for k in keys],
            hatch="//",
            alpha=0.6,
        )
        ax.axhline(
            w["limits"]["put_MBps"],
            color="black",
            linestyle="--",
            linewidth=0.8,
            label="raw parallel PUT",
        )
        ax.axhline(
            w["limits"]["get_MBps"],
            color="black",
            linestyle=":",
            linewidth=0.8,
            label="raw parallel GET",
        )
        ax.set_xticks(list(xs), [LABELS[k] for k in keys], rotation=15, fontsize=8)
        ax.set(ylabel="MB/s", title=f"{w['workload']}: throughput (solid upload, hatched read)")
        ax.legend(fontsize=8)
    return _save(fig, out / "throughput.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if (
    __name__ == "__main__"
):  # redraw from a saved run: python benchmarks/plots.py results/compare.json
    import json
    import sys

    source = Path(sys.argv[1])
    print(write_plots(json.loads(source.read_text()), source.parent))

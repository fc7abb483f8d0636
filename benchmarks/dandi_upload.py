"""dandi-cli's ``dandi upload`` of a Zarr asset into the real dandi-archive (patched, adapter on,
served on 127.0.0.1): today's presigned PUTs against Icechunk, same archive, same SeaweedFS,
same run, contenders interleaved over rounds (the order alternates per round).

- "presigned PUT (DANDI today)": the released dandi-cli as it is, ``dandi upload``; with the
  adapter on, a Zarr it uploads stays a plain Zarr, one presigned PUT per file.
- "Icechunk": the same dandi-cli through ``dandi-icechunk dandi upload``; the Zarr asset is one
  Icechunk commit through the archive.

Workloads: a classic Zarr v2 of 64 KiB chunks (1 GiB in 16,384 chunks; ``--quick``: 64 MiB in
1,024) and a sharded Zarr v3 of 147 shards of 64 KiB inner chunks (24 per shard, 231 MB;
``--quick``: 2 per shard, 19 MB), each the array ``0`` of an OME-Zarr group, incompressible
data (``workloads.Workload``). Each contender and round uploads into a new Dandiset (made with
``POST dandisets/``), from a fresh copy of the Zarr at ``sub-1/sub-1_sample.ome.zarr``; then 1 %
of the chunk files is rewritten locally (``Workload.change``: 163 chunks; 1 shard of 147) and
the re-upload with ``--existing refresh`` is timed. Making the Dandiset, copying and changing
are setup, not timed; the time is the wall time of the whole ``dandi upload`` process (start-up
included), its peak RSS from GNU time. Both use dandi-cli's default of 5 parallel transfers.

Run by ``bash scripts/bench-dandi-upload.sh [--quick] [--rounds N]`` (serves the archive, then
runs this with ``--archive INFO.json``). Writes ``benchmarks/results/dandi-upload.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zarr
from common import Timer, write_results
from workloads import Workload

from dandi_icechunk.testing.served_archive import ServedArchive

OUT = Path(__file__).resolve().parent / "results"
ZARR = "sub-1/sub-1_sample.ome.zarr"
BIN = Path(sys.executable).parent  # the project's virtualenv: dandi-cli and dandi-icechunk
CONTENDERS = {
    "presigned": ("presigned PUT (DANDI today)", [str(BIN / "dandi")], False),
    "icechunk": ("Icechunk", [str(BIN / "dandi-icechunk"), "dandi"], True),
}
PHASES = {"first": "first upload", "update": "re-upload, 1% changed"}
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None


def workloads(quick: bool) -> dict[str, Workload]:
    return {
        "classic": Workload("classic", 1_024 if quick else 16_384, 2),
        "sharded": Workload("sharded", 147, 2, shard_rows=2 if quick else 24),
    }


def make_ome_zarr(workload: Workload, path: Path) -> None:
    """An OME-Zarr group (0.4 on v2, 0.5 on v3) whose one level ``0`` is ``workload``'s array."""
    v2 = workload.kind == "classic"
    multiscale = {
        "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}],
    }
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if v2 else 3)
    group.attrs.update({"multiscales": [{"version": "0.4", **multiscale}]} if v2
                       else {"ome": {"version": "0.5", "multiscales": [multiscale]}})
    workload.make(path / "0")


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """{key: (size, mtime_ns)} of every file of a Zarr."""
    return {p.relative_to(path).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in path.rglob("*") if p.is_file()}


class Archive(ServedArchive):
    """The served archive, with what the benchmark reads back and runs."""

    def zarr_asset(self, dandiset: str) -> dict[str, Any]:
        """What the archive now holds for the Zarr asset: its Zarr, whether Icechunk, checksum."""
        listed = self.call("GET", f"dandisets/{dandiset}/versions/draft/assets/", params={"path": ZARR})["results"]
        (asset,) = [a for a in listed if a["path"] == ZARR]
        zarr_id = asset["zarr"]
        deadline = time.monotonic() + 600
        while (state := self.call("GET", f"zarr/{zarr_id}/icechunk/"))["status"] != "Complete":
            if time.monotonic() > deadline:
                raise RuntimeError(f"Zarr {zarr_id} is still {state['status']}")
            time.sleep(0.5)
        info = self.call("GET", f"zarr/{zarr_id}/")
        digest = self.call("GET", f"dandisets/{dandiset}/versions/draft/assets/{asset['asset_id']}/")["digest"]
        return {"zarr_id": zarr_id, "icechunk": state["icechunk"], "checksum": digest.get("dandi:dandi-zarr-checksum"),
                "file_count": info.get("file_count"), "size": info.get("size")}

    def upload(self, key: str, cwd: Path, log: Path, *extra: str) -> dict[str, Any]:
        """One ``dandi upload`` process, timed; its peak RSS from GNU time (the process alone:
        time forks it, so Linux does not carry this driver's peak into it)."""
        argv = [*CONTENDERS[key][1], "upload", "-i", self.api_url, "--validation", "skip", *extra]
        rss = log.with_suffix(".rss")
        if GNU_TIME:
            argv = [GNU_TIME, "-f", "%M", "-o", str(rss), *argv]
        with log.open("w") as out, Timer() as t:
            rc = subprocess.run(argv, cwd=cwd, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                timeout=3600, check=False).returncode
        text = log.read_text(errors="replace")
        peak = int(rss.read_text().split()[-1]) / 1024 if GNU_TIME and rss.exists() else None
        run: dict[str, Any] = {"s": t.seconds, "peak_rss_MB": peak, "rc": rc}
        if rc != 0:
            run["error"] = text[-1500:]
        return run


def one_run(archive: Archive, key: str, workload: Workload, source: Path, tmp: Path) -> dict[str, Any]:
    """First upload and 1% re-upload of ``source`` by contender ``key`` into a new Dandiset."""
    dandiset_dir = archive.new_dandiset(tmp, "dandi upload benchmark")
    local = dandiset_dir / ZARR
    shutil.copytree(source, local)
    before = tree(local)
    result: dict[str, Any] = {"dandiset": dandiset_dir.name}
    try:
        first = archive.upload(key, dandiset_dir, tmp / f"{dandiset_dir.name}-first.log")
        if "error" not in first:
            first["stored"] = archive.zarr_asset(dandiset_dir.name)
        result["first"] = first
        if "error" in first:
            return result
        workload.change(local / "0", 2)
        after = tree(local)
        changed = [k for k, v in after.items() if before.get(k) != v]
        update = archive.upload(key, dandiset_dir, tmp / f"{dandiset_dir.name}-update.log", "--existing", "refresh")
        update["changed_files"], update["changed_bytes"] = len(changed), sum(after[k][0] for k in changed)
        if "error" not in update:
            update["stored"] = archive.zarr_asset(dandiset_dir.name)
            if update["stored"]["checksum"] == first["stored"]["checksum"]:
                update["error"] = "the re-upload left the Zarr's checksum unchanged"
        result["update"] = update
        return result
    finally:
        shutil.rmtree(dandiset_dir)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: dict[str, dict[str, list[dict[str, Any]]]], sizes: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Per workload, phase and contender: median and min-max of the seconds, MB/s and files/s
    (of the whole Zarr for the first upload, of the changed files for the update), peak RSS,
    how the archive stored it, whether both contenders' checksums agree; and the time ratio."""
    out: dict[str, Any] = {}
    for name, by_key in runs.items():
        out[name] = {}
        for phase in PHASES:
            row: dict[str, Any] = {}
            for key, (label, _, want_icechunk) in CONTENDERS.items():
                done = [r[phase] for r in by_key[key] if phase in r and "error" not in r[phase]]
                failed = [r[phase]["error"] for r in by_key[key] if phase in r and "error" in r[phase]]
                if not done:
                    row[key] = {"label": label, "ok": 0, "errors": failed}
                    continue
                nbytes = sizes[name]["bytes"] if phase == "first" else done[0]["changed_bytes"]
                nfiles = sizes[name]["files"] if phase == "first" else done[0]["changed_files"]
                s = spread([r["s"] for r in done])
                rss = [r["peak_rss_MB"] for r in done if r["peak_rss_MB"] is not None]
                row[key] = {
                    "label": label, "ok": len(done), "errors": failed, "s": s,
                    "MBps": nbytes / 1e6 / s["median"], "files_per_s": nfiles / s["median"],
                    "bytes": nbytes, "files": nfiles,
                    "peak_rss_MB": spread(rss) if rss else None,
                    "stored_as_icechunk": sorted({r["stored"]["icechunk"] for r in done}),
                    "route_as_expected": all(r["stored"]["icechunk"] is want_icechunk for r in done),
                    "checksums": sorted({r["stored"]["checksum"] for r in done}),
                }
            if all("s" in row[k] for k in CONTENDERS):
                row["icechunk_over_presigned"] = row["icechunk"]["s"]["median"] / row["presigned"]["s"]["median"]
                row["checksums_agree"] = row["icechunk"]["checksums"] == row["presigned"]["checksums"]
            out[name][phase] = row
    return out


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def table(summary: dict[str, Any], sizes: dict[str, dict[str, int]], rounds: int) -> str:
    lines = [
        (f"`dandi upload` of one Zarr asset into dandi-archive (adapter on), median of {rounds} "
         "interleaved round(s) (min-max); MB/s and files/s of the whole Zarr for the first upload, "
         "of the changed files for the re-upload; peak RSS of the upload process, largest over rounds."),
        "",
        "| workload | phase | contender | s (min-max) | MB/s | files/s | peak RSS MB | stored as | Icechunk / presigned |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, phases in summary.items():
        for phase, row in phases.items():
            ratio = row.get("icechunk_over_presigned")
            for key in CONTENDERS:
                r = row[key]
                where = (f"{name}: {sizes[name]['bytes'] / 1e6:.0f} MB, {sizes[name]['files']} files"
                         if phase == "first" and key == "presigned" else "")
                what = PHASES[phase] if key == "presigned" else ""
                if "s" not in r:
                    lines.append(f"| {where} | {what} | {r['label']} | FAILED ({len(r['errors'])} runs) | | | | | |")
                    continue
                if phase == "update" and key == "presigned":
                    what += f" ({r['files']} files, {r['bytes'] / 1e6:.1f} MB)"
                s = r["s"]
                rss = f"{r['peak_rss_MB']['max']:.0f}" if r["peak_rss_MB"] else "n/a"
                ratio_text = f"{ratio:.2f}x" if ratio is not None and key == "icechunk" else ""
                stored = "/".join("Icechunk" if x else "plain Zarr" for x in r["stored_as_icechunk"])
                stored += "" if r["route_as_expected"] else " (UNEXPECTED)"
                stored += f", {len(r['errors'])} failed" if r["errors"] else ""
                lines.append(
                    f"| {where} | {what} | {r['label']} | {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}) "
                    f"| {_rate(r['MBps'])} | {_rate(r['files_per_s'])} | {rss} | {stored} | {ratio_text} |"
                )
    agree = [f"{name} {PHASES[phase]}: {'yes' if row.get('checksums_agree') else 'NO'}"
             for name, phases in summary.items() for phase, row in phases.items()]
    lines += ["", "The archive's Zarr checksums of both contenders agree: " + "; ".join(agree) + "."]
    return "\n".join(lines)


def plot(summary: dict[str, Any], sizes: dict[str, dict[str, int]]) -> Path | None:
    try:
        import matplotlib.pyplot as plt
        from plots import COLORS, _save
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return None
    colors = {"presigned": COLORS["today"], "icechunk": COLORS["ours"]}
    fig, axes = plt.subplots(1, len(summary), figsize=(5.5 * len(summary), 4.2), squeeze=False)
    width = 0.38
    for ax, (name, phases) in zip(axes[0], summary.items()):
        for j, key in enumerate(CONTENDERS):
            xs, med, lo, hi = [], [], [], []
            for i, phase in enumerate(PHASES):
                r = phases[phase][key]
                if "s" in r:
                    xs.append(i + (j - 0.5) * width)
                    med.append(r["s"]["median"])
                    lo.append(r["s"]["median"] - r["s"]["min"])
                    hi.append(r["s"]["max"] - r["s"]["median"])
            ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, color=colors[key], label=CONTENDERS[key][0])
        ax.set_xticks(range(len(PHASES)), list(PHASES.values()))
        ax.set(ylabel="dandi upload wall time (s)",
               title=f"{name} Zarr, {sizes[name]['bytes'] / 1e6:.0f} MB in {sizes[name]['files']} files (median, min-max)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, OUT / "dandi-upload.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", required=True, help="the JSON tests/archive/serve.py wrote")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64 MiB / 1,024 chunks and 147 small shards")
    args = parser.parse_args()
    archive = Archive.load(args.archive)
    try:
        archive.wait_until_up()
    except TimeoutError as e:
        raise SystemExit(str(e)) from None
    started, load_before = time.perf_counter(), os.getloadavg()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    sizes: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="dandi-upload-bench-") as tmp_name:
        tmp = Path(tmp_name)
        sources = {}
        for name, workload in workloads(args.quick).items():
            sources[name] = tmp / f"{name}.ome.zarr"
            make_ome_zarr(workload, sources[name])
            files = tree(sources[name])
            sizes[name] = {"bytes": sum(size for size, _ in files.values()), "files": len(files)}
            print(f"{name}: {sizes[name]['bytes'] / 1e6:.0f} MB in {sizes[name]['files']} files", file=sys.stderr)
        for round_ in range(args.rounds):
            for name, workload in workloads(args.quick).items():
                order = list(CONTENDERS) if round_ % 2 == 0 else list(reversed(CONTENDERS))
                for key in order:
                    run = one_run(archive, key, workload, sources[name], tmp)
                    runs.setdefault(name, {k: [] for k in CONTENDERS})[key].append(run)
                    times = ", ".join(f"{p} {run[p]['s']:.1f} s{' ERROR' if 'error' in run[p] else ''}"
                                      for p in PHASES if p in run)
                    print(f"round {round_ + 1} {name} {key}: {times}", file=sys.stderr)
                    for p in PHASES:
                        if "error" in run.get(p, {}):
                            print(run[p]["error"], file=sys.stderr)
    summary = summarize(runs, sizes)
    import dandi

    results = {
        "rounds": args.rounds, "quick": args.quick, "wall_s": time.perf_counter() - started,
        "dandi_cli": dandi.__version__, "cpus": os.cpu_count(),
        "loadavg_1_5_15": {"start": load_before, "end": os.getloadavg()}, "python": platform.python_version(),
        "sizes": sizes, "summary": summary, "runs": runs,
    }
    write_results(OUT, "dandi-upload", results, table(summary, sizes, args.rounds))
    plot(summary, sizes)
    failed = [(n, p, k) for n, ps in summary.items() for p, row in ps.items() for k in CONTENDERS
              if row[k].get("errors") or not row[k].get("route_as_expected", False)]
    if failed:
        print(f"failures or unexpected routes: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Publishing in the real dandi-archive with the adapter on: a Dandiset of 1, 10 and 100 Zarr
assets next to the same number of blob assets, same run, contenders interleaved over rounds.

Run by ``bash scripts/bench-archive.sh [--rounds N]`` (inside the patched archive, its
PostgreSQL and SeaweedFS). Times the archive's own ``publish_dandiset`` (lock, the publish task,
run eagerly as in the archive's tests, then the tags), from a validated draft; building and
validating the draft is setup, not timed. Writes ``benchmarks/results/archive-publish.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import django

django.setup()

from django.core.management import call_command  # noqa: E402

call_command("migrate", verbosity=0)

from dandiapi.api.services.asset import add_asset_to_version  # noqa: E402
from dandiapi.api.services.publish import publish_dandiset  # noqa: E402
from dandiapi.api.tasks import validate_asset_metadata_task, validate_version_metadata_task  # noqa: E402
from dandiapi.api.tests.factories import AssetBlobFactory, DraftVersionFactory, UserFactory  # noqa: E402
from dandiapi.zarr.models import ZarrArchive, ZarrArchiveStatus  # noqa: E402
from dandiapi.zarr.tasks import ingest_zarr_archive  # noqa: E402
from dandischema.consts import DANDI_SCHEMA_VERSION  # noqa: E402

from dandi_icechunk.archive.django.conf import AdapterSettings  # noqa: E402
from dandi_icechunk.archive.django.models import IcechunkDraft, IcechunkZarr  # noqa: E402
from dandi_icechunk.testing import make_zarr_v3  # noqa: E402
from dandi_icechunk.upload import upload_zarr  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"


def _accept_factory_etags() -> None:
    """The archive's blob factories make single-part (MD5) ETags; its test suite accepts them
    the same way (``dandiapi/conftest.py``, ``_mock_etag_regex``)."""
    import dandischema.digests.dandietag

    from dandiapi.api.models import AssetBlob, Upload

    for owner in (Upload, AssetBlob, dandischema.digests.dandietag.DandiETag):
        setattr(owner, "ETAG_REGEX" if owner is not dandischema.digests.dandietag.DandiETag else "REGEX",
                r"^[a-f0-9]{32}$")


def _draft(owner: Any, kind: str, n: int, sample: Path) -> Any:
    """A validated draft Dandiset with ``n`` assets of ``kind`` ("zarr" or "blob")."""
    version = DraftVersionFactory.create(dandiset__owners=[owner])
    location = AdapterSettings.load().location
    for i in range(n):
        metadata = {"schemaKey": "Asset", "schemaVersion": DANDI_SCHEMA_VERSION, "path": f"sub-{i}/{kind}-{i}"}
        if kind == "zarr":
            zarr = ZarrArchive.objects.create(dandiset=version.dandiset, name=f"{kind}-{i}.zarr")
            icechunk_zarr = IcechunkZarr.objects.create(zarr_archive=zarr)
            IcechunkDraft.objects.create(zarr=icechunk_zarr, dandiset=version.dandiset, branch="main")
            make_zarr_v3(sample / f"{version.dandiset.identifier}-{i}.zarr", shape=(4, 16, 16), chunks=(2, 8, 8), seed=i)
            upload_zarr(sample / f"{version.dandiset.identifier}-{i}.zarr", location, str(zarr.zarr_id), dedup=False)
            ZarrArchive.objects.filter(pk=zarr.pk).update(status=ZarrArchiveStatus.UPLOADED)
            ingest_zarr_archive(str(zarr.zarr_id))
            asset = add_asset_to_version(user=owner, version=version, zarr_archive=ZarrArchive.objects.get(pk=zarr.pk),
                                         metadata={**metadata, "encodingFormat": "application/x-zarr"})
        else:
            asset = add_asset_to_version(user=owner, version=version, asset_blob=AssetBlobFactory.create(),
                                         metadata={**metadata, "encodingFormat": "application/x-nwb"})
        validate_asset_metadata_task(asset.id)
    validate_version_metadata_task(version.id)
    version.refresh_from_db()
    if not version.publishable:
        errors = version.validation_errors + [e for a in version.assets.all() for e in a.validation_errors or []]
        raise SystemExit(f"setup failed: the {kind} draft is {version.status}: {errors[:3]}")
    return version.dandiset


def _publish(owner: Any, dandiset: Any) -> dict[str, float]:
    gc.collect()
    tracemalloc.start()
    start = time.perf_counter()
    publish_dandiset(user=owner, dandiset=dandiset)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if not dandiset.versions.exclude(version="draft").exists():
        raise SystemExit(f"publish of {dandiset.identifier} made no version")
    return {"s": seconds, "peak_mb": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args()
    _accept_factory_etags()
    owner = UserFactory.create()
    runs: dict[str, list[dict[str, float]]] = {}
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for n in args.sizes:
                drafts = {kind: _draft(owner, kind, n, Path(tmp)) for kind in ("blob", "zarr")}
                order = ["blob", "zarr"]
                rng.shuffle(order)  # interleaved, in a different order each round
                for kind in order:
                    runs.setdefault(f"{kind}-{n}", []).append(_publish(owner, drafts[kind]))
                print(f"round {round_ + 1}: {n} assets done", file=sys.stderr)
    summary = {
        key: {
            "median_s": statistics.median(r["s"] for r in rs),
            "min_s": min(r["s"] for r in rs), "max_s": max(r["s"] for r in rs),
            "peak_mb": max(r["peak_mb"] for r in rs), "runs": rs,
        }
        for key, rs in runs.items()
    }
    lines = ["| assets | blobs only: publish s (median, min-max) | Zarrs (Icechunk): publish s | Zarr / blob | peak MB (Python, Zarrs) |",
             "|---|---|---|---|---|"]
    for n in args.sizes:
        b, z = summary[f"blob-{n}"], summary[f"zarr-{n}"]
        lines.append(
            f"| {n} | {b['median_s']:.2f} ({b['min_s']:.2f}-{b['max_s']:.2f}) | {z['median_s']:.2f} "
            f"({z['min_s']:.2f}-{z['max_s']:.2f}) | {z['median_s'] / b['median_s']:.1f}x | {z['peak_mb']:.0f} |"
        )
    table = "\n".join(lines)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "archive-publish.json").write_text(json.dumps({"rounds": args.rounds, "results": summary}, indent=2))
    (OUT / "archive-publish.md").write_text(table + "\n")
    _plot(summary, args.sizes)
    print(table)


def _plot(summary: dict[str, Any], sizes: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, color in (("blob", "tab:gray"), ("zarr", "tab:green")):
        med = [summary[f"{kind}-{n}"]["median_s"] for n in sizes]
        lo = [m - summary[f"{kind}-{n}"]["min_s"] for m, n in zip(med, sizes)]
        hi = [summary[f"{kind}-{n}"]["max_s"] - m for m, n in zip(med, sizes)]
        ax.errorbar(sizes, med, yerr=[lo, hi], marker="o", color=color, capsize=3,
                    label="blob assets" if kind == "blob" else "Zarr assets (Icechunk)")
    ax.set(xscale="log", yscale="log", xlabel="assets in the Dandiset", ylabel="archive publish (s)",
           title="dandi-archive publish, adapter on (median, min-max)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "archive-publish.png", dpi=120)


if __name__ == "__main__":
    main()

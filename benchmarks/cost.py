"""Project the measured per-version overheads of ``compare.json`` to DANDI's size.

What each contender keeps beyond the data itself is measured per object of the Zarr: once for
the first version (indexes, manifests, database rows) and again for every new version (besides
the changed chunks, which every contender keeps). Those per-object byte counts, times DANDI's
object count, times the versions a year, priced with the S3 and database prices given here,
give a yearly projection. The requests an update needs are counted from each design (PUTs of
changed objects, listings, metadata objects) and priced as well.

    python benchmarks/cost.py [results/compare.json] [--versions-per-year 4] [--s3-gb-month 0.023] ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from report import LABELS, stored

TB = 1e12


def overheads(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Bytes each contender keeps per object of the Zarr beyond the data: for the first version
    and for each further version (besides the changed chunk bytes), from the primary workload."""
    w = next(w for w in results["workloads"] if w["kind"] == "classic" and w["versions"] > 2)
    out = {}
    for key in LABELS:
        history = w["history"][key]
        per_version = [
            (stored(b) - stored(a) - b["changed_bytes"]) / w["files"]
            for a, b in zip(history, history[1:])
        ]
        db = [s["stored"].get("database", 0) for s in history]
        out[key] = {
            "first_version_per_object": (stored(history[0]) - w["bytes"]) / w["files"],
            "per_version_per_object": sum(per_version) / len(per_version),
            "database_per_version_per_object": (db[-1] - db[0]) / (len(db) - 1) / w["files"],
        }
    return out


def project(results: dict[str, Any], p: argparse.Namespace) -> dict[str, Any]:
    over = overheads(results)
    objects, data = p.objects, p.petabytes * 1e15
    changed_objects = objects * p.changed_fraction
    rows = {}
    for key, o in over.items():
        db_share = (
            o["database_per_version_per_object"] / o["per_version_per_object"]
            if o["per_version_per_object"]
            else 0
        )
        first = max(o["first_version_per_object"], 0) * objects
        yearly = o["per_version_per_object"] * objects * p.versions_per_year
        kept_chunks = (
            data * p.changed_fraction * p.versions_per_year
        )  # old chunk versions, every contender
        db_bytes = yearly * db_share
        s3_bytes = first + yearly - db_bytes
        # requests of one version of every Zarr
        puts = changed_objects
        lists = 0.0
        if key in ("today", "proposal"):  # the update lists the prefix to compare ETags
            lists += objects / 1000
        if key == "proposal":  # finalize lists every object version and writes a manifest per Zarr
            lists += objects * (1 + p.changed_fraction * p.versions_per_year) / 1000
            puts += p.zarrs
        if key in ("direct", "ours"):  # manifests of the changed splits, snapshot, ref (+ index)
            puts += p.zarrs * (p.manifests_per_update + (1 if key == "ours" else 0))
        request_cost = p.versions_per_year * ((puts + lists) / 1000 * p.put_per_1000)
        rows[key] = {
            "overhead_first_TB": first / TB,
            "overhead_per_year_TB": (s3_bytes - first) / TB,
            "database_per_year_TB": db_bytes / TB,
            "old_chunk_versions_per_year_TB": kept_chunks / TB,
            "storage_cost_per_year_usd": 12
            * (
                (first + yearly - db_bytes + kept_chunks) / 1e9 * p.s3_gb_month
                + db_bytes / 1e9 * p.db_gb_month
            ),
            "overhead_cost_per_year_usd": 12
            * ((first + yearly - db_bytes) / 1e9 * p.s3_gb_month + db_bytes / 1e9 * p.db_gb_month),
            "requests_per_year": p.versions_per_year * (puts + lists),
            "request_cost_per_year_usd": request_cost,
        }
    return {
        "parameters": vars(p) | {"source": str(p.source)},
        "per_object_overheads_bytes": over,
        "projection": rows,
    }


def markdown(projection: dict[str, Any]) -> str:
    p = projection["parameters"]
    lines = [
        f"Projection for {p['petabytes']} PB in {p['objects'] / 1e6:.0f} M objects ({p['zarrs']:,} Zarrs), "
        f"{p['versions_per_year']} versions a year of {p['changed_fraction']:.0%} each; S3 ${p['s3_gb_month']}/GB-month, "
        f"database ${p['db_gb_month']}/GB-month, PUT/LIST ${p['put_per_1000']}/1000.",
        "",
        "| | bytes kept per object, first version | per object per version | S3 overhead, first version | S3 overhead per year | database per year | overhead $/year | requests $/year |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in projection["projection"].items():
        o = projection["per_object_overheads_bytes"][key]
        lines.append(
            f"| {LABELS[key]} | {o['first_version_per_object']:.0f} B | {o['per_version_per_object']:.0f} B | "
            f"{r['overhead_first_TB']:.2f} TB | {r['overhead_per_year_TB']:.2f} TB | {r['database_per_year_TB']:.3f} TB | "
            f"${r['overhead_cost_per_year_usd']:,.0f} | ${r['request_cost_per_year_usd']:,.0f} |"
        )
    kept = next(iter(projection["projection"].values()))["old_chunk_versions_per_year_TB"]
    lines += [
        "",
        f"Every contender also keeps the old versions of changed chunks: {kept:,.0f} TB a year at these rates "
        f"(${kept * 1000 * p['s3_gb_month'] * 12:,.0f}/year), the same for all.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "source", type=Path, nargs="?", default=Path(__file__).parent / "results" / "compare.json"
    )
    parser.add_argument("--petabytes", type=float, default=1.4)
    parser.add_argument("--objects", type=float, default=370e6)
    parser.add_argument("--zarrs", type=int, default=29_000)
    parser.add_argument("--versions-per-year", type=float, default=4)
    parser.add_argument("--changed-fraction", type=float, default=0.01)
    parser.add_argument(
        "--manifests-per-update",
        type=float,
        default=2,
        help="manifest objects an Icechunk commit writes (changed splits)",
    )
    parser.add_argument("--s3-gb-month", type=float, default=0.023, help="S3 Standard, us-east-2")
    parser.add_argument(
        "--db-gb-month", type=float, default=0.115, help="RDS gp3 storage (no instance)"
    )
    parser.add_argument("--put-per-1000", type=float, default=0.005, help="S3 PUT/COPY/POST/LIST")
    args = parser.parse_args()
    projection = project(json.loads(args.source.read_text()), args)
    (args.source.parent / "cost.json").write_text(json.dumps(projection, indent=2))
    table = markdown(projection)
    (args.source.parent / "cost.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

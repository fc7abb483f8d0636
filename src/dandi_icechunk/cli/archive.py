"""What the archive runs, as commands: publish, audit, gc, attach, unembargo, migrate, migrate-many,
arraylake-register."""

from __future__ import annotations

import csv
import gzip
import json
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from ..archive.audit import Publication
from ..archive.gc import DEFAULT_RESTORE_WINDOW, collect_garbage
from ..archive.ledger import keep_publications_in_arraylake_gc, recorded_publications
from ..archive.migrate import inventory_listings
from ..archive.migrate import migrate_many as migrate_many_zarrs
from ..archive_hooks import (
    attach_zarr_to_dandiset,
    audit_published,
    migrate_zarr,
    publish_dandiset,
    unembargo_dandiset_zarrs,
)
from ..errors import DandiIcechunkError
from ..location import validate_zarr_id
from ..reference import ZARR_MEDIA_TYPE, SnapshotReference
from .main import (
    emit,
    jobs_option,
    json_option,
    main,
    one_ref,
    progress_for,
    ref_options,
    size_text,
    user_errors,
)


@main.command()
@click.option("--dandiset", "dandiset_id", required=True, help="Dandiset ID, e.g. 000123.")
@click.option("--version", "version", required=True, help="The new version, 0.YYMMDD.HHMM.")
@click.argument("assets_file", metavar="ASSETS.json", type=click.File("r"))
@json_option
@click.pass_context
def publish(
    ctx: click.Context, dandiset_id: str, version: str, assets_file: Any, as_json: bool
) -> None:
    """Run the archive's publish hook on a JSON list of draft asset metadata.

    Tags the newest snapshot of every Zarr asset as dandiset/<DANDISET>/<VERSION> (after
    checking it matches the draft's checksum and size) and prints the published metadata of
    every asset. For operators, and for trying the hook without an archive server.
    """
    with user_errors():
        published = publish_dandiset(dandiset_id, version, _load_assets(assets_file), location=ctx.obj)

    def text() -> None:
        for asset in published:
            if asset.get("encodingFormat") == ZARR_MEDIA_TYPE:
                ref = SnapshotReference.from_asset(asset)
                click.echo(f"{asset.get('path')}: snapshot {ref.snapshot_id} tagged {ref.tag}")
        click.echo(f"published {len(published)} asset(s) of Dandiset {dandiset_id} version {version}")

    emit(as_json, published, text)


def _load_assets(assets_file: Any) -> list[dict[str, Any]]:
    try:
        assets = json.load(assets_file)
    except json.JSONDecodeError as exc:
        raise DandiIcechunkError(f"{assets_file.name} is not valid JSON: {exc}") from None
    if not isinstance(assets, list) or not all(isinstance(a, dict) for a in assets):
        raise DandiIcechunkError(f"{assets_file.name} must hold a JSON list of asset metadata objects")
    return assets


@main.command()
@click.argument("assets_file", metavar="PUBLISHED.json", type=click.File("r"))
@click.option("--repair", is_flag=True, help="Restore what was deleted or overwritten, from the bucket's versions.")
@json_option
@click.pass_context
def audit(ctx: click.Context, assets_file: Any, repair: bool, as_json: bool) -> None:
    """Check that every published Zarr snapshot in PUBLISHED.json is intact.

    PUBLISHED.json is a JSON list of published asset metadata (as `publish` prints it). For
    each Zarr asset: its tag still names its snapshot, every object it reaches reads back with
    the recorded MD5, and its checksum matches the published digest. Exits 1 on any problem.
    """
    with user_errors():
        report = audit_published(_load_assets(assets_file), location=ctx.obj, repair=repair)

    def text() -> None:
        for line in report.repairs:
            click.echo(f"REPAIRED {line}")
        for line in report.problems:
            click.echo(f"PROBLEM {line}")
        click.echo(f"{'OK' if report.ok else 'FAILED'}: {report.checked} published snapshot(s) checked")

    emit(as_json, report.to_json(), text)
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("zarr_id")
@click.option(
    "--restore-window-days", type=float, default=DEFAULT_RESTORE_WINDOW.days, show_default=True,
    help="Keep every snapshot and object younger than this.",
)
@click.option(
    "--published", "published_file", type=click.File("r"),
    help="Published asset metadata (JSON list): keep these snapshots. Default: the dandiset/* tags.",
)
@click.option("--dry-run", is_flag=True, help="Report what would be reclaimed; change nothing.")
@json_option
@click.pass_context
def gc(
    ctx: click.Context, zarr_id: str, restore_window_days: float, published_file: Any,
    dry_run: bool, as_json: bool,
) -> None:
    """Reclaim storage of draft snapshots and abandoned uploads; never of published data.

    A dry run expires nothing, so it counts only objects no snapshot reaches today (for example
    abandoned uploads), not those that only the expiring drafts hold.
    """
    with user_errors():
        published = None
        if published_file is not None:
            publications = [
                Publication.from_asset(a)
                for a in _load_assets(published_file)
                if a.get("encodingFormat") == ZARR_MEDIA_TYPE
            ]
            published = [p.snapshot_id for p in publications if p.zarr_id == validate_zarr_id(zarr_id)]
        result = collect_garbage(
            ctx.obj, zarr_id, published_snapshots=published,
            restore_window=timedelta(days=restore_window_days), dry_run=dry_run,
        )
    emit(as_json, result.to_json(), lambda: click.echo(
        f"{'would reclaim' if dry_run else 'reclaimed'} {result.objects_deleted} object(s), "
        f"{size_text(result.bytes_deleted)}; {result.snapshots_expired} snapshot(s) "
        f"{'would expire' if dry_run else 'expired'}; kept {len(result.kept_published)} published"
        + (f"; {'would delete' if dry_run else 'deleted'} {len(result.scratch_branches_deleted)} "
           "branch(es) of crashed Dask uploads" if result.scratch_branches_deleted else "")
    ))


@main.command()
@click.argument("zarr_id")
@click.option("--dandiset", "dandiset_id", required=True, help="The Dandiset to add the Zarr to.")
@ref_options
@click.option("--embargoed-dandiset", is_flag=True, help="The target Dandiset is embargoed.")
@json_option
@click.pass_context
def attach(
    ctx: click.Context, zarr_id: str, dandiset_id: str, snapshot_id: str | None, tag: str | None,
    branch: str | None, embargoed_dandiset: bool, as_json: bool,
) -> None:
    """Add an existing Zarr to another Dandiset without uploading it again.

    The Dandiset gets a branch (dandiset/<DANDISET>) of the Zarr's repository at the chosen
    snapshot or tag (default: the newest); its edits go there (upload --branch), copy-on-write.
    """
    one_ref(snapshot_id, tag, branch)
    if branch is not None:
        raise click.UsageError("attach takes --snapshot or --tag (a fixed version), not --branch")
    with user_errors():
        result = attach_zarr_to_dandiset(
            zarr_id, dandiset_id, location=ctx.obj, snapshot_id=snapshot_id, tag=tag,
            dandiset_embargoed=embargoed_dandiset,
        )
    emit(as_json, result.to_json(), lambda: click.echo(
        f"Zarr {result.zarr_id} is in Dandiset {dandiset_id} at snapshot {result.snapshot_id} "
        f"(branch {result.branch}; checksum {result.zarr_checksum})"
    ))


@main.command()
@click.argument("zarr_ids", nargs=-1, required=True)
@json_option
@click.pass_context
def unembargo(ctx: click.Context, zarr_ids: tuple[str, ...], as_json: bool) -> None:
    """Make embargoed Zarrs public: move their repositories to the public prefix, server-side.

    No data is uploaded again; every snapshot ID and tag stays valid. Safe to run again.
    """
    with user_errors():
        results = unembargo_dandiset_zarrs(zarr_ids, location=ctx.obj)

    def text() -> None:
        for r in results:
            click.echo(f"{r.zarr_id}: moved {r.objects_moved} objects ({size_text(r.bytes_moved)}) in {r.seconds:.1f} s")

    emit(as_json, [r.to_json() for r in results], text)


@main.command()
@click.argument("zarr_id")
@click.option("--checksum", required=True, help="The dandi-zarr-checksum the archive recorded for the Zarr.")
@click.option("--dandiset", help="Dandiset ID, recorded in the commit metadata.")
@click.option("--embargoed", is_flag=True, help="Make the repository under the private prefix.")
@json_option
@click.pass_context
def migrate(ctx: click.Context, zarr_id: str, checksum: str, dandiset: str | None, embargoed: bool, as_json: bool) -> None:
    """Make a Zarr stored the old way (zarr/ZARR_ID/ in the bucket) a repository, without copying
    a chunk: chunks reference the existing objects, pinned by ETag. Nothing is committed unless
    the objects' checksum is the archive's (--checksum) and they do not change meanwhile."""
    with user_errors():
        result = migrate_zarr(ctx.obj, validate_zarr_id(zarr_id), expected_checksum=checksum, dandiset=dandiset,
                              embargoed=embargoed)

    def text() -> None:
        click.echo(
            f"{result.zarr_id}: snapshot {result.snapshot_id}, {result.virtual_chunks} chunks referenced in place, "
            f"{result.stored_files} metadata file(s) stored ({size_text(result.stored_bytes)}); "
            f"dandi-zarr-checksum {result.zarr_checksum}"
        )

    emit(as_json, result.to_json(), text)


_INVENTORY_COLUMNS = "Bucket,Key,VersionId,IsLatest,IsDeleteMarker,Size,LastModifiedDate,ETag"


@main.command("migrate-many")
@click.argument("zarrs_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory of per-Zarr result files (<zarr_id>.json); Zarrs already migrated there are skipped.")
@click.option("--inventory", "inventories", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="S3 Inventory CSV file(s) (.csv or .csv.gz) of the bucket, instead of listing it.")
@click.option("--inventory-columns", default=_INVENTORY_COLUMNS, show_default=True,
              help="The inventory's columns (its manifest's fileSchema).")
@click.option("--no-recheck", is_flag=True, help="Do not list each Zarr again before committing (with --inventory).")
@jobs_option
@json_option
@click.pass_context
def migrate_many(
    ctx: click.Context, zarrs_csv: Path, results: Path, inventories: tuple[Path, ...], inventory_columns: str,
    no_recheck: bool, jobs: int, as_json: bool,
) -> None:
    """Migrate every Zarr of ZARRS_CSV (columns zarr_id, checksum[, embargoed]), as `migrate`
    does one, JOBS at a time; resumable, one result file per Zarr."""
    with user_errors():
        with zarrs_csv.open(newline="") as f:
            zarrs = [(validate_zarr_id(r["zarr_id"]), r["checksum"], r.get("embargoed", "").lower() in ("1", "true"))
                     for r in csv.DictReader(f)]
        listings = None
        if inventories:
            columns = [c.strip() for c in inventory_columns.split(",")]
            listings = inventory_listings(ctx.obj, _inventory_rows(inventories, columns))
        counts = migrate_many_zarrs(ctx.obj, zarrs, results, listings=listings, recheck=not no_recheck, jobs=jobs,
                                    progress=progress_for(as_json))

    def text() -> None:
        click.echo(f"{counts['migrated']} migrated, {counts['refused']} refused (see {results}), "
                   f"{counts['skipped']} already migrated")

    emit(as_json, counts, text)
    if counts["refused"]:
        sys.exit(1)


def _inventory_rows(paths: tuple[Path, ...], columns: list[str]) -> Iterator[dict[str, str]]:
    for path in paths:
        with (gzip.open(path, "rt", newline="") if path.suffix == ".gz" else path.open(newline="")) as f:
            for row in csv.reader(f):
                yield dict(zip(columns, row, strict=False))


@main.command("arraylake-register")
@click.argument("zarr_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every repository in the bucket.")
@jobs_option
@json_option
@click.pass_context
def arraylake_register(
    ctx: click.Context, zarr_ids: tuple[str, ...], everything: bool, jobs: int, as_json: bool
) -> None:
    """Register repositories already in the bucket with Arraylake, in place, with their history
    (``--storage arraylake://ORG/BUCKET_NICKNAME``; see docs/arraylake.md).

    Registered ones are left as they are, so it is safe to run again. Zarrs with recorded
    publications get Arraylake's scheduled GC, which keeps them.
    """
    location = ctx.obj
    with user_errors():
        if location.arraylake is None:
            raise click.UsageError("arraylake-register needs --storage arraylake://ORG/BUCKET_NICKNAME")
        if bool(zarr_ids) == everything:
            raise click.UsageError("give ZARR_IDS or --all, not both")
        results = location.arraylake.register_existing(location, None if everything else zarr_ids, jobs=jobs)
        for r in results:
            if r.imported and recorded_publications(location, r.zarr_id):
                keep_publications_in_arraylake_gc(location, r.zarr_id)

    def text() -> None:
        imported = [r for r in results if r.imported]
        for r in imported:
            click.echo(f"{r.zarr_id}: registered as {r.repo}")
        click.echo(f"{len(imported)} registered, {len(results) - len(imported)} already registered")

    emit(as_json, [r.to_json() for r in results], text)

"""The ``dandi-icechunk`` command line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from . import __version__
from .archive_hooks import (
    attach_zarr_to_dandiset,
    audit_published,
    publish_dandiset,
    unembargo_dandiset_zarrs,
)
from .audit import Publication
from .digest_cache import DigestCache
from .errors import DandiIcechunkError
from .export import export_snapshot, verify_snapshot
from .gc import DEFAULT_RESTORE_WINDOW, collect_garbage
from .history import diff_snapshots, repository_info
from .location import STORAGE_ENV_VAR, StorageLocation, validate_zarr_id
from .progress import NoProgress, Progress, TerminalProgress
from .reference import ZARR_MEDIA_TYPE, SnapshotReference
from .session import DEFAULT_BRANCH, ZarrRepository
from .upload import DEFAULT_JOBS, UploadResult, find_dandiset_zarrs, upload_zarr


@contextmanager
def _user_errors() -> Iterator[None]:
    """Show our errors as one clear line (exit 1) and Ctrl-C as a safe stop (exit 130)."""
    try:
        yield
    except DandiIcechunkError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo(
            "Interrupted: nothing was committed; run the same command again to complete.",
            err=True,
        )
        sys.exit(130)


def _progress(as_json: bool) -> Progress:
    return TerminalProgress() if not as_json and sys.stderr.isatty() else NoProgress()


def _emit(as_json: bool, data: Any, text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        text()


def _open(ctx: click.Context, zarr_id: str) -> ZarrRepository:
    return ZarrRepository.open(ctx.obj, zarr_id)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object, no progress.")
jobs_option = click.option(
    "--jobs", "-J", default=DEFAULT_JOBS, show_default=True, help="Parallel transfers."
)


def _ref_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--snapshot", "snapshot_id", help="Snapshot ID."),
            click.option("--tag", help="Tag name."),
            click.option("--branch", help=f"Branch name (default: tip of {DEFAULT_BRANCH})."),
        ]
    ):
        func = option(func)
    return func


def _one_ref(snapshot_id: str | None, tag: str | None, branch: str | None) -> None:
    if sum(x is not None for x in (snapshot_id, tag, branch)) > 1:
        raise click.UsageError("give at most one of --snapshot, --tag and --branch")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dandi-icechunk")
@click.option(
    "--storage",
    envvar=STORAGE_ENV_VAR,
    metavar="URL",
    help=(
        "Where repositories live: s3://BUCKET/PREFIX?endpoint_url=URL (AWS credentials from the "
        "usual sources) or file:///PATH. Default: a local bucket in your data directory. "
        f"Also ${STORAGE_ENV_VAR}."
    ),
)
@click.pass_context
def main(ctx: click.Context, storage: str | None) -> None:
    """Zarr assets of the DANDI archive as Icechunk repositories.

    Each Zarr asset (keyed by its zarr_id) is one Icechunk repository. `upload` commits a local
    Zarr as one snapshot (only what changed travels); `log`, `diff`, `info`, `export` and
    `verify` inspect and read snapshots back.
    """
    if "ICECHUNK_LOG" not in os.environ:
        import icechunk

        icechunk.set_logs_filter("error")
    with _user_errors():
        ctx.obj = StorageLocation.resolve(storage)


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--zarr-id", help="The Zarr asset's zarr_id (UUID). Required for a single Zarr.")
@click.option("--dandiset", help="Dandiset ID, recorded in the commit metadata.")
@click.option("--message", "-m", help="Commit message.")
@click.option("--branch", default=DEFAULT_BRANCH, show_default=True, help="Branch to commit on.")
@click.option("--embargoed", is_flag=True, help="Create new repositories under the private prefix.")
@click.option(
    "--no-cache", is_flag=True,
    help="Hash every local file again (by default unchanged files keep their cached MD5).",
)
@click.option(
    "--no-dedup", is_flag=True,
    help="Upload even if the archive holds the same content already (needed with credentials for one repository).",
)
@jobs_option
@json_option
@click.pass_context
def upload(
    ctx: click.Context,
    path: Path,
    zarr_id: str | None,
    dandiset: str | None,
    message: str | None,
    branch: str,
    embargoed: bool,
    no_cache: bool,
    no_dedup: bool,
    jobs: int,
    as_json: bool,
) -> None:
    """Upload a Zarr directory (or every Zarr in a Dandiset directory) as one commit each.

    Only new and changed files are written; files removed locally are removed. With no change,
    no commit is made. In a Dandiset directory (one with dandiset.yaml), Zarr assets are found
    as `dandi upload` finds them and each gets a zarr_id derived from the Dandiset ID and its path.
    """
    is_dandiset = (path / "dandiset.yaml").exists()
    with _user_errors():
        if is_dandiset:
            dandiset_id, zarrs = find_dandiset_zarrs(path)
            if zarr_id and len(zarrs) > 1:
                raise click.UsageError(
                    f"--zarr-id names one Zarr, but {path} holds {len(zarrs)}; leave it out"
                )
            targets = [(z.filepath, zarr_id or z.zarr_id, z.asset_path) for z in zarrs]
            dandiset = dandiset or dandiset_id
        elif zarr_id is None:
            raise click.UsageError("--zarr-id is required to upload a single Zarr")
        else:
            targets = [(path, zarr_id, path.name)]
        results: list[UploadResult] = []
        for filepath, target_id, asset_path in targets:
            result = upload_zarr(
                filepath, ctx.obj, target_id, embargoed=embargoed, branch=branch, message=message, dandiset=dandiset,
                jobs=jobs, progress=_progress(as_json), dedup=not no_dedup,
                digest_cache=None if no_cache else DigestCache.default(),
            )
            results.append(result)
            if not as_json:
                _print_upload(asset_path, result)
        if as_json:
            payload = (
                {"dandiset": dandiset, "zarrs": [r.to_json() for r in results]}
                if is_dandiset
                else results[0].to_json()
            )
            click.echo(json.dumps(payload, indent=2))


def _print_upload(name: str, result: UploadResult) -> None:
    if result.reused:
        click.echo(
            f"{name}: the archive already holds this content (Zarr {result.zarr_id}, snapshot "
            f"{result.snapshot_id}); attached it, uploaded nothing"
        )
        return
    if result.snapshot_id is None:
        click.echo(
            f"{name}: no change since snapshot {result.parent_snapshot_id}; nothing committed "
            f"(zarr_id {result.zarr_id}, checksum {result.zarr_checksum})"
        )
        return
    click.echo(
        f"{name}: committed snapshot {result.snapshot_id} to {result.repository}\n"
        f"  {result.files_written} file(s) written ({_size(result.bytes_written)}), "
        f"{result.files_deleted} deleted; now {result.file_count} files, {_size(result.size)}\n"
        f"  dandi-zarr-checksum {result.zarr_checksum}"
    )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


@main.command()
@click.argument("zarr_id")
@click.option("--branch", default=DEFAULT_BRANCH, show_default=True)
@json_option
@click.pass_context
def log(ctx: click.Context, zarr_id: str, branch: str, as_json: bool) -> None:
    """List the snapshots of a Zarr's repository, newest first, with their DANDI metadata."""
    with _user_errors():
        records = _open(ctx, zarr_id).history(branch)

    def text() -> None:
        for r in records:
            tags = f"  [tags: {', '.join(r.tags)}]" if r.tags else ""
            click.echo(f"snapshot {r.snapshot_id}  {r.written_at:%Y-%m-%d %H:%M:%S %Z}{tags}")
            click.echo(f"    {r.message}")
            if r.info:
                click.echo(
                    f"    checksum {r.info.zarr_checksum}  files {r.info.file_count}  "
                    f"size {_size(r.info.size)}  by {r.info.user} ({r.info.client})"
                    + (f"  dandiset {r.info.dandiset}" if r.info.dandiset else "")
                )

    _emit(as_json, {"zarr_id": zarr_id, "branch": branch, "snapshots": [r.to_json() for r in records]}, text)


@main.command()
@click.argument("zarr_id")
@click.argument("from_ref", metavar="FROM")
@click.argument("to_ref", metavar="TO")
@json_option
@click.pass_context
def diff(ctx: click.Context, zarr_id: str, from_ref: str, to_ref: str, as_json: bool) -> None:
    """Show the files added, modified and removed from snapshot FROM to snapshot TO.

    FROM and TO are snapshot IDs, tags or branch names.
    """
    with _user_errors():
        result = diff_snapshots(_open(ctx, zarr_id), from_ref, to_ref)

    def text() -> None:
        click.echo(f"{result.from_snapshot} -> {result.to_snapshot}")
        for mark, keys in (("A", result.added), ("M", result.modified), ("D", result.removed)):
            for key in keys:
                click.echo(f"{mark} {key}")
        click.echo(
            f"{len(result.added)} added, {len(result.modified)} modified, "
            f"{len(result.removed)} removed ({_size(result.bytes_added)} written)"
        )

    _emit(as_json, result.to_json(), text)


@main.command()
@click.argument("zarr_id")
@click.option("--branch", default=DEFAULT_BRANCH, show_default=True)
@json_option
@click.pass_context
def info(ctx: click.Context, zarr_id: str, branch: str, as_json: bool) -> None:
    """Summarize a Zarr's repository: location, branches, tags, and the tip's content."""
    with _user_errors():
        data = repository_info(_open(ctx, zarr_id), branch)

    def text() -> None:
        for key, value in data.items():
            if isinstance(value, dict):
                click.echo(f"{key}:")
                for k, v in value.items():
                    click.echo(f"  {k}: {v}")
            else:
                click.echo(f"{key}: {_size(value) if key == 'size' else value}")

    _emit(as_json, data, text)


@main.command()
@click.argument("zarr_id")
@click.argument("dest", type=click.Path(path_type=Path))
@_ref_options
@jobs_option
@json_option
@click.pass_context
def export(
    ctx: click.Context, zarr_id: str, dest: Path, snapshot_id: str | None, tag: str | None,
    branch: str | None, jobs: int, as_json: bool,
) -> None:
    """Write a snapshot to DEST as the exact files that were uploaded (v2 comes back as v2)."""
    _one_ref(snapshot_id, tag, branch)
    with _user_errors():
        result = export_snapshot(
            _open(ctx, zarr_id), dest, snapshot_id=snapshot_id, tag=tag, branch=branch,
            jobs=jobs, progress=_progress(as_json),
        )
    _emit(as_json, result.to_json(), lambda: click.echo(
        f"exported snapshot {result.snapshot_id} to {result.destination}: "
        f"{result.file_count} files, {_size(result.size)}, checksum {result.zarr_checksum}"
    ))


@main.command()
@click.argument("zarr_id")
@_ref_options
@jobs_option
@json_option
@click.pass_context
def verify(
    ctx: click.Context, zarr_id: str, snapshot_id: str | None, tag: str | None,
    branch: str | None, jobs: int, as_json: bool,
) -> None:
    """Recompute a snapshot's dandi-zarr-checksum from the stored data and compare.

    Exits 0 when it matches and every file is intact, 1 otherwise.
    """
    _one_ref(snapshot_id, tag, branch)
    with _user_errors():
        result = verify_snapshot(
            _open(ctx, zarr_id), snapshot_id=snapshot_id, tag=tag, branch=branch,
            jobs=jobs, progress=_progress(as_json),
        )

    def text() -> None:
        for problem in result.problems:
            click.echo(f"PROBLEM {problem}")
        state = "OK" if result.ok else "FAILED"
        click.echo(
            f"{state}: snapshot {result.snapshot_id} recorded {result.expected_checksum}, "
            f"stored data gives {result.actual_checksum}"
        )

    _emit(as_json, result.to_json(), text)
    sys.exit(0 if result.ok else 1)


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
    with _user_errors():
        published = publish_dandiset(dandiset_id, version, _load_assets(assets_file), location=ctx.obj)

    def text() -> None:
        for asset in published:
            if asset.get("encodingFormat") == ZARR_MEDIA_TYPE:
                ref = SnapshotReference.from_asset(asset)
                click.echo(f"{asset.get('path')}: snapshot {ref.snapshot_id} tagged {ref.tag}")
        click.echo(f"published {len(published)} asset(s) of Dandiset {dandiset_id} version {version}")

    _emit(as_json, published, text)


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
    with _user_errors():
        report = audit_published(_load_assets(assets_file), location=ctx.obj, repair=repair)

    def text() -> None:
        for line in report.repairs:
            click.echo(f"REPAIRED {line}")
        for line in report.problems:
            click.echo(f"PROBLEM {line}")
        click.echo(f"{'OK' if report.ok else 'FAILED'}: {report.checked} published snapshot(s) checked")

    _emit(as_json, report.to_json(), text)
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
    with _user_errors():
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
    _emit(as_json, result.to_json(), lambda: click.echo(
        f"{'would reclaim' if dry_run else 'reclaimed'} {result.objects_deleted} object(s), "
        f"{_size(result.bytes_deleted)}; {result.snapshots_expired} snapshot(s) "
        f"{'would expire' if dry_run else 'expired'}; kept {len(result.kept_published)} published"
    ))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve snapshots as plain Zarr over HTTP, read-only.

    GET /<zarr_id>/<snapshot_id or tag>/<key> gives the file as uploaded (v2 stays v2), with
    ETags, byte ranges and directory listings, for viewers and zarr-python's HTTP store.
    """
    import uvicorn

    from .serve import create_app

    uvicorn.run(create_app(ctx.obj), host=host, port=port, log_level="warning")


@main.command()
@click.argument("zarr_id")
@click.option("--snapshot", "snapshot_id", required=True, help="Snapshot ID.")
@click.option("--output", "-o", type=click.File("w"), default="-", help="Where to write (default: stdout).")
@click.pass_context
def manifest(ctx: click.Context, zarr_id: str, snapshot_id: str, output: Any) -> None:
    """Write a snapshot's listing in the dandi/zarr-manifests v2 JSON layout."""
    from .manifest import snapshot_manifest

    with _user_errors():
        document = snapshot_manifest(_open(ctx, zarr_id), snapshot_id)
    json.dump(document, output, indent=1)
    output.write("\n")


@main.command()
@click.argument("zarr_id")
@click.option("--dandiset", "dandiset_id", required=True, help="The Dandiset to add the Zarr to.")
@_ref_options
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
    _one_ref(snapshot_id, tag, branch)
    if branch is not None:
        raise click.UsageError("attach takes --snapshot or --tag (a fixed version), not --branch")
    with _user_errors():
        result = attach_zarr_to_dandiset(
            zarr_id, dandiset_id, location=ctx.obj, snapshot_id=snapshot_id, tag=tag,
            dandiset_embargoed=embargoed_dandiset,
        )
    _emit(as_json, result.to_json(), lambda: click.echo(
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
    with _user_errors():
        results = unembargo_dandiset_zarrs(zarr_ids, location=ctx.obj)

    def text() -> None:
        for r in results:
            click.echo(f"{r.zarr_id}: moved {r.objects_moved} objects ({_size(r.bytes_moved)}) in {r.seconds:.1f} s")

    _emit(as_json, [r.to_json() for r in results], text)

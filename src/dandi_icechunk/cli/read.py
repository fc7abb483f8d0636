"""The readers' commands: log, diff, info, export, verify, serve, manifest."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import MissingExtraError
from ..location import STORAGE_ENV_VAR
from ..read.export import export_snapshot
from ..read.history import diff_snapshots, repository_info
from ..session import DEFAULT_BRANCH
from ..snapshot_files import verify_snapshot
from .main import (
    emit,
    jobs_option,
    json_option,
    main,
    one_ref,
    open_repository,
    progress_for,
    ref_options,
    size_text,
    user_errors,
)


@main.command()
@click.argument("zarr_id")
@click.option("--branch", default=DEFAULT_BRANCH, show_default=True)
@json_option
@click.pass_context
def log(ctx: click.Context, zarr_id: str, branch: str, as_json: bool) -> None:
    """List the snapshots of a Zarr's repository, newest first, with their DANDI metadata."""
    with user_errors():
        records = open_repository(ctx, zarr_id).history(branch)

    def text() -> None:
        for r in records:
            tags = f"  [tags: {', '.join(r.tags)}]" if r.tags else ""
            click.echo(f"snapshot {r.snapshot_id}  {r.written_at:%Y-%m-%d %H:%M:%S %Z}{tags}")
            click.echo(f"    {r.message}")
            if r.info:
                click.echo(
                    f"    checksum {r.info.zarr_checksum}  files {r.info.file_count}  "
                    f"size {size_text(r.info.size)}  by {r.info.user} ({r.info.client})"
                    + (f"  dandiset {r.info.dandiset}" if r.info.dandiset else "")
                )

    emit(as_json, {"zarr_id": zarr_id, "branch": branch, "snapshots": [r.to_json() for r in records]}, text)


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
    with user_errors():
        result = diff_snapshots(open_repository(ctx, zarr_id), from_ref, to_ref)

    def text() -> None:
        click.echo(f"{result.from_snapshot} -> {result.to_snapshot}")
        for mark, keys in (("A", result.added), ("M", result.modified), ("D", result.removed)):
            for key in keys:
                click.echo(f"{mark} {key}")
        click.echo(
            f"{len(result.added)} added, {len(result.modified)} modified, "
            f"{len(result.removed)} removed ({size_text(result.bytes_added)} written)"
        )

    emit(as_json, result.to_json(), text)


@main.command()
@click.argument("zarr_id")
@click.option("--branch", default=DEFAULT_BRANCH, show_default=True)
@json_option
@click.pass_context
def info(ctx: click.Context, zarr_id: str, branch: str, as_json: bool) -> None:
    """Summarize a Zarr's repository: location, branches, tags, and the tip's content."""
    with user_errors():
        data = repository_info(open_repository(ctx, zarr_id), branch)

    def text() -> None:
        for key, value in data.items():
            if isinstance(value, dict):
                click.echo(f"{key}:")
                for k, v in value.items():
                    click.echo(f"  {k}: {v}")
            else:
                click.echo(f"{key}: {size_text(value) if key == 'size' else value}")

    emit(as_json, data, text)


@main.command()
@click.argument("zarr_id")
@click.argument("dest", type=click.Path(path_type=Path))
@ref_options
@jobs_option
@json_option
@click.pass_context
def export(
    ctx: click.Context, zarr_id: str, dest: Path, snapshot_id: str | None, tag: str | None,
    branch: str | None, jobs: int, as_json: bool,
) -> None:
    """Write a snapshot to DEST as the exact files that were uploaded (v2 comes back as v2)."""
    one_ref(snapshot_id, tag, branch)
    with user_errors():
        result = export_snapshot(
            open_repository(ctx, zarr_id), dest, snapshot_id=snapshot_id, tag=tag, branch=branch,
            jobs=jobs, progress=progress_for(as_json),
        )
    emit(as_json, result.to_json(), lambda: click.echo(
        f"exported snapshot {result.snapshot_id} to {result.destination}: "
        f"{result.file_count} files, {size_text(result.size)}, checksum {result.zarr_checksum}"
    ))


@main.command()
@click.argument("zarr_id")
@ref_options
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
    one_ref(snapshot_id, tag, branch)
    with user_errors():
        result = verify_snapshot(
            open_repository(ctx, zarr_id), snapshot_id=snapshot_id, tag=tag, branch=branch,
            jobs=jobs, progress=progress_for(as_json),
        )

    def text() -> None:
        for problem in result.problems:
            click.echo(f"PROBLEM {problem}")
        state = "OK" if result.ok else "FAILED"
        click.echo(
            f"{state}: snapshot {result.snapshot_id} recorded {result.expected_checksum}, "
            f"stored data gives {result.actual_checksum}"
        )

    emit(as_json, result.to_json(), text)
    sys.exit(0 if result.ok else 1)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers", "-w", default=1, show_default=True, type=click.IntRange(min=1),
    help="Processes answering requests: each uses about one core.",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int) -> None:
    """Serve snapshots as plain Zarr over HTTP, read-only.

    GET /<zarr_id>/<snapshot_id or tag>/<key> gives the file as uploaded (v2 stays v2), with
    ETags, byte ranges and directory listings, for viewers and zarr-python's HTTP store.
    """
    with user_errors():
        try:
            import uvicorn

            from ..read.serve import create_app
        except ImportError:
            raise MissingExtraError("dandi-icechunk serve", "serve") from None
    if workers == 1:
        uvicorn.run(create_app(ctx.obj.for_reading()), host=host, port=port, log_level="warning")
        return
    os.environ[STORAGE_ENV_VAR] = ctx.obj.url  # what each worker process reads its location from
    uvicorn.run("dandi_icechunk.read.serve:app_from_environment", factory=True, workers=workers,
                host=host, port=port, log_level="warning")


@main.command()
@click.argument("zarr_id")
@click.option("--snapshot", "snapshot_id", required=True, help="Snapshot ID.")
@click.option("--output", "-o", type=click.File("w"), default="-", help="Where to write (default: stdout).")
@click.pass_context
def manifest(ctx: click.Context, zarr_id: str, snapshot_id: str, output: Any) -> None:
    """Write a snapshot's listing in the dandi/zarr-manifests v2 JSON layout."""
    from ..read.manifest import snapshot_manifest

    with user_errors():
        document = snapshot_manifest(open_repository(ctx, zarr_id), snapshot_id)
    json.dump(document, output, indent=1)
    output.write("\n")

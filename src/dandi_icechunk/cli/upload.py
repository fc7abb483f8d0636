"""`dandi-icechunk upload`: the uploader's command."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from ..session import DEFAULT_BRANCH
from ..upload import UploadResult, find_dandiset_zarrs, upload_zarr
from ..upload.digest_cache import DigestCache
from ..upload.distributed import connect
from .main import (
    jobs_option,
    json_option,
    main,
    progress_for,
    size_text,
    user_errors,
)


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
@click.option(
    "--dask-scheduler", metavar="ADDRESS",
    help="Hash and send on this Dask cluster (tcp://host:8786); its workers must see PATH at the same place.",
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
    dask_scheduler: str | None,
    jobs: int,
    as_json: bool,
) -> None:
    """Upload a Zarr directory (or every Zarr in a Dandiset directory) as one commit each.

    Only new and changed files are written; files removed locally are removed. With no change,
    no commit is made. In a Dandiset directory (one with dandiset.yaml), Zarr assets are found
    as `dandi upload` finds them and each gets a zarr_id derived from the Dandiset ID and its path.
    """
    is_dandiset = (path / "dandiset.yaml").exists()
    with user_errors(), contextlib.ExitStack() as stack:
        dask = stack.enter_context(connect(dask_scheduler)) if dask_scheduler else None
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
                jobs=jobs, progress=progress_for(as_json), dedup=not no_dedup,
                digest_cache=None if no_cache else DigestCache.default(), dask=dask,
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
        f"  {result.files_written} file(s) written ({size_text(result.bytes_written)}), "
        f"{result.files_deleted} deleted; now {result.file_count} files, {size_text(result.size)}\n"
        f"  dandi-zarr-checksum {result.zarr_checksum}"
    )

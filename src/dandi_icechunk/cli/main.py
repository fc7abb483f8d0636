"""The ``dandi-icechunk`` command group and what its commands share (errors, --json, progress)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from .. import __version__
from ..errors import DandiIcechunkError
from ..location import STORAGE_ENV_VAR, StorageLocation
from ..objects import DEFAULT_JOBS
from ..progress import NoProgress, Progress, TerminalProgress
from ..session import DEFAULT_BRANCH, ZarrRepository


class _WarningLines(logging.Handler):
    """The library's warnings (files left out, stray files) as one line each on stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"Warning: {record.getMessage()}", err=True)


@contextmanager
def user_errors() -> Iterator[None]:
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


def progress_for(as_json: bool) -> Progress:
    return TerminalProgress() if not as_json and sys.stderr.isatty() else NoProgress()


def emit(as_json: bool, data: Any, text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        text()


def open_repository(ctx: click.Context, zarr_id: str) -> ZarrRepository:
    """The repository for a reading command: read as anyone reads the bucket when it lets them
    (and when no AWS credentials are configured), else with the configured credentials."""
    return ZarrRepository.open_for_reading(ctx.obj.for_reading(), zarr_id)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object, no progress.")
jobs_option = click.option(
    "--jobs", "-J", default=DEFAULT_JOBS, show_default=True, type=click.IntRange(min=1),
    help="Parallel transfers."
)


def ref_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--snapshot", "snapshot_id", help="Snapshot ID."),
            click.option("--tag", help="Tag name."),
            click.option("--branch", help=f"Branch name (default: tip of {DEFAULT_BRANCH})."),
        ]
    ):
        func = option(func)
    return func


def one_ref(snapshot_id: str | None, tag: str | None, branch: str | None) -> None:
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
    logger = logging.getLogger("dandi_icechunk")
    if not any(isinstance(h, _WarningLines) for h in logger.handlers):
        logger.addHandler(_WarningLines())
    with user_errors():
        ctx.obj = StorageLocation.resolve(storage)


def size_text(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError

"""`dandi-icechunk dandi`: dandi-cli's own commands, with Zarr assets as Icechunk repositories."""

from __future__ import annotations

import click

from .main import main, user_errors


@main.command(
    "dandi",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.argument("dandi_args", nargs=-1, type=click.UNPROCESSED)
def dandi(dandi_args: tuple[str, ...]) -> None:
    """dandi-cli's `dandi` (upload, download, ls, digest, ...: the same options, -i, -J,
    --existing, --zarr-mode, ...), with each Zarr asset uploaded as one Icechunk commit through
    the archive and read at the snapshot its version names."""
    with user_errors():
        from dandi.cli.command import main as dandi_main

        from ..dandi_cli import icechunk_zarrs

        with icechunk_zarrs():
            dandi_main.main(args=list(dandi_args), prog_name="dandi-icechunk dandi")

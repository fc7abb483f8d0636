"""dandi-cli (the ``dandi`` command) with Zarr assets stored as Icechunk repositories.

``dandi-icechunk dandi upload|download|ls|... ARGS`` runs dandi-cli's own command with
:func:`icechunk_zarrs` in effect: each Zarr asset uploads as one Icechunk commit through the
archive (:mod:`.upload`), and reads of a Zarr asset get the files of the snapshot its metadata
names (:mod:`.download`). Everything else (NWB files, ``-i``, API keys, ``--existing``,
``--validation``, ``-J``, pyout progress) is dandi-cli's. dandi-cli has no plugin mechanism, so
this swaps classes for the duration of the command; ``integrations/dandi-cli/dandi-cli.patch``
gives dandi-cli one, and then plain ``dandi`` does the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import MissingExtraError

try:
    from dandi.dandiapi import BaseRemoteZarrAsset
    from dandi.files._private import BIDSFileFactory, DandiFileFactory, DandiFileType
except ImportError:  # pragma: no cover - the "upload" extra
    raise MissingExtraError("dandi-cli with Icechunk Zarrs", "upload") from None

from . import download
from .upload import IcechunkZarrAsset, IcechunkZarrBIDSAsset

__all__ = ["IcechunkZarrAsset", "IcechunkZarrBIDSAsset", "icechunk_zarrs"]


@contextmanager
def icechunk_zarrs() -> Iterator[None]:
    """While inside, dandi-cli uploads and reads Zarr assets as Icechunk Zarrs."""
    plain, bids, iterfiles = DandiFileFactory.CLASSES, BIDSFileFactory.CLASSES, BaseRemoteZarrAsset.iterfiles
    DandiFileFactory.CLASSES = {**plain, DandiFileType.ZARR: IcechunkZarrAsset}
    BIDSFileFactory.CLASSES = {**bids, DandiFileType.ZARR: IcechunkZarrBIDSAsset}
    BaseRemoteZarrAsset.iterfiles = download.iterfiles  # type: ignore[method-assign]
    try:
        yield
    finally:
        DandiFileFactory.CLASSES, BIDSFileFactory.CLASSES = plain, bids
        BaseRemoteZarrAsset.iterfiles = iterfiles  # type: ignore[method-assign]

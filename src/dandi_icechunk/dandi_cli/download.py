"""dandi-cli's reading of Zarr assets (``dandi download``, ``dandi ls``), told which snapshot.

dandi-cli lists a Zarr asset's files at ``/api/zarr/{zarr_id}/files/`` and downloads each from
there; for an Icechunk Zarr the archive serves its Dandiset's draft unless ``?snapshot=`` names
another. A published asset names its own snapshot in its metadata, so its files are that
version's, whatever the draft became since, and dandi-cli's checksum check holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from ..errors import MissingExtraError, NotAZarrAssetError
from ..reference import SnapshotReference

try:
    from dandi.dandiapi import BaseRemoteZarrAsset, RemoteZarrEntry, ZarrEntryServerData
except ImportError:  # pragma: no cover - the "upload" extra
    raise MissingExtraError("dandi-cli with Icechunk Zarrs", "upload") from None


@dataclasses.dataclass
class SnapshotZarrEntry(RemoteZarrEntry):
    """A file of one snapshot of an Icechunk Zarr asset."""

    snapshot: str | None = None

    @property
    def download_url(self) -> str:
        url = super().download_url
        return f"{url}&snapshot={self.snapshot}" if self.snapshot else url


def asset_snapshot(asset: BaseRemoteZarrAsset) -> str | None:
    """The snapshot a Zarr asset's metadata names (None: a plain Zarr, or none finalized)."""
    try:
        return SnapshotReference.from_asset(asset.get_raw_metadata()).snapshot_id
    except NotAZarrAssetError:
        return None


def iterfiles(self: BaseRemoteZarrAsset, prefix: str | None = None) -> Iterator[RemoteZarrEntry]:
    """:meth:`BaseRemoteZarrAsset.iterfiles`, of the snapshot the asset names."""
    snapshot = asset_snapshot(self)
    params = {"prefix": prefix, **({"snapshot": snapshot} if snapshot else {})}
    for item in self.client.paginate(f"{self.client.api_url}/zarr/{self.zarr}/files", params=params):
        entry = RemoteZarrEntry.from_server_data(self, ZarrEntryServerData.model_validate(item))
        yield SnapshotZarrEntry(**{f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}, snapshot=snapshot)

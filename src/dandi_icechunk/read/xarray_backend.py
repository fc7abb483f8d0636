"""The ``dandi-icechunk`` xarray backend.

>>> xarray.open_dataset(published_asset_metadata, engine="dandi-icechunk")
>>> xarray.open_dataset("2b1f5f4c-...", engine="dandi-icechunk", tag="dandiset/000123/0.260101.1200")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import xarray as xr
from xarray.backends import BackendEntrypoint

from ..reference import SnapshotReference
from .open import open_dataset


class DandiIcechunkBackend(BackendEntrypoint):
    """Open one snapshot of a DANDI Zarr asset's Icechunk repository as a Dataset."""

    description = "DANDI Zarr assets in Icechunk: by published asset metadata, snapshot ID or tag"
    url = "https://github.com/dandi/dandi-icechunk"
    open_dataset_parameters = (
        "filename_or_obj", "drop_variables", "group", "snapshot_id", "tag", "branch", "anonymous",
    )

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        group: str | None = None,
        snapshot_id: str | None = None,
        tag: str | None = None,
        branch: str | None = None,
        anonymous: bool | None = None,
    ) -> xr.Dataset:
        """See :func:`dandi_icechunk.read.open_dataset`."""
        return open_dataset(
            filename_or_obj, group=group, snapshot_id=snapshot_id, tag=tag, branch=branch,
            anonymous=anonymous, drop_variables=drop_variables,
        )

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Published Zarr asset metadata and snapshot references."""
        if isinstance(filename_or_obj, SnapshotReference):
            return True
        if isinstance(filename_or_obj, Mapping):
            return any(
                str(r.get("identifier", "")).startswith("icechunk:snapshot/")
                for r in filename_or_obj.get("relatedResource") or []
            )
        return False

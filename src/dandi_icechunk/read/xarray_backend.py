"""The ``dandi-icechunk`` xarray backend.

>>> xarray.open_dataset(published_asset_metadata, engine="dandi-icechunk")
>>> xarray.open_dataset(published_asset_metadata, engine="dandi-icechunk", group="0")  # one NGFF level
>>> xarray.open_datatree(published_asset_metadata, engine="dandi-icechunk")            # every level
>>> xarray.open_dataset("2b1f5f4c-...", engine="dandi-icechunk", tag="dandiset/000123/0.260101.1200")

xarray's own arguments (``decode_times``, ``mask_and_scale``, ``drop_variables``, ...) pass
through; ``chunks`` (lazy dask arrays) needs the ``dask`` extra.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import xarray as xr
from xarray.backends import BackendEntrypoint

from ..reference import SnapshotReference
from .open import open_session, store_dataset, store_datatree

_REF_PARAMETERS = ("asset_path", "snapshot_id", "tag", "branch", "anonymous")


class DandiIcechunkBackend(BackendEntrypoint):
    """Open one snapshot of a DANDI Zarr asset's Icechunk repository as a Dataset or DataTree."""

    description = "DANDI Zarr assets in Icechunk: by published asset metadata, snapshot ID or tag"
    url = "https://github.com/dandi/dandi-icechunk"
    open_dataset_parameters = (
        "filename_or_obj", "drop_variables", "group", *_REF_PARAMETERS, "mask_and_scale",
        "decode_times", "concat_characters", "decode_coords", "use_cftime", "decode_timedelta",
    )

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        group: str | None = None,
        **kwargs: Any,
    ) -> xr.Dataset:
        """See :func:`dandi_icechunk.read.open_dataset`; ``kwargs`` are the references of
        ``open_dataset_parameters`` and xarray's decoders."""
        store, decoders = _store(filename_or_obj, kwargs)
        dataset = store_dataset(store, group, **decoders)
        return dataset.drop_vars(drop_variables, errors="ignore") if drop_variables else dataset

    def open_datatree(  # type: ignore[override]
        self, filename_or_obj: Any, *, drop_variables: str | Iterable[str] | None = None, **kwargs: Any
    ) -> xr.DataTree:
        """See :func:`dandi_icechunk.read.open_datatree`."""
        return store_datatree(_store(filename_or_obj, kwargs)[0])

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Published Zarr asset metadata (one asset or a list) and snapshot references."""
        if isinstance(filename_or_obj, SnapshotReference):
            return True
        if isinstance(filename_or_obj, Sequence) and not isinstance(filename_or_obj, str):
            return any(self.guess_can_open(a) for a in filename_or_obj)
        if isinstance(filename_or_obj, Mapping):
            return any(
                str(r.get("identifier", "")).startswith("icechunk:snapshot/")
                for r in filename_or_obj.get("relatedResource") or []
            )
        return False


def _store(filename_or_obj: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The store of the snapshot the reference arguments among ``kwargs`` name, and the rest
    (xarray's decoders, those it set)."""
    refs = {k: kwargs.pop(k) for k in _REF_PARAMETERS if k in kwargs}
    decoders = {k: v for k, v in kwargs.items() if v is not None}
    return open_session(filename_or_obj, **refs).store, decoders

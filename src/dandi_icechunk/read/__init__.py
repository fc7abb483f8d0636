"""The readers' side: open any version by published metadata, snapshot ID, tag or branch.

:mod:`.open` (xarray/zarr, and :mod:`.xarray_backend`, the ``dandi-icechunk`` engine), the
plain-Zarr HTTP view (:mod:`.serve`), :mod:`.export` to a directory, :mod:`.manifest`
(dandi/zarr-manifests listings) and :mod:`.history` (log, diff, info).

>>> from dandi_icechunk.read import open_dataset
>>> ds = open_dataset(published_asset_metadata)
"""

from .open import AccessDeniedError, open_dataset, open_datatree, open_session, open_zarr

__all__ = ["AccessDeniedError", "open_dataset", "open_datatree", "open_session", "open_zarr"]

"""The uploader's side: a local Zarr directory becomes one commit of its repository.

Local Zarr (:mod:`.local_zarr`: scan, validate, hash, with :mod:`.digest_cache`) -> a session
-> one commit (:mod:`.commit`); :mod:`.dandiset` finds the Zarr assets of a Dandiset directory.

>>> from dandi_icechunk.upload import upload_zarr
>>> upload_zarr("sample.ome.zarr", StorageLocation.resolve(), zarr_id).snapshot_id
"""

from .commit import UploadResult, upload_zarr
from .dandiset import DandisetZarr, find_dandiset_zarrs

__all__ = ["DandisetZarr", "UploadResult", "find_dandiset_zarrs", "upload_zarr"]

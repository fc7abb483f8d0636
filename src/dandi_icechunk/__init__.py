"""dandi-icechunk: every Zarr asset of the DANDI archive as an Icechunk repository.

>>> import dandi_icechunk
>>> ds = dandi_icechunk.open_dataset(published_asset_metadata)
>>> group = dandi_icechunk.open_zarr(zarr_id, tag="dandiset/000123/0.260101.1200")
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "open_dataset", "open_datatree", "open_session", "open_zarr", "upload_zarr"]


def __getattr__(name: str) -> Any:
    # Imported on first use: xarray and zarr take a while to import, and the CLI rarely needs them.
    if name in ("open_dataset", "open_datatree", "open_session", "open_zarr"):
        from . import read

        return getattr(read, name)
    if name == "upload_zarr":
        from .upload import upload_zarr

        return upload_zarr
    raise AttributeError(f"module 'dandi_icechunk' has no attribute {name!r}")

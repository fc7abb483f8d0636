"""dandi-icechunk: every Zarr asset of the DANDI archive as an Icechunk repository."""

__version__ = "0.1.0"

"""Example Zarrs shaped like DANDI's, for the demo, tests and benchmarks.

>>> make_ome_zarr_v2("sample.ome.zarr", levels=2, separator="/")
>>> make_zarr_v3("sample.zarr", shape=(64, 256, 256), chunks=(16, 64, 64), shards=(32, 128, 128))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc


def _pattern(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Noisy but compressible uint16 data, different per seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4096, size=shape, dtype=np.uint16)


def make_ome_zarr_v2(
    path: str | Path,
    *,
    shape: tuple[int, int, int] = (16, 64, 64),
    chunks: tuple[int, int, int] = (8, 32, 32),
    levels: int = 2,
    separator: str = "/",
    seed: int = 0,
) -> Path:
    """An OME-NGFF 0.4 multiscale image in Zarr v2 (what most DANDI Zarrs are)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for level in range(levels):
        factor = 2**level
        level_shape = (shape[0], shape[1] // factor, shape[2] // factor)
        array = root.create_array(
            str(level),
            shape=level_shape,
            chunks=chunks,
            dtype="<u2",
            chunk_key_encoding={"name": "v2", "separator": separator},
            compressors=Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE) if level == 0 else None,
            fill_value=0,
        )
        array[:] = _pattern(level_shape, seed + level)
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, float(factor), float(factor)]}
                ],
            }
        )
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": Path(path).name,
            "axes": [
                {"name": "z", "type": "space", "unit": "micrometer"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": datasets,
        }
    ]
    return Path(path)


def make_zarr_v3(
    path: str | Path,
    *,
    shape: tuple[int, ...] = (16, 64, 64),
    chunks: tuple[int, ...] = (8, 32, 32),
    shards: tuple[int, ...] | None = None,
    seed: int = 0,
    name: str = "data",
) -> Path:
    """A Zarr v3 group with one array ``name`` (sharded when ``shards`` is given)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = root.create_array(
        name, shape=shape, chunks=chunks, shards=shards, dtype="<u2", fill_value=0,
        dimension_names=[f"d{i}" for i in range(len(shape))],
    )
    array[:] = _pattern(shape, seed)
    return Path(path)

"""OME-NGFF multiscale images as xarray: one Dataset per resolution level, a DataTree of all.

Most DANDI Zarrs are OME-NGFF (0.4 on Zarr v2, 0.5 on Zarr v3): a group whose ``multiscales``
metadata lists the resolution levels (arrays of different shapes, so not one Dataset) with their
axes and coordinate transformations. Each level becomes a Dataset with one variable, ``image``,
whose dimensions are the NGFF axis names and whose space and time axes get coordinates
(``scale * index + translation``, with their unit), as the community's NGFF-to-xarray tools do.

>>> level = open_ngff_level(group, "0")            # xarray.Dataset
>>> tree = open_ngff_tree(group)                   # xarray.DataTree: one child per level
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr
from xarray.backends import BackendArray
from xarray.core import indexing

IMAGE = "image"


@dataclass(frozen=True)
class Level:
    """One resolution level: its array path and the transformation of its axes."""

    path: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]


@dataclass(frozen=True)
class Multiscale:
    """The first ``multiscales`` entry of an OME-NGFF image group."""

    axes: tuple[Mapping[str, Any], ...]
    levels: tuple[Level, ...]
    metadata: Mapping[str, Any]

    @property
    def dims(self) -> tuple[str, ...]:
        """The axis names, as dimension names."""
        return tuple(str(a["name"]) for a in self.axes)


def multiscale(group: zarr.Group) -> Multiscale | None:
    """The NGFF multiscale of ``group`` (0.4 or 0.5), or ``None`` when it is not an NGFF image."""
    attrs = dict(group.attrs)
    entries = (attrs.get("ome") or attrs).get("multiscales")
    if not entries:
        return None
    first = entries[0]
    axes = tuple(a if isinstance(a, Mapping) else {"name": a} for a in first.get("axes") or ())
    ndim = len(axes)
    top_scale, top_translation = _transforms(first.get("coordinateTransformations") or (), ndim)
    levels = []
    for dataset in first.get("datasets") or ():
        scale, translation = _transforms(dataset.get("coordinateTransformations") or (), ndim)
        levels.append(Level(
            path=str(dataset["path"]),
            scale=tuple(s * t for s, t in zip(scale, top_scale)),
            translation=tuple(t * s + u for t, s, u in zip(translation, top_scale, top_translation)),
        ))
    if not axes or not levels:
        return None
    return Multiscale(axes=axes, levels=tuple(levels), metadata=first)


def _transforms(transforms: Sequence[Mapping[str, Any]], ndim: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scale, translation = (1.0,) * ndim, (0.0,) * ndim
    for transform in transforms:
        if transform.get("type") == "scale" and "scale" in transform:
            scale = tuple(float(x) for x in transform["scale"])
        elif transform.get("type") == "translation" and "translation" in transform:
            translation = tuple(float(x) for x in transform["translation"])
    return scale, translation


class _LazyArray(BackendArray):
    """A zarr array read only where xarray indexes it."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.typing.ArrayLike:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self.array.get_orthogonal_selection
        )


def open_ngff_level(group: zarr.Group, path: str | None = None) -> xr.Dataset:
    """The Dataset of one level (default: the full resolution) of the NGFF image ``group``."""
    image = multiscale(group)
    if image is None:
        raise ValueError(f"group {group.path or '/'} is not an OME-NGFF multiscale image")
    level = next((lv for lv in image.levels if lv.path == (path or image.levels[0].path)), None)
    if level is None:
        raise KeyError(f"no level {path!r} in {group.path or '/'}; levels: {[lv.path for lv in image.levels]}")
    array = group[level.path]
    assert isinstance(array, zarr.Array)
    coords = {}
    for i, axis in enumerate(image.axes):
        if axis.get("type") in ("space", "time"):
            values = level.scale[i] * np.arange(array.shape[i]) + level.translation[i]
            coords[image.dims[i]] = xr.Variable(image.dims[i], values, {"unit": axis.get("unit")} if axis.get("unit") else {})
    variable = xr.Variable(image.dims, indexing.LazilyIndexedArray(_LazyArray(array)))
    return xr.Dataset(
        {IMAGE: variable},
        coords=coords,
        attrs={"ngff_level": level.path, "ngff_scale": list(level.scale), "ngff_translation": list(level.translation)},
    )


def open_ngff_tree(group: zarr.Group) -> xr.DataTree:
    """Every level of the NGFF image ``group``, one child node each (named by level path), with
    the ``multiscales`` metadata on the root."""
    image = multiscale(group)
    if image is None:
        raise ValueError(f"group {group.path or '/'} is not an OME-NGFF multiscale image")
    children = {lv.path: xr.DataTree(open_ngff_level(group, lv.path)) for lv in image.levels}
    return xr.DataTree(xr.Dataset(attrs={"multiscales": [dict(image.metadata)]}), children=children)

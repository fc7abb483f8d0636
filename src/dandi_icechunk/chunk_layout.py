"""Where an upload puts a Zarr's chunk references and bytes in Icechunk: manifest splits sized by
chunk size, and tiny chunks kept inside the manifests instead of one object each.

>>> config = icechunk.RepositoryConfig(
...     manifest=icechunk.ManifestConfig(splitting=manifest_splitting(hierarchy)),
...     inline_chunk_threshold_bytes=inline_chunk_max(hierarchy),
... )
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import icechunk
import numpy as np

from .hierarchy import ArrayGrid, Hierarchy

MANIFEST_TARGET_REFS = 10_000
"""Most chunk references per manifest: a 1-chunk change rewrites at most ~0.2 MB of manifest."""
MANIFEST_MIN_REFS = 1_000
"""Fewest per manifest split, for arrays of tiny chunks (a snapshot lists every split)."""
_MANIFEST_FULL_SPLIT_CHUNK_BYTES = 64 * 1024

ICECHUNK_INLINE_MAX = 512
"""Icechunk's own default: chunks of at most this many bytes are stored in the manifest."""
INLINE_MAX = 4096
"""Largest chunk ever stored in a manifest rather than as an object of its own."""
INLINE_SPLIT_BYTES = 4 * 1024 * 1024
"""Most bytes of inline chunks one manifest split may hold (a reader of one chunk fetches its
split whole), unless Icechunk's own default alone allows more."""


def manifest_refs(chunk_bytes: int) -> int:
    """Chunk references per manifest split for chunks of ``chunk_bytes`` (before compression):
    ``MANIFEST_TARGET_REFS`` from 64 KiB up, fewer for smaller chunks (down to
    ``MANIFEST_MIN_REFS``), so that the split a small change rewrites stays small next to the
    chunk bytes it changes."""
    if chunk_bytes <= 0 or chunk_bytes >= _MANIFEST_FULL_SPLIT_CHUNK_BYTES:
        return MANIFEST_TARGET_REFS
    return max(MANIFEST_MIN_REFS, MANIFEST_TARGET_REFS * chunk_bytes // _MANIFEST_FULL_SPLIT_CHUNK_BYTES)


def split_shape(grid: ArrayGrid) -> tuple[int, ...]:
    """Chunks per axis of each manifest split of ``grid``'s array (its whole grid when one
    manifest holds it): at most :func:`manifest_refs` refs, split on the leading
    (slowest-varying) axes, so a split covers a contiguous slab."""
    target = manifest_refs(grid.chunk_bytes)
    if math.prod(grid.grid) <= target:
        return grid.grid
    shape, covered = [], 1
    for n in reversed(grid.grid):
        take = min(n, max(1, target // covered))
        covered *= take
        shape.append(take)
    return tuple(reversed(shape))


def manifest_splitting(hierarchy: Hierarchy) -> icechunk.ManifestSplittingConfig:
    """Split the manifests of large arrays as :func:`split_shape` says."""
    rules: dict[Any, Any] = {}
    for node in hierarchy.nodes.values():
        if node.grid is None or (shape := split_shape(node.grid)) == node.grid.grid:
            continue
        sizes = {icechunk.ManifestSplitDimCondition.Axis(axis): take
                 for axis, (take, n) in enumerate(zip(shape, node.grid.grid, strict=True)) if take < n}
        rules[icechunk.ManifestSplitCondition.path_matches(f"^/{re.escape(node.path)}$")] = sizes
    return icechunk.ManifestSplittingConfig.from_dict(rules)


def split_bytes(hierarchy: Hierarchy, keys: Sequence[str], inline_max: int) -> np.ndarray:
    """For chunk ``keys`` in grid order (:meth:`Hierarchy.in_grid_order`) that an upload writes:
    at the first key of each manifest split, how many bytes of inline chunks that split may hold
    (the commit writes it whole; an update reads it first); 0 elsewhere. An upper bound: every
    chunk of the split inline, at its size before compression (``inline_max`` when unknown)."""
    out = np.zeros(len(keys), dtype=np.int64)
    for grid, start, end in hierarchy.array_runs(keys):
        chunk = grid.chunk_bytes or inline_max
        if chunk > inline_max:  # chunks this large before compression are seldom inline: not counted
            continue
        shape = split_shape(grid)
        coords = grid.coordinate_array(keys[start:end])
        splits = coords // np.array(shape, np.int64)
        first = np.ones(end - start, bool)  # the first key of each run of one split
        first[1:] = (splits[1:] != splits[:-1]).any(axis=1)
        out[start:end][first] = math.prod(shape) * chunk
    return out


def inline_chunk_max(hierarchy: Hierarchy) -> int:
    """The largest chunk, in bytes, an upload of ``hierarchy`` stores inside its manifest split.

    A chunk object costs a request to write and one to read, whatever its size; a kilobyte in a
    manifest costs a kilobyte. Up to :data:`INLINE_MAX` bytes a chunk goes in the manifest, as
    long as no split of the Zarr could then hold more than :data:`INLINE_SPLIT_BYTES` of them:
    arrays of tiny chunks (1,000 refs a split) take chunks of up to 4 KiB; a Zarr with an array
    of 10,000 refs a split keeps Icechunk's default, :data:`ICECHUNK_INLINE_MAX`.
    """
    refs = max((math.prod(split_shape(node.grid)) for node in hierarchy.nodes.values() if node.grid is not None),
               default=1)
    return max(ICECHUNK_INLINE_MAX, min(INLINE_MAX, INLINE_SPLIT_BYTES // max(refs, 1)))

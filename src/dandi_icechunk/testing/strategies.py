"""Hypothesis strategies for the archive's operations on a small Zarr.

>>> @given(edit=edits())
... def test(edit): ...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

SHAPE = (8, 32, 32)
CHUNKS = (4, 16, 16)


@dataclass(frozen=True)
class Edit:
    """Fill one chunk (by its grid position) with ``value``; ``value`` 0 leaves it all fill value."""

    chunk: tuple[int, int, int]
    value: int

    def apply(self, data: np.ndarray) -> None:
        """Apply the edit to ``data`` (the whole array) in place."""
        data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(self.chunk, CHUNKS))] = self.value


def edits() -> st.SearchStrategy[Edit]:
    """A one-chunk edit of the test array."""
    grid = [s // c for s, c in zip(SHAPE, CHUNKS)]
    return st.builds(
        Edit,
        chunk=st.tuples(*(st.integers(0, n - 1) for n in grid)),
        value=st.integers(0, 4095),
    )


dandisets = st.sampled_from(["000101", "000202"])
"""The two Dandisets that share the Zarr."""

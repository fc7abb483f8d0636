"""The bulk key checks of a hierarchy (a block or an array's keys matched at once) give what the
key-by-key checks give, on random hierarchies and keys, including the awkward ones."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dandi_icechunk.errors import InvalidZarrError
from dandi_icechunk.hierarchy import (
    Hierarchy,
    _below,
    check_key,
    check_keys,
    documents_among,
    is_document,
)


@given(st.integers(0, 100_000), st.integers(0, 300_000))
def test_below_matches_exactly_the_numbers_under_its_bound(n: int, k: int) -> None:
    pattern = re.compile(_below(n))
    assert bool(pattern.fullmatch(str(k))) == (k < n)
    assert not pattern.fullmatch("0" + str(k))  # no leading zeros


def _v2_hierarchy(arrays: dict[str, tuple[tuple[int, ...], str]]) -> Hierarchy:
    documents = {".zgroup": json.dumps({"zarr_format": 2}).encode()}
    for path, (grid, separator) in arrays.items():
        documents[f"{path}/.zarray" if path else ".zarray"] = json.dumps({
            "zarr_format": 2, "shape": list(grid), "chunks": [1] * len(grid), "dtype": "<u2",
            "compressor": None, "fill_value": 0, "filters": None, "order": "C",
            "dimension_separator": separator,
        }).encode()
    if "" in arrays:
        del documents[".zgroup"]
    return Hierarchy.from_documents(documents)


_names = st.sampled_from(["0", "1", "scale0", "labels", "a.b", "a-b"])
_arrays = st.dictionaries(
    st.lists(_names, min_size=0, max_size=2).map("/".join),
    st.tuples(st.lists(st.integers(0, 12), min_size=0, max_size=3).map(tuple), st.sampled_from(["/", "."])),
    min_size=1, max_size=4,
).filter(lambda arrays: not any(b.startswith(a + "/") or (not a and b) for a in arrays for b in arrays))
# (an array holds no other node)
_parts = st.sampled_from(["0", "1", "7", "11", "12", "01", "c", "x", ".DS_Store", "1\n2", "0.1", "3.2.1"])


@settings(max_examples=300, deadline=None)
@given(_arrays, st.lists(st.tuples(st.one_of(st.just(""), _names), st.lists(_parts, min_size=1, max_size=4)), max_size=40))
def test_strays_are_the_keys_that_map_to_no_chunk(arrays: dict, picks: list) -> None:
    hierarchy = _v2_hierarchy(arrays)
    keys = sorted({"/".join([p for p in [base, *parts] if p]) for base, parts in picks})
    assert hierarchy.strays(keys) == [k for k in keys if hierarchy.icechunk_key(k) is None]


@pytest.mark.parametrize("separator", ["/", "."])
def test_strays_of_a_whole_grid_are_none_and_out_of_bounds_keys_are(separator: str) -> None:
    hierarchy = _v2_hierarchy({"0": ((30, 7), separator), "labels/a": ((4,), "/")})
    chunks = [f"0/{i}{separator}{j}" for i in range(30) for j in range(7)] + [f"labels/a/{i}" for i in range(4)]
    extra = ["0/30" + separator + "0", "0/1" + separator + "07", "labels/a/4", "OME/METADATA.ome.xml"]
    keys = sorted(chunks + extra)
    assert hierarchy.strays(keys) == sorted(extra)
    assert hierarchy.partition(keys) == (sorted(chunks), sorted(extra))


_key_text = st.lists(st.sampled_from([*"ab_./\n:*0", "\x00", ".zarray", "zarr.json", "__"]), max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_key_text, max_size=30))
def test_check_keys_refuses_what_check_key_refuses_naming_the_first_bad_key(keys: list[str]) -> None:
    first_error = None
    for key in keys:
        try:
            check_key(key)
        except InvalidZarrError as exc:
            first_error = str(exc)
            break
    if first_error is None:
        check_keys(keys)
        good = [k for k in keys if "\n" not in k]
        assert documents_among(good) == [k for k in good if is_document(k)]
    else:
        with pytest.raises(InvalidZarrError) as raised:
            check_keys(keys)
        assert str(raised.value) == first_error


def _v3_hierarchy(arrays: dict[str, tuple[tuple[int, ...], str]]) -> Hierarchy:
    documents = {} if "" in arrays else {"zarr.json": json.dumps({"zarr_format": 3, "node_type": "group"}).encode()}
    for path, (grid, separator) in arrays.items():
        documents[f"{path}/zarr.json" if path else "zarr.json"] = json.dumps({
            "zarr_format": 3, "node_type": "array", "shape": list(grid), "data_type": "uint16",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1] * len(grid)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": separator}},
            "fill_value": 0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        }).encode()
    return Hierarchy.from_documents(documents)


@settings(max_examples=200, deadline=None)
@given(_arrays, st.booleans(), st.data())
def test_grid_order_and_icechunk_keys_in_bulk_are_those_of_each_key(arrays: dict, v3: bool, data: st.DataObject) -> None:
    """Chunks put in grid order array by array (C order of each grid), with their Icechunk keys
    spelled out at once, as each key's own parse gives them."""
    hierarchy = (_v3_hierarchy if v3 else _v2_hierarchy)(arrays)
    grids = [node.grid for node in hierarchy.nodes.values() if node.grid is not None and all(hierarchy.nodes[node.path].grid.grid)]
    every = []
    for grid in grids:
        prefix = grid.path + "/" if grid.path else ""
        head = f"c{grid.separator}" if grid.v3_prefix else ""
        for coords in itertools.product(*(range(n) for n in grid.grid)):
            every.append(prefix + (head + grid.separator.join(map(str, coords)) if coords else ("c" if grid.v3_prefix else "0")))
    keys = data.draw(st.permutations(every)) if every else []

    def reference(key: str) -> tuple:
        grid = hierarchy.array_of(key)
        relative = key[len(grid.path) + 1:] if grid.path else key
        return grid.path, tuple(int(c) for c in hierarchy.icechunk_key(key).rsplit("/c", 1)[-1].split("/")[1:]), relative

    ordered = hierarchy.in_grid_order(keys)
    assert ordered == sorted(keys, key=reference)
    for grid, start, end in hierarchy.array_runs(ordered):
        run = ordered[start:end]
        assert all(hierarchy.array_of(k) is grid for k in run)
        assert grid.icechunk_keys(run) == [hierarchy.icechunk_key(k) for k in run]

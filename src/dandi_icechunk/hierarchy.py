"""The Zarr hierarchy described by a set of metadata documents, and how it maps onto Icechunk.

Icechunk stores only Zarr v3 metadata and only v3 default chunk keys (``<array>/c/0/1``).
DANDI's Zarrs are mostly Zarr v2 (``.zarray``/``.zgroup``/``.zattrs``, chunk keys ``0.1`` or
``0/1``). A :class:`Hierarchy` is built from the documents exactly as uploaded; it gives

* the v3 ``zarr.json`` Icechunk stores for each node (v2 arrays converted with the same codecs,
  so the chunk bytes are stored unchanged), and
* the Icechunk key of every logical chunk key, and the check that a key is a chunk at all.

The original documents are kept verbatim in the digest index, so the exact uploaded files can
be given back. See ``docs/zarr-v2-in-icechunk.md``.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import operator
import posixpath
import re
import warnings
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import zarr

from .errors import InvalidZarrError

V2_DOCUMENTS = frozenset({".zarray", ".zgroup", ".zattrs", ".zmetadata"})
V3_DOCUMENTS = frozenset({"zarr.json"})
DOCUMENT_NAMES = V2_DOCUMENTS | V3_DOCUMENTS
_GROUP_V3 = {"zarr_format": 3, "node_type": "group"}
_BAD_CHARACTER = re.compile(r'[\x00-\x1f\\:*?"<>|]')


def is_document(key: str) -> bool:
    """Whether ``key`` names a Zarr metadata document (as opposed to a chunk)."""
    return key.rpartition("/")[2] in DOCUMENT_NAMES


def node_key(path: str) -> str:
    """The key of the ``zarr.json`` Icechunk stores for the node at ``path`` ("" is the root)."""
    return f"{path}/zarr.json" if path else "zarr.json"


def check_key(key: str) -> None:
    """Raise :class:`InvalidZarrError` unless ``key`` is a valid Zarr store key."""
    for part in key.split("/"):
        if part in ("", ".", "..") or part.startswith("__") or _BAD_CHARACTER.search(part):
            raise InvalidZarrError(
                f"{key!r} is not a valid Zarr key (path parts must be non-empty, not '.' or '..', "
                "not start with '__', and hold no control characters or any of \\:*?\"<>|); "
                "rename or remove it"
            )


_DOCUMENT = re.compile(r"^(?:.*/)?(?:\.zarray|\.zgroup|\.zattrs|\.zmetadata|zarr\.json)$", re.MULTILINE)
_REFUSED_PARTS = ("\n\n", "\n.\n", "\n..\n", "\n__")
_BLOCK = 4096


def check_keys(keys: Iterable[str]) -> None:
    """:func:`check_key` of every key of ``keys``, a block of keys matched at once."""
    for block in itertools.batched(keys, _BLOCK):
        parts = "\n" + "\n".join(block).replace("/", "\n") + "\n"  # each key's parts between newlines
        if _BAD_CHARACTER.search("".join(block)) or any(p in parts for p in _REFUSED_PARTS):
            for key in block:
                check_key(key)


def documents_among(keys: Iterable[str]) -> list[str]:
    """The keys among ``keys`` (each checked by :func:`check_keys`: no newline in them) that
    :func:`is_document` accepts, in order: a block of keys matched at once."""
    return [key for block in itertools.batched(keys, _BLOCK) for key in _DOCUMENT.findall("\n".join(block))]


@dataclass(frozen=True)
class ArrayGrid:
    """How the chunk keys of one array are spelled, and how many chunks it has per dimension."""

    path: str
    grid: tuple[int, ...]
    separator: str
    v3_prefix: bool  # v3 default encoding spells keys "c/0/1"; v2 encoding spells them "0/1"
    chunk_bytes: int = 0  # bytes of one chunk (or shard) before compression; 0 when unknown

    def icechunk_key(self, relative: str) -> str | None:
        """The Icechunk key of chunk ``relative`` (key under the array), or ``None`` if not a chunk."""
        coords = self._coordinates(relative)
        if coords is None:
            return None
        prefix = f"{self.path}/c" if self.path else "c"
        return f"{prefix}/{'/'.join(coords)}" if coords else prefix

    def key_pattern(self) -> re.Pattern[str]:
        """The keys of this array's chunks (path included), spelled out with their bounds, one
        key a line."""
        sep = re.escape(self.separator)
        coords = sep.join(f"(?:{_below(n)})" for n in self.grid)
        if self.v3_prefix:
            relative = f"c{sep}{coords}" if self.grid else "c"
        else:
            relative = coords if self.grid else "0"
        prefix = re.escape(self.path + "/") if self.path else ""
        return re.compile(f"^{prefix}{relative}$", re.MULTILINE)

    @property
    def key_prefix(self) -> str:
        """What the keys of this array's chunks start with (from the Zarr root)."""
        return self.path + "/" if self.path else ""

    def icechunk_keys(self, keys: Sequence[str]) -> list[str]:
        """The Icechunk key of each of the chunks ``keys`` (each a chunk of this array), spelled
        out without parsing them again."""
        prefix = f"{self.path}/c" if self.path else "c"
        if not self.grid:
            return [prefix] * len(keys)
        skip = len(self.key_prefix) + (2 if self.v3_prefix else 0)  # and v3's "c" with its separator
        coords = [k[skip:] for k in keys]
        if self.separator != "/":
            coords = [c.replace(self.separator, "/") for c in coords]
        return [f"{prefix}/{c}" for c in coords]

    def coordinate_array(self, keys: Sequence[str]) -> np.ndarray:
        """The grid coordinates of the chunks ``keys`` (each a chunk of this array), a row each:
        a block's numbers read at once."""
        skip = len(self.key_prefix)
        out = np.empty((len(keys), len(self.grid)), np.int64)
        for start in range(0, len(keys) if self.grid else 0, _BLOCK):
            block = keys[start : start + _BLOCK]
            numbers = re.findall(r"[0-9]+", "\n".join(k[skip:] for k in block))
            assert len(numbers) == len(block) * len(self.grid), f"not all of {block[:3]}... are chunks of {self.path!r}"
            out[start : start + len(block)] = np.fromiter(map(int, numbers), np.int64, len(numbers)).reshape(len(block), -1)
        return out

    def _coordinates(self, relative: str) -> list[str] | None:
        if self.v3_prefix:
            if relative == "c" and not self.grid:
                coords: list[str] = []
            elif relative.startswith("c" + self.separator):
                coords = relative[2:].split(self.separator)
            else:
                return None
        else:
            coords = [] if relative == "0" and not self.grid else relative.split(self.separator)
        if len(coords) != len(self.grid):
            return None
        for c, n in zip(coords, self.grid):
            # 0|[1-9][0-9]*, spelled out: a regex per coordinate was a third of a 1 % update's scan
            if not (c.isdigit() and c.isascii() and (c[0] != "0" or c == "0")) or int(c) >= n:
                return None
        return coords


@dataclass(frozen=True)
class Node:
    """One group or array: its path ("" for the root) and the v3 document Icechunk stores."""

    path: str
    node_type: Literal["group", "array"]
    icechunk_document: bytes
    grid: ArrayGrid | None = None


@dataclass(frozen=True)
class Hierarchy:
    """The nodes described by a Zarr's metadata documents (keys relative to the Zarr root)."""

    zarr_format: Literal[2, 3]
    nodes: Mapping[str, Node]
    # directory -> the array its files would be chunks of: a Zarr has thousands of chunks a directory
    _arrays: dict[str, ArrayGrid | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_documents(cls, documents: Mapping[str, bytes]) -> Hierarchy:
        """Build the hierarchy of the metadata documents among ``documents`` (key -> bytes),
        validating every one; other files kept verbatim beside them are not part of it."""
        documents = {k: v for k, v in documents.items() if is_document(k)}
        names = {posixpath.basename(k) for k in documents}
        has_v2, has_v3 = bool(names & V2_DOCUMENTS), bool(names & V3_DOCUMENTS)
        if has_v2 and has_v3:
            v3 = sorted(k for k in documents if posixpath.basename(k) in V3_DOCUMENTS)
            v2 = sorted(k for k in documents if posixpath.basename(k) in V2_DOCUMENTS)
            raise InvalidZarrError(
                f"mixed Zarr v2 and v3 metadata ({v2[0]} and {v3[0]}): a Zarr must be one format; "
                "convert it fully (or remove the stale metadata files) and run again"
            )
        if not (".zgroup" in documents or ".zarray" in documents or "zarr.json" in documents):
            raise InvalidZarrError(
                "no Zarr metadata at the top of the directory (.zgroup or .zarray for Zarr v2, "
                "zarr.json for Zarr v3): this is not a Zarr"
            )
        parsed = {key: _parse_json(key, data) for key, data in documents.items()}
        if has_v3:
            nodes = _v3_nodes(parsed)
            fmt: Literal[2, 3] = 3
        else:
            nodes = _v2_nodes(parsed)
            fmt = 2
        _add_implicit_groups(nodes)
        return cls(zarr_format=fmt, nodes=nodes)

    def array_of(self, key: str) -> ArrayGrid | None:
        """The array whose chunk ``key`` would be (nearest array above it), if any."""
        directory = key.rpartition("/")[0]
        if directory in self._arrays:
            return self._arrays[directory]
        parent = directory
        while True:
            node = self.nodes.get(parent)
            if node is not None and node.grid is not None:
                grid = node.grid
                break
            if not parent:
                grid = None
                break
            parent = posixpath.dirname(parent)
        self._arrays[directory] = grid
        return grid

    def icechunk_key(self, key: str) -> str | None:
        """The Icechunk key of chunk ``key``, or ``None`` when ``key`` is not a chunk of an array."""
        grid = self.array_of(key)
        if grid is None:
            return None
        return grid.icechunk_key(key[len(grid.key_prefix) :])

    def in_grid_order(self, keys: Sequence[str]) -> list[str]:
        """The chunk keys ``keys``, array by array, each array's in C order of its grid."""
        return list(map(keys.__getitem__, self.grid_order(keys).tolist()))

    def array_runs(self, keys: Sequence[str]) -> Iterator[tuple[ArrayGrid, int, int]]:
        """For chunk ``keys`` array by array (as :meth:`in_grid_order` gives them): each array
        with where its keys start and end."""
        start = 0
        while start < len(keys):
            grid = self.array_of(keys[start])
            assert grid is not None, f"{keys[start]} is no chunk"
            # no array holds another: its keys are those that start with its prefix
            end = start + sum(1 for _ in itertools.takewhile(operator.methodcaller("startswith", grid.key_prefix),
                                                              itertools.islice(keys, start, None)))
            yield grid, start, end
            start = end

    def grid_order(self, keys: Sequence[str]) -> np.ndarray:
        """Where each key of :meth:`in_grid_order` is among the chunk keys ``keys``."""
        by_array: dict[str, array[int]] = {}  # packed: no int object per key (1.3 M of them)
        for i, key in enumerate(keys):
            grid = self.array_of(key)
            assert grid is not None, f"{key} is no chunk"
            by_array.setdefault(grid.path, array("q")).append(i)
        order = [np.empty(0, np.int64)]
        for path in sorted(by_array):
            grid = self.nodes[path].grid
            assert grid is not None
            positions = by_array.pop(path)
            coords = grid.coordinate_array([keys[i] for i in positions])
            at = np.frombuffer(positions, np.int64)
            order.append(at[np.lexsort(coords.T[::-1])] if grid.grid else at)  # first coordinate first: C order
        return np.concatenate(order)

    def strays(self, keys: Sequence[str]) -> list[str]:
        """The keys among ``keys`` (sorted, each once) that are no chunk of any array, in order:
        what :meth:`icechunk_key` gives ``None`` for, matched an array's keys at a time."""
        # no array holds another node (from_documents refuses it): their keys' ranges are apart
        grids = sorted((node.grid for node in self.nodes.values() if node.grid is not None),
                       key=operator.attrgetter("key_prefix"))  # in this order, so are their ranges
        stray: list[str] = []
        done = 0
        for grid in grids:
            if grid.path:
                start = bisect.bisect_left(keys, grid.key_prefix, done)
                end = bisect.bisect_left(keys, grid.path + "0", start)  # "0" follows "/"
            else:
                start, end = done, len(keys)
            stray += keys[done:start]
            stray += _strays_of(grid, keys[start:end])
            done = end
        stray += keys[done:]
        return stray

    def partition(self, keys: Iterable[str]) -> tuple[list[str], list[str]]:
        """``keys``, sorted, parted into the chunks of arrays and the keys that are no chunk of
        any array (files such as ``OME/METADATA.ome.xml``)."""
        ordered = sorted(keys)
        stray = self.strays(ordered)
        if stray:
            excluded = set(stray)
            ordered = [k for k in ordered if k not in excluded]
        return ordered, stray

    def chunk_keys(self, keys: Iterable[str]) -> tuple[dict[str, str], list[str]]:
        """Map every chunk key among ``keys`` to its Icechunk key; also return, sorted, the keys
        that are no chunk of any array."""
        chunks, stray = self.partition(keys)
        return {key: self.icechunk_key(key) for key in chunks}, stray  # type: ignore[misc]


def _strays_of(grid: ArrayGrid, keys: Sequence[str]) -> list[str]:
    """The keys among ``keys`` (all under ``grid``'s array) that are no chunk of it."""
    if not keys:
        return []
    text = "\n".join(keys)
    if text.count("\n") == len(keys) - 1 and grid.key_pattern().subn("", text)[1] == len(keys):
        return []  # every key a line, every line a chunk's key
    return [k for k in keys if grid.icechunk_key(k[len(grid.key_prefix) :]) is None]


def _below(n: int) -> str:
    """A regular expression of the decimal numbers from 0 to ``n - 1`` (no leading zeros).

    >>> import re; [k for k in range(300) if re.fullmatch(_below(120), str(k))] == list(range(120))
    True
    """
    if n <= 0:
        return "(?!)"
    top = str(n - 1)
    shorter = ["0", f"[1-9][0-9]{{0,{len(top) - 2}}}"] if len(top) > 1 else []
    same_length = [  # as long as n - 1: its first i digits, then a smaller one (no leading zero), then any
        f"{top[:i]}[{low}-{int(d) - 1}][0-9]{{{len(top) - i - 1}}}"
        for i, d in enumerate(top)
        if int(d) > (low := 1 if i == 0 and len(top) > 1 else 0)
    ]
    return "|".join([*shorter, *same_length, top])


def _parse_json(key: str, data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidZarrError(f"{key} is not valid JSON ({exc}); fix or regenerate it") from None
    if not isinstance(value, dict):
        raise InvalidZarrError(f"{key} must hold a JSON object, not {type(value).__name__}")
    return value


def _encode(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _grid(path: str, shape: Any, chunks: Any, separator: str, v3_prefix: bool, itemsize: int) -> ArrayGrid:
    return ArrayGrid(
        path=path,
        grid=tuple(math.ceil(s / c) if c else 0 for s, c in zip(shape, chunks)),
        separator=separator,
        v3_prefix=v3_prefix,
        chunk_bytes=math.prod(chunks) * itemsize,
    )


def _v2_array_as_v3(zarray: Mapping[str, Any], attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The v3 metadata of a v2 array, as zarr-python's own migration writes it (same codecs)."""
    from zarr.buffer import cpu
    from zarr.metadata.migrate_v3 import migrate_v2_to_v3
    from zarr.storage import MemoryStore

    if zarray.get("fill_value") is None:  # v2 allows none; v3 needs one: the dtype's zero
        zarray = {**zarray, "fill_value": np.zeros((), dtype=np.dtype(zarray["dtype"])).item()}
    source = {
        ".zarray": cpu.Buffer.from_bytes(json.dumps(zarray).encode()),
        ".zattrs": cpu.Buffer.from_bytes(json.dumps(attributes).encode()),
    }
    target: dict[str, Any] = {}
    migrate_v2_to_v3(input_store=MemoryStore(source), output_store=MemoryStore(target))
    return dict(json.loads(target["zarr.json"].to_bytes()))


def _v2_nodes(parsed: Mapping[str, dict[str, Any]]) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    ngff_dims = _ngff_dimension_names(parsed)
    dirs = {posixpath.dirname(k) for k in parsed}
    for path in sorted(dirs):
        def doc(name: str) -> dict[str, Any] | None:
            return parsed.get(posixpath.join(path, name) if path else name)

        zarray, zgroup, zattrs = doc(".zarray"), doc(".zgroup"), doc(".zattrs")
        where = path or "the top level"
        if zarray is not None and zgroup is not None:
            raise InvalidZarrError(f"{where} has both .zarray and .zgroup; keep the right one")
        attributes = zattrs or {}
        if zgroup is not None:
            _check_format(zgroup, 2, f"{path}/.zgroup".lstrip("/"))
            nodes[path] = Node(path, "group", _encode({**_GROUP_V3, "attributes": attributes}))
        elif zarray is not None:
            name = f"{path}/.zarray".lstrip("/")
            _check_format(zarray, 2, name)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    v3 = _v2_array_as_v3(zarray, attributes)
                shape, chunks = tuple(zarray["shape"]), tuple(zarray["chunks"])
            except Exception as exc:  # zarr raises many types for unusable metadata
                raise InvalidZarrError(
                    f"{name} cannot be stored as Zarr v3 without loss: {exc}"
                ) from None
            v3["chunk_key_encoding"] = {"name": "default", "configuration": {"separator": "/"}}
            dims = attributes.get("_ARRAY_DIMENSIONS") or ngff_dims.get(path)
            if _valid_dimension_names(dims, len(shape)):
                v3["dimension_names"] = dims
            separator = zarray.get("dimension_separator") or "."
            nodes[path] = Node(
                path, "array", _encode(v3),
                _grid(path, shape, chunks, separator, False, np.dtype(zarray["dtype"]).itemsize),
            )
        elif zattrs is not None or doc(".zmetadata") is not None:
            raise InvalidZarrError(
                f"{where} has .zattrs or .zmetadata but neither .zarray nor .zgroup; "
                "add the missing .zgroup/.zarray or remove the stray file"
            )
    return nodes


def _ngff_dimension_names(parsed: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Array path -> axis names, from OME-NGFF ``multiscales`` metadata (0.3: strings, 0.4: dicts).

    Zarr v2 has no dimension names; giving the v3 metadata Icechunk stores the NGFF axis names
    lets xarray open the arrays. The uploaded ``.zarray`` is kept unchanged.
    """
    names: dict[str, Any] = {}
    for key, document in parsed.items():
        if posixpath.basename(key) != ".zattrs":
            continue
        group = posixpath.dirname(key)
        multiscales = document.get("multiscales")
        for scale in multiscales if isinstance(multiscales, list) else []:
            if not isinstance(scale, dict):
                continue
            axes = [a.get("name") if isinstance(a, dict) else a for a in scale.get("axes") or []]
            for dataset in scale.get("datasets") or []:
                if isinstance(dataset, dict) and isinstance(dataset.get("path"), str):
                    names[posixpath.join(group, dataset["path"]) if group else dataset["path"]] = axes
    return names


def _valid_dimension_names(names: Any, ndim: int) -> bool:
    return (
        isinstance(names, list)
        and len(names) == ndim
        and all(isinstance(n, str) for n in names)
        and len(set(names)) == ndim
    )


def _v3_nodes(parsed: Mapping[str, dict[str, Any]]) -> dict[str, Node]:
    from zarr.buffer import cpu
    from zarr.storage import MemoryStore

    nodes: dict[str, Node] = {}
    for key, document in parsed.items():
        path = posixpath.dirname(key)
        _check_format(document, 3, key)
        node_type = document.get("node_type")
        if node_type == "group":
            group = {k: v for k, v in document.items() if k != "consolidated_metadata"}
            nodes[path] = Node(path, "group", _encode(group))
            continue
        if node_type != "array":
            raise InvalidZarrError(f"{key}: node_type must be 'group' or 'array', not {node_type!r}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                store = MemoryStore({"zarr.json": cpu.Buffer.from_bytes(json.dumps(document).encode())})
                opened = zarr.open_array(store, mode="r")  # zarr-python validates it
                shape, itemsize = opened.shape, opened.dtype.itemsize
        except Exception as exc:  # zarr raises many types for unusable metadata
            raise InvalidZarrError(f"{key} is not valid Zarr v3 array metadata: {exc}") from None
        encoding = document.get("chunk_key_encoding") or {"name": "default"}
        separator = (encoding.get("configuration") or {}).get("separator", "/")
        grid_doc = document.get("chunk_grid") or {}
        chunk_shape = (grid_doc.get("configuration") or {}).get("chunk_shape")
        if grid_doc.get("name") != "regular" or chunk_shape is None:
            raise InvalidZarrError(f"{key}: only regular chunk grids are supported")
        array = dict(document)
        array["chunk_key_encoding"] = {"name": "default", "configuration": {"separator": "/"}}
        grid = _grid(path, shape, tuple(chunk_shape), separator, encoding.get("name") == "default", itemsize)
        nodes[path] = Node(path, "array", _encode(array), grid)
    return nodes


def _check_format(document: Mapping[str, Any], expected: int, key: str) -> None:
    if document.get("zarr_format") != expected:
        raise InvalidZarrError(
            f"{key}: zarr_format is {document.get('zarr_format')!r}, expected {expected}"
        )


def _add_implicit_groups(nodes: dict[str, Node]) -> None:
    for path in list(nodes):
        if not path and nodes[path].node_type == "array":
            continue
        parent = posixpath.dirname(path) if path else None
        while parent is not None:
            existing = nodes.get(parent)
            if existing is not None and existing.node_type == "array":
                raise InvalidZarrError(
                    f"{path!r} is inside array {parent or '(top level)'!r}; "
                    "arrays cannot contain other nodes"
                )
            if existing is None:
                nodes[parent] = Node(parent, "group", _encode(_GROUP_V3))
            parent = posixpath.dirname(parent) if parent else None

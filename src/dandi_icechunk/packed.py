"""Mappings of many string keys to a few integers each, packed: the uploader's per-file state.

A dict of one small object per file costs 150-300 bytes a file (200-400 MB at DANDI's
1.3 M-file Zarr); keys in one sorted list with the integers in machine-integer arrays beside
them cost the key and a few words (`docs/upload-memory.md`). Keys may be added in any order;
the sort is done once, lazily, under a lock (threads may add and read at once). Only the keys
from the first one out of order on are sorted, then merged into those before: the few changed
files of an update, added to its 1.3 M unchanged ones, cost a bisection each.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import threading
from abc import abstractmethod
from array import array
from collections.abc import (
    Buffer,
    Collection,
    ItemsView,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    ValuesView,
)
from typing import Any, ClassVar, Self

import numpy as np

_BATCH = 4096
_LOW_64 = (1 << 64) - 1
_first, _second = operator.itemgetter(0), operator.itemgetter(1)


class PackedMapping[V](Mapping[str, V]):
    """Key -> value, each value stored as one integer per column (``_typecodes``, one array
    typecode a column); read in sorted key order. Subclasses say how a value packs."""

    __slots__ = ("_columns", "_keys", "_lock", "_unsorted_from")
    _typecodes: ClassVar[str]

    def __init__(self, entries: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        self._keys: list[str] = []
        self._columns = tuple(array(code) for code in self._typecodes)
        self._unsorted_from: int | None = None  # the keys before it are sorted; None: all are
        self._lock = threading.Lock()
        self._add(entries)

    @classmethod
    def from_columns(
        cls, keys: list[str], columns: Iterable[Buffer], *, taken_from: PackedMapping[Any] | None = None,
        copy: bool = True,
    ) -> Self:
        """The mapping whose sorted ``keys`` (each once) have the native-order integers of
        ``columns`` (one buffer a column, as :meth:`columns` gives them): a bulk load.
        ``copy=False``: ``columns`` are arrays of the columns' types, taken over (the caller lets
        go of them), not copied.
        ``taken_from``: a mapping whose keys ``keys`` were taken from, in order; they are then not
        compared again (0.1 s at 1.3 M keys)."""
        packed = cls()
        if taken_from is None and not all(map(operator.lt, keys, keys[1:])):
            raise ValueError("keys are not sorted, or one is there twice")
        packed._keys = keys
        if copy:
            for column, data in zip(packed._columns, columns, strict=True):
                column.frombytes(memoryview(data).cast("B"))  # an array of "Q" is no bytes-like object
        else:
            packed._columns = tuple(columns)  # type: ignore[arg-type]
            if [c.typecode for c in packed._columns] != list(cls._typecodes):
                raise ValueError(f"columns of {[c.typecode for c in packed._columns]}, not {cls._typecodes}")
        if any(len(column) != len(keys) for column in packed._columns):
            raise ValueError(f"{len(keys)} keys, columns of {[len(c) for c in packed._columns]}")
        return packed

    def columns(self) -> tuple[array, ...]:
        """The values' integers, one array a column, in key order: a bulk read (do not change them)."""
        self._in_order()
        return self._columns

    def stretches(self, spans: Iterable[tuple[int, int]]) -> Self:
        """The mapping of the rows from ``start`` to ``stop`` (positions in key order) of each of
        ``spans``, these in order and apart: copied a stretch at a time, no value unpacked."""
        spans = list(spans)
        keys = self._in_order()
        picked = list(itertools.chain.from_iterable(keys[start:stop] for start, stop in spans))
        kept = [(start - 1, stop) for start, stop in spans]  # as _joined takes them: after the first
        return type(self).from_columns(picked, [_joined(c, kept) for c in self._columns], taken_from=self, copy=False)

    def sorted_keys(self) -> list[str]:
        """The keys in sorted order, as held: a bulk read by position (do not change it)."""
        return self._in_order()

    @staticmethod
    @abstractmethod
    def _pack(value: V) -> tuple[int, ...]: ...

    @staticmethod
    @abstractmethod
    def _unpack(row: tuple[int, ...]) -> V: ...

    def _add(self, entries: Mapping[str, V] | Iterable[tuple[str, V]]) -> None:
        items = iter(entries.items() if isinstance(entries, Mapping) else entries)
        while batch := list(itertools.islice(items, _BATCH)):  # each column extended in C
            keys = list(map(_first, batch))
            rows = list(map(self._pack, map(_second, batch)))
            increasing = all(map(operator.lt, keys, keys[1:]))
            with self._lock:
                self._note_order(keys[0], increasing)
                self._keys += keys
                for i, column in enumerate(self._columns):
                    column.extend(map(operator.itemgetter(i), rows))

    def _append(self, key: str, value: V) -> None:
        row = self._pack(value)  # one key without a batch's lists: 1.7x quicker a key
        with self._lock:
            self._note_order(key, True)
            self._keys.append(key)
            for column, number in zip(self._columns, row, strict=True):
                column.append(number)

    def _note_order(self, first: str, increasing: bool) -> None:
        """Before keys starting at ``first`` (``increasing``: each greater than the one before)
        are appended, under the lock: still sorted only if they come after the last key."""
        if self._unsorted_from is None and not (increasing and (not self._keys or self._keys[-1] < first)):
            self._unsorted_from = len(self._keys)

    def _in_order(self) -> list[str]:
        with self._lock:
            if self._unsorted_from is not None:
                self._merge_rest(self._unsorted_from)
                self._unsorted_from = None
            return self._keys

    def _merge_rest(self, sorted_up_to: int) -> None:
        """Sort the keys from ``sorted_up_to`` on and put each in its place among those before
        it (sorted already), found by bisection: the sorted keys are copied in runs, not
        compared again. When most keys are out of order, all are sorted and none merged."""
        keys = self._keys
        if len(keys) - sorted_up_to > sorted_up_to:
            sorted_up_to = 0
        rest = sorted(range(sorted_up_to, len(keys)), key=keys.__getitem__)
        rest_keys = list(map(keys.__getitem__, rest))
        at = np.array(rest, dtype=np.intp)
        del rest  # an int object a key: the peak of a sort of 1.3 M keys
        if any(map(operator.eq, rest_keys, itertools.islice(rest_keys, 1, None))):
            raise ValueError("a key was added twice")
        places: list[int] = []
        merged = rest_keys
        if sorted_up_to:
            places = [bisect.bisect_left(keys, key, 0, sorted_up_to) for key in rest_keys]
            if any(place < sorted_up_to and keys[place] == key for place, key in zip(places, rest_keys, strict=True)):
                raise ValueError("a key was added twice")
            merged, done = [], 0
            for place, key in zip(places, rest_keys, strict=True):
                merged += keys[done:place]
                merged.append(key)
                done = place
            merged += keys[done:sorted_up_to]
        self._keys = merged
        self._columns = tuple(
            array(column.typecode, (np.insert(values[:sorted_up_to], places, values[at]) if places else values[at]).tobytes())
            for column in self._columns
            for values in (np.frombuffer(column, column.typecode),)
        )

    def _position(self, key: object) -> int:
        keys = self._in_order()
        i = bisect.bisect_left(keys, key)  # type: ignore[call-overload]
        return i if i < len(keys) and keys[i] == key else -1

    def _row(self, key: str) -> tuple[int, ...]:
        if (i := self._position(key)) < 0:
            raise KeyError(key)
        return tuple(column[i] for column in self._columns)

    def __getitem__(self, key: str) -> V:
        return self._unpack(self._row(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._position(key) >= 0

    def __iter__(self) -> Iterator[str]:
        return iter(self._in_order())

    def __len__(self) -> int:
        return len(self._keys)

    def items(self) -> ItemsView[str, V]:
        return _Items(self)

    def values(self) -> ValuesView[V]:
        return _Values(self)

    def _remove(self, keys: Collection[str]) -> None:
        """Drop ``keys`` (each here): found by bisection, the rest kept a slice at a time."""
        gone = sorted(map(self._position, set(keys)))
        if gone and gone[0] < 0:
            raise KeyError(f"{gone.count(-1)} of {len(keys)} keys to remove are not here")
        if not gone:
            return
        with self._lock:
            spans = list(zip([-1, *gone], [*gone, len(self._keys)], strict=True))
            self._keys = list(itertools.chain.from_iterable(self._keys[a + 1 : b] for a, b in spans))
            self._columns = tuple(_joined(column, spans) for column in self._columns)

    def _rows(self) -> Iterator[V]:
        self._in_order()
        return map(self._unpack, zip(*self._columns, strict=True))


def _joined(column: array, spans: list[tuple[int, int]]) -> array:
    kept = array(column.typecode)
    for a, b in spans:
        kept.extend(column[a + 1 : b])
    return kept


def split_md5(md5: str) -> tuple[int, int]:
    """An MD5 in hex as the two 64-bit integers a packed mapping keeps: high, low."""
    if len(md5) != 32:
        raise ValueError(f"not an MD5: {md5!r}")
    number = int(md5, 16)
    return number >> 64, number & _LOW_64


def joined_md5(high: int, low: int) -> str:
    """The MD5 in hex of the integers :func:`split_md5` gave."""
    return ((high << 64) | low).to_bytes(16).hex()


def md5s_in_hex(high: np.ndarray | Sequence[int], low: np.ndarray | Sequence[int]) -> list[str]:
    """The MD5 in hex of each pair of integers of the columns ``high`` and ``low``, all at once
    (a block of a packed mapping's columns): no integer object made for either half."""
    md5s = np.empty((len(high), 2), ">u8")  # big-endian: the MD5's bytes in order
    md5s[:, 0], md5s[:, 1] = high, low
    text = md5s.tobytes().hex()
    return [text[i : i + 32] for i in range(0, len(text), 32)]


def key_blocks(keys: Iterable[str]) -> Iterator[bytes]:
    """The keys ``\\0``-separated and UTF-8 encoded, a block at a time: their bytes joined are
    ``"\\0".join(keys).encode()``, never held whole.

    >>> b"".join(key_blocks(["0/0", "0/1"]))
    b'0/0\\x000/1'
    """
    for i, block in enumerate(itertools.batched(keys, _BATCH)):
        yield (b"\0" if i else b"") + "\0".join(block).encode()


class _Items[V](ItemsView[str, V]):
    """Items in key order, without a key lookup each."""

    _mapping: PackedMapping[V]

    def __iter__(self) -> Iterator[tuple[str, V]]:
        packed = self._mapping
        return zip(packed._in_order(), packed._rows(), strict=True)


class _Values[V](ValuesView[V]):
    _mapping: PackedMapping[V]

    def __iter__(self) -> Iterator[V]:
        return self._mapping._rows()


def left_join[A, B](left: Iterable[tuple[str, A]], right: Iterable[tuple[str, B]]) -> Iterator[tuple[str, A, B | None]]:
    """``(key, a, b)`` for each ``(key, a)`` of ``left``, ``b`` the value of ``key`` in ``right``
    or None. Both in sorted key order, each key once: one walk, no lookups. A key of ``right``
    out of order is missed, not misplaced.

    >>> list(left_join([("a", 1), ("b", 2)], [("b", "x"), ("c", "y")]))
    [('a', 1, None), ('b', 2, 'x')]
    """
    others = iter(right)
    other = next(others, None)
    for key, value in left:
        while other is not None and other[0] < key:
            other = next(others, None)
        yield key, value, other[1] if other is not None and other[0] == key else None


def positions_in(keys: Sequence[str], among: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """The position in ``among`` of each of ``keys`` (-1: not there), and the keys of ``among``
    that are none of ``keys``: both sorted, each key once; one walk (:func:`left_join`), no
    table of either.

    >>> positions_in(["a", "b", "d"], ["b", "c", "d"])
    (array([-1,  0,  2]), ['c'])
    """
    joined = left_join(zip(keys, keys), zip(among, itertools.count()))
    at = np.fromiter((-1 if row is None else row for _, _, row in joined), np.int64, len(keys))
    matched = np.zeros(len(among), bool)
    matched[at[at >= 0]] = True
    return at, [among[i] for i in np.flatnonzero(~matched).tolist()]

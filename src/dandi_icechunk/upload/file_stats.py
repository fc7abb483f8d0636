"""The stat of every file of a listed Zarr, packed: the uploader holds it for a whole upload.

A dict of key -> (size, mtime, inode) tuples costs about 300 bytes a file (390 MB at DANDI's
1.3 M-file Zarr); keys in one sorted list and the three numbers in machine-integer arrays cost
about 100 (`docs/upload-memory.md`).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Collection, ItemsView, Iterable, Iterator, Mapping

FileStat = tuple[int, int, int]
"""(size, mtime in ns, inode) of a file."""


class FileStats(Mapping[str, FileStat]):
    """Key -> :data:`FileStat` of many files, keys in sorted order.

    >>> stats = FileStats([("0/1", (1024, 1732000000000000000, 42)), ("0/0", (1024, 1732000000000000000, 41))])
    >>> list(stats), stats["0/1"], stats.size_of("0/0")
    (['0/0', '0/1'], (1024, 1732000000000000000, 42), 1024)
    """

    __slots__ = ("_inodes", "_keys", "_mtimes", "_sizes")

    def __init__(self, entries: Iterable[tuple[str, FileStat]] = ()) -> None:
        keys: list[str] = []
        sizes, mtimes, inodes = array("q"), array("q"), array("Q")
        for key, (size, mtime, inode) in entries:
            keys.append(key)
            sizes.append(size)
            mtimes.append(mtime)
            inodes.append(inode)
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self._keys = [keys[i] for i in order]  # a directory's listing has no key twice
        self._sizes = array("q", (sizes[i] for i in order))
        self._mtimes = array("q", (mtimes[i] for i in order))
        self._inodes = array("Q", (inodes[i] for i in order))

    def _position(self, key: str) -> int:
        i = bisect.bisect_left(self._keys, key)
        if i == len(self._keys) or self._keys[i] != key:
            raise KeyError(key)
        return i

    def __getitem__(self, key: str) -> FileStat:
        i = self._position(key)
        return self._sizes[i], self._mtimes[i], self._inodes[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def items(self) -> ItemsView[str, FileStat]:
        return _Items(self)

    def size_of(self, key: str) -> int:
        """The size of ``key`` when listed."""
        return self._sizes[self._position(key)]

    def remove(self, keys: Collection[str]) -> None:
        """Forget ``keys`` (all of them listed), in place."""
        if not keys:
            return
        kept = [i for i, key in enumerate(self._keys) if key not in keys]
        if len(kept) != len(self._keys) - len(keys):
            raise KeyError(f"{len(self._keys) - len(kept)} of {len(keys)} keys to remove are listed")
        self._keys = [self._keys[i] for i in kept]
        self._sizes = array("q", (self._sizes[i] for i in kept))
        self._mtimes = array("q", (self._mtimes[i] for i in kept))
        self._inodes = array("Q", (self._inodes[i] for i in kept))


class _Items(ItemsView[str, FileStat]):
    """Items without a key lookup each."""

    _mapping: FileStats

    def __iter__(self) -> Iterator[tuple[str, FileStat]]:
        stats = self._mapping
        return zip(stats._keys, zip(stats._sizes, stats._mtimes, stats._inodes, strict=True), strict=True)

"""The digest index of a snapshot: every uploaded file's MD5 and size, plus its metadata documents.

Icechunk names chunk objects by random IDs and records no content checksum, so each snapshot we
commit carries (in its commit metadata) the ID of an index object stored beside the repository.
The index lets an upload decide what changed without reading chunks back, gives the
``dandi-zarr-checksum`` of the snapshot, and keeps the metadata documents exactly as uploaded.
Index objects are content-addressed (ID = SHA-256 of the bytes) and written once, before the
commit that names them: a crash leaves at most an unreferenced index, never a wrong one.

Large indexes are split into shards (format 2): runs of keys in sorted order whose boundaries
fall where a key's hash says so (content-defined), so a change touches only its own shard, and
an update writes only the shards that changed; the root object names them with their key
ranges and the hash of their content (keys, MD5s, sizes), so an update tells its unchanged
runs without serialising them. :class:`IndexReader` reads one shard at a time, for readers that must not hold a whole
index in memory (the HTTP view, the archive's files endpoint).
"""

from __future__ import annotations

import base64
import bisect
import gzip
import hashlib
import itertools
import json
import operator
import threading
import zlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np

from .checksum import dandi_zarr_checksum
from .errors import IntegrityError
from .hierarchy import is_document
from .objects import RepositoryObjects
from .packed import PackedMapping, joined_md5, md5s_in_hex, positions_in, split_md5

INDEX_PREFIX = "dandi/index/"
SHARD_PREFIX = f"{INDEX_PREFIX}shards/"
_FORMAT_V1 = "dandi-icechunk-index/1"
_FORMAT = "dandi-icechunk-index/2"
SHARD_TARGET = 1024
"""Expected files per shard; an index of at most this many files keeps them in its root."""
_SHARD_MAX = 4 * SHARD_TARGET
_READ_SHARDS = 16
_WRITE_SHARDS = 8
_ID, _CONTENT = 2, 5  # columns of a shard's row in the root's table
_HEX_BLOCK = 4096  # MD5s turned to hex at once
_CACHED_SHARDS = 16  # a reader's memory: ~16 k files' digests, whatever the Zarr's size


@dataclass(frozen=True, slots=True)
class FileDigest:
    """MD5 (hex) and size in bytes of one file of a Zarr."""

    md5: str
    size: int

    @classmethod
    def of(cls, data: bytes | memoryview) -> FileDigest:
        """The digest of a file's bytes."""
        return cls(hashlib.md5(data).hexdigest(), len(data))


class FileDigests(PackedMapping[FileDigest]):
    """Key -> :class:`FileDigest`, added in any order, each key once; read in sorted key order.

    Packed (:class:`~dandi_icechunk.packed.PackedMapping`): the MD5 in two 64-bit integers and
    the size in a third, 24 bytes a file beside its key, where a dict of :class:`FileDigest`
    costs about 220 (290 MB at DANDI's 1.3 M-file Zarr). An upload holds one from the hashing
    to the commit.

    >>> digests = FileDigests()
    >>> digests["0/1"] = FileDigest("9e107d9d372bb6826bd81d3542a419d6", 1024)
    >>> digests.update([("0/0", FileDigest("e4d909c290d0fb1ca068ffaddf22cbd0", 1024))])
    >>> list(digests), digests["0/1"].size
    (['0/0', '0/1'], 1024)
    """

    __slots__ = ()
    _typecodes = "QQq"

    @staticmethod
    def _pack(value: FileDigest) -> tuple[int, int, int]:
        return *split_md5(value.md5), value.size

    @staticmethod
    def _unpack(row: tuple[int, ...]) -> FileDigest:
        high, low, size = row
        return FileDigest(joined_md5(high, low), size)

    def __setitem__(self, key: str, digest: FileDigest) -> None:
        self._append(key, digest)

    def update(self, entries: Mapping[str, FileDigest] | Iterable[tuple[str, FileDigest]]) -> None:
        """Add every (key, digest) of ``entries``."""
        self._add(entries)

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[str, str, int]]:
        """(key, MD5, size) of each file in key order (those at positions ``start`` to ``stop``),
        without a :class:`FileDigest` each."""
        keys = self._in_order()
        high, low, sizes = self._columns
        stop = len(keys) if stop is None else stop
        for first in range(start, stop, _HEX_BLOCK):
            end = min(first + _HEX_BLOCK, stop)
            yield from zip(keys[first:end], md5s_in_hex(high[first:end], low[first:end]), sizes[first:end])

    @classmethod
    def of_stored(cls, bodies: Iterable[Mapping[str, list[Any]]]) -> FileDigests:
        """The files of stored index shards (``{key: [md5, size]}`` each, in key order, one
        after the other): each shard's MD5s converted together and appended to the columns, no
        :class:`FileDigest` made and no shard held once converted."""
        keys: list[str] = []
        columns = tuple(array(code) for code in cls._typecodes)
        for body in bodies:
            keys += body.keys()
            md5s = list(map(operator.itemgetter(0), body.values()))
            try:
                if any(len(md5) != 32 for md5 in md5s):
                    raise ValueError
                halves = np.frombuffer(bytes.fromhex("".join(md5s)), ">u8").reshape(-1, 2).astype(np.uint64)
            except ValueError:
                raise IntegrityError("a digest index shard holds an MD5 that is not 32 hex digits") from None
            sizes = np.fromiter(map(operator.itemgetter(1), body.values()), np.int64, len(md5s))
            for column, values in zip(columns, (halves[:, 0], halves[:, 1], sizes), strict=True):
                column.frombytes(values.tobytes())
        return cls.from_columns(keys, columns, copy=False)

    def differing(self, newer: FileDigests) -> tuple[list[str], list[str]]:
        """(the keys of ``newer`` that are not here or have another digest here, the keys here
        that ``newer`` lacks), in key order: compared a column at a time, no digest unpacked."""
        keys, newer_keys = self.sorted_keys(), newer.sorted_keys()
        removed: list[str] = []
        if keys == newer_keys:
            at = np.arange(len(keys))
        else:
            at, removed = positions_in(newer_keys, keys)
        found = at >= 0
        differ = ~found
        for mine, theirs in zip(self.columns(), newer.columns(), strict=True):
            differ[found] |= np.frombuffer(mine, mine.typecode)[at[found]] != np.frombuffer(theirs, theirs.typecode)[found]
        return [newer_keys[i] for i in np.flatnonzero(differ).tolist()], removed

    def position(self, key: str) -> int:
        """Where ``key`` comes in key order (-1: not here)."""
        return self._position(key)

    def total_size(self) -> int:
        """The sum of the sizes."""
        return sum(self._columns[2])


@dataclass(frozen=True)
class IndexDelta:
    """What changed between two indexes: keys written (new or changed) and keys removed."""

    written: AbstractSet[str]
    removed: AbstractSet[str]

    def __bool__(self) -> bool:
        return bool(self.written or self.removed)


@dataclass(frozen=True)
class DigestIndex:
    """The logical files of one snapshot (keys as uploaded, relative to the Zarr root).

    ``documents`` holds the files kept verbatim in the index rather than in Icechunk: the
    metadata documents, and what Icechunk cannot hold (zero-byte chunks, and files that are no
    part of an array, such as ``OME/METADATA.ome.xml``).
    """

    zarr_format: Literal[2, 3] | None
    files: Mapping[str, FileDigest]
    documents: Mapping[str, bytes] = field(default_factory=dict)
    checksum: str | None = field(default=None, compare=False)  # of ``files``, when computed already
    earlier_runs: EarlierRuns | None = field(default=None, compare=False, repr=False)  # to take unchanged runs from

    @classmethod
    def empty(cls) -> DigestIndex:
        """The index of a repository with nothing uploaded yet."""
        return cls(zarr_format=None, files={}, documents={})

    @property
    def file_count(self) -> int:
        """Number of files."""
        return len(self.files)

    @property
    def size(self) -> int:
        """Total bytes of all files."""
        if isinstance(self.files, FileDigests):
            return self.files.total_size()
        return sum(d.size for d in self.files.values())

    def zarr_checksum(self) -> str:
        """The ``dandi-zarr-checksum`` of these files."""
        return self.checksum or dandi_zarr_checksum(_sorted_rows(self.files))

    def delta_to(self, newer: DigestIndex) -> IndexDelta:
        """The keys to write and remove to turn this index's files into ``newer``'s."""
        if not self.files:  # a first upload: every key, as newer holds them (no set of 1.3 M keys)
            return IndexDelta(written=newer.files.keys(), removed=frozenset())
        if isinstance(self.files, FileDigests) and isinstance(newer.files, FileDigests):
            differing, gone = self.files.differing(newer.files)
            return IndexDelta(written=frozenset(differing), removed=frozenset(gone))
        written = frozenset(k for k, d in newer.files.items() if self.files.get(k) != d)
        removed = frozenset(self.files.keys() - newer.files.keys())
        return IndexDelta(written=written, removed=removed)

    def apply(self, delta: IndexDelta, source: DigestIndex) -> DigestIndex:
        """This index with ``delta`` applied, taking written entries from ``source``."""
        files = {k: d for k, d in self.files.items() if k not in delta.removed}
        documents = {k: v for k, v in self.documents.items() if k not in delta.removed}
        for key in delta.written:
            files[key] = source.files[key]
            if key in source.documents:
                documents[key] = source.documents[key]
        return DigestIndex(zarr_format=source.zarr_format, files=files, documents=documents)

    def root_body(self) -> dict[str, Any]:
        """The root object's fields other than the files: format, Zarr format, documents."""
        documents: dict[str, str] = {}
        extras: dict[str, str] = {}
        for key, data in sorted(self.documents.items()):
            if is_document(key):
                documents[key] = data.decode()
            else:
                extras[key] = base64.b64encode(data).decode()
        body: dict[str, Any] = {"format": _FORMAT, "zarr_format": self.zarr_format, "documents": documents}
        if extras:
            body["extras"] = extras
        return body

    @cached_property
    def runs(self) -> dict[str, list[str]]:
        """The files in sorted runs, cut after each key whose hash is a boundary (or at
        ``_SHARD_MAX``): inserting or removing a key changes only its own run. Each by the hash
        of its content (keys, MD5s, sizes), which tells an unchanged run without serialising it;
        a run :attr:`earlier_runs` knows unchanged is not hashed again."""
        files = self.files if isinstance(self.files, FileDigests) else FileDigests(self.files)
        keys = list(files)
        columns = [np.frombuffer(c, c.typecode).astype(f"<{c.typecode}", copy=False) for c in files.columns()]
        runs: dict[str, list[str]] = {}
        earlier = self.earlier_runs
        ends = earlier.ends if earlier is not None and earlier.ends and earlier.ends[-1] == len(keys) else None
        start = 0
        for end in ends or _run_ends(keys):
            run = keys[start:end]
            known = earlier.content(run) if earlier is not None else None
            if known is None:
                content = hashlib.sha256(f"{end - start}\n".encode())  # the count fixes where keys end
                content.update("\0".join(run).encode())
                for column in columns:
                    content.update(column[start:end].tobytes())
                known = content.hexdigest()
            runs[known] = run
            start = end
        return runs

    def shard(self, content: str) -> Shard:
        """The run of content hash ``content`` as stored. Not kept: a first upload makes every
        shard once, and holding them all was ~40 MB at 1.3 M files."""
        return Shard.of(self.runs[content], self.files, content)


@dataclass(frozen=True)
class EarlierRuns:
    """The runs of an earlier index (:attr:`DigestIndex.runs`), and every key whose digest may
    differ from that index's (added, removed or changed since): a run with the first and last
    key and the length of an earlier one, and none of those keys between them, holds the same
    files with the same digests, so it has that run's content hash.

    >>> earlier = EarlierRuns.of([("0/0", "0/1", 2, "ab" * 32)], changed=["0/5"])
    >>> earlier.content(["0/0", "0/1"]) == "ab" * 32, earlier.content(["0/0", "0/5"])
    (True, None)
    """

    contents: Mapping[tuple[str, str, int], str]  # (first key, last key, files) -> content hash
    changed: list[str]  # sorted
    ends: list[int] | None = None  # where the runs end, when the keys are the earlier index's

    @staticmethod
    def kept(runs: Mapping[str, list[str]]) -> list[tuple[str, str, int, str]]:
        """What is kept of each of ``runs`` (:attr:`DigestIndex.runs`), in order, for :meth:`of`:
        first key, last key, files, content hash."""
        return [(keys[0], keys[-1], len(keys), content) for content, keys in runs.items()]

    @classmethod
    def of(cls, runs: list[tuple[str, str, int, str]], changed: Iterable[str], *, same_keys: bool = False) -> EarlierRuns:
        """From each earlier run's (first key, last key, files, content hash), in order (:meth:`kept`).
        ``same_keys``: the keys are those of the earlier index, so the runs end where they did."""
        ends = list(itertools.accumulate(run[2] for run in runs)) if same_keys else None
        return cls({(first, last, count): content for first, last, count, content in runs}, sorted(set(changed)), ends)

    def content(self, run: list[str]) -> str | None:
        """The content hash of ``run`` (sorted keys), when an earlier run had the same files and
        digests; None when it must be hashed."""
        found = self.contents.get((run[0], run[-1], len(run)))
        if found is None:
            return None
        at = bisect.bisect_left(self.changed, run[0])
        return found if at == len(self.changed) or self.changed[at] > run[-1] else None


def _run_ends(keys: list[str]) -> Iterator[int]:
    """Where the runs of ``keys`` end: after each boundary key, and ``_SHARD_MAX`` keys after
    the last cut."""
    cut = 0
    for boundary in _boundaries(keys):
        while boundary + 1 - cut > _SHARD_MAX:
            cut += _SHARD_MAX
            yield cut
        cut = boundary + 1
        yield cut
    while cut < len(keys):
        cut = min(cut + _SHARD_MAX, len(keys))
        yield cut


def _boundaries(keys: list[str]) -> list[int]:
    """The positions of the keys whose CRC-32 (of their UTF-8) is a multiple of ``SHARD_TARGET``:
    where runs may end. Computed in C iterators, no Python call a key (0.16 -> 0.10 s at 1.3 M keys)."""
    crcs = np.fromiter(map(zlib.crc32, map(str.encode, keys)), np.uint32, len(keys))
    return np.flatnonzero(crcs % SHARD_TARGET == 0).tolist()


def _sorted_rows(files: Mapping[str, FileDigest]) -> Iterator[tuple[str, str, int]]:
    """(key, MD5, size) of each file, in sorted key order."""
    if isinstance(files, FileDigests):
        return files.rows()
    return ((key, digest.md5, digest.size) for key in sorted(files) for digest in (files[key],))


def _gzip_json(body: Any) -> bytes:
    """Deterministic bytes (keys in the order given, fixed mtime) of a JSON body."""
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return gzip.compress(raw, compresslevel=6, mtime=0)


def _files_body(rows: Iterable[tuple[str, str, int]]) -> dict[str, list[Any]]:
    return {k: [md5, size] for k, md5, size in rows}


def _files_json(rows: Iterable[tuple[str, str, int]]) -> bytes:
    """The bytes :func:`_gzip_json` compresses for :func:`_files_body` of ``rows``, written
    without a list and a dict entry a file (a scattered change makes 1.3 M of them)."""
    quoted = json.encoder.encode_basestring  # type: ignore[attr-defined]  # what ensure_ascii=False uses
    return ("{" + ",".join(f'{quoted(k)}:["{md5}",{size}]' for k, md5, size in rows) + "}").encode()


def _files(body: Mapping[str, list[Any]]) -> dict[str, FileDigest]:
    return {k: FileDigest(md5, size) for k, (md5, size) in body.items()}


def _documents(body: Mapping[str, Any]) -> dict[str, bytes]:
    return {
        **{k: v.encode() for k, v in body["documents"].items()},
        **{k: base64.b64decode(v) for k, v in body.get("extras", {}).items()},
    }


def _get_checked(objects: RepositoryObjects, key: str, object_id: str, what: str) -> bytes:
    data = objects.get(key)
    if data is None:
        raise IntegrityError(f"{what} {object_id} is missing from the repository")
    if hashlib.sha256(data).hexdigest() != object_id:
        raise IntegrityError(f"{what} {object_id} is corrupt (its bytes do not match its ID)")
    return data


@dataclass(frozen=True)
class Shard:
    """One run of an index's files, as stored: gzipped JSON named by its SHA-256."""

    shard_id: str
    data: bytes
    row: list[Any]  # the root's row for it: first and last key, ID, file count, bytes, content hash

    @classmethod
    def of(cls, keys: list[str], files: Mapping[str, FileDigest], content: str) -> Shard:
        """The shard of the run ``keys`` (sorted) of ``files``, whose content hash is ``content``."""
        if isinstance(files, FileDigests):  # a run is one stretch of the packed rows
            start = files.position(keys[0])
            rows = list(files.rows(start, start + len(keys)))
            assert rows[-1][0] == keys[-1], "a run is no stretch of its index's files"
        else:
            rows = [(k, files[k].md5, files[k].size) for k in keys]
        data = gzip.compress(_files_json(rows), compresslevel=6, mtime=0)
        shard_id = hashlib.sha256(data).hexdigest()
        return cls(shard_id, data, [keys[0], keys[-1], shard_id, len(keys), sum(r[2] for r in rows), content])


def differing_parts(base: IndexReader, new: DigestIndex) -> tuple[DigestIndex, DigestIndex]:
    """The parts of a stored index ``base`` and of ``new`` that can differ, whose delta is the
    whole delta: when both are sharded, the files of the runs whose content the other side
    lacks, so only those shards of ``base`` are read; otherwise both whole. Runs are told by
    their content hash, or, for a table stored before rows carried it, by the stored shard's ID
    (then ``base`` learns the content hash of each shard ``new`` has too, so that
    :func:`store_index` against its table makes only the shards that changed)."""
    if base.inline is not None or new.file_count <= SHARD_TARGET:
        whole = base.inline if base.inline is not None else load_index_files(base)
        return DigestIndex(base.zarr_format, whole, base.documents), new
    by_content = all(len(row) > _CONTENT for row in base.table)
    column = _CONTENT if by_content else _ID
    # each new run by the name the table would give it
    ours = {content: content if by_content else new.shard(content).shard_id for content in new.runs}
    if not by_content:
        base.learn_contents({name: content for content, name in ours.items()})
    theirs, named = {row[column] for row in base.table}, set(ours.values())
    reading = [n for n, row in enumerate(base.table) if row[column] not in named]
    with ThreadPoolExecutor(max_workers=_READ_SHARDS) as pool:  # a scattered change reads every shard
        old_files = FileDigests.of_stored(pool.map(base.raw_shard, reading))
    differing = [content for content, name in ours.items() if name not in theirs]
    new_files = new.files if len(differing) == len(ours) else _runs_of(new, differing)
    return (DigestIndex(base.zarr_format, old_files, base.documents),
            DigestIndex(new.zarr_format, new_files, new.documents))


def _runs_of(index: DigestIndex, contents: list[str]) -> FileDigests:
    """The files of the runs ``contents`` of ``index`` (in key order, as :attr:`DigestIndex.runs`
    gives them): each run a stretch of its packed rows when ``index`` holds them packed."""
    files = index.files
    if not isinstance(files, FileDigests):
        return FileDigests((k, files[k]) for content in contents for k in index.runs[content])
    spans = []
    for content in contents:
        run = index.runs[content]
        start = files.position(run[0])
        spans.append((start, start + len(run)))
    return files.stretches(spans)


def load_index_files(reader: IndexReader) -> FileDigests:
    """Every file of a stored index, its shards read in parallel (a few at a time in memory)."""
    if reader.inline is not None:
        return FileDigests(reader.inline.items())
    with ThreadPoolExecutor(max_workers=_READ_SHARDS) as pool:
        return FileDigests.of_stored(pool.map(reader.raw_shard, range(len(reader.table))))


def store_index(objects: RepositoryObjects, index: DigestIndex, *, stored: Iterable[list[Any]] = ()) -> str:
    """Write ``index`` (its shards, then its root; what is already stored is not written again)
    and return its ID. ``stored``: the table rows of a stored index (the parent's), whose runs
    are neither serialised nor written again."""
    body = index.root_body()
    if index.file_count <= SHARD_TARGET:
        body["files"] = _files_body(_sorted_rows(index.files))
    else:
        rows = list(stored)
        known = {row[_CONTENT]: row for row in rows if len(row) > _CONTENT}
        stored_ids = {row[_ID] for row in rows}
        # Shards are made (gzip and SHA-256 let go of the GIL) and written a few at a time: a
        # scattered change makes every one (1,300 at 1.3 M files), 6 s one after the other here.
        def made(content: str) -> list[Any]:
            shard = index.shard(content)
            if shard.shard_id not in stored_ids:
                objects.put_if_absent(f"{SHARD_PREFIX}{shard.shard_id}.json.gz", shard.data)
            return shard.row

        table: list[list[Any] | Future[list[Any]]] = []
        with ThreadPoolExecutor(max_workers=_WRITE_SHARDS) as pool:
            making: deque[Future[list[Any]]] = deque()
            for content in index.runs:
                if (row := known.get(content)) is None:
                    making.append(pool.submit(made, content))
                    if len(making) > 2 * _WRITE_SHARDS:  # a few shards held, not all
                        making.popleft().result()
                table.append(row if row is not None else making[-1])
        body["shards"] = [row.result() if isinstance(row, Future) else row for row in table]
    data = _gzip_json(body)
    index_id = hashlib.sha256(data).hexdigest()
    objects.put_if_absent(f"{INDEX_PREFIX}{index_id}.json.gz", data)
    return index_id


def load_index(objects: RepositoryObjects, index_id: str) -> DigestIndex:
    """Read the whole index ``index_id``, checking every object's bytes against its ID."""
    reader = IndexReader.load(objects, index_id)
    return DigestIndex(reader.zarr_format, load_index_files(reader), reader.documents)


def index_shard_ids(objects: RepositoryObjects, index_id: str) -> list[str]:
    """The shard IDs the index ``index_id`` names (none when its files are in its root)."""
    return IndexReader.load(objects, index_id).shard_ids


class IndexReader:
    """One digest index read a shard at a time: the root (documents, the shards' key ranges) in
    memory, and at most ``cache`` shards (~0.2 MB each). Thread-safe.

    >>> reader = IndexReader.load(repository.objects, info.index_id)
    >>> reader.get("0/0.0.0"), list(reader.keys(prefix="0/"))
    """

    def __init__(
        self,
        objects: RepositoryObjects | None,
        zarr_format: Literal[2, 3] | None,
        documents: dict[str, bytes],
        *,
        inline: Mapping[str, FileDigest] | None = None,
        table: list[list[Any]] | None = None,
        cache: int = _CACHED_SHARDS,
    ) -> None:
        self.objects, self.zarr_format, self.documents = objects, zarr_format, documents
        self.inline, self.table = inline, table or []
        self._firsts = [row[0] for row in self.table]
        self._inline_keys = (
            inline.sorted_keys() if isinstance(inline, FileDigests) else sorted(inline) if inline is not None else []
        )
        self._cache: OrderedDict[int, tuple[list[str], dict[str, list[Any]]]] = OrderedDict()
        self._size, self._lock = cache, threading.Lock()

    @classmethod
    def load(cls, objects: RepositoryObjects, index_id: str, *, cache: int = _CACHED_SHARDS) -> IndexReader:
        """The index ``index_id`` (format 1 or 2): its root now, its shards when asked."""
        data = _get_checked(objects, f"{INDEX_PREFIX}{index_id}.json.gz", index_id, "digest index")
        root = json.loads(gzip.decompress(data))
        if root.get("format") not in (_FORMAT, _FORMAT_V1):
            raise IntegrityError(f"unknown digest index format {root.get('format')!r}")
        inline = _files(root["files"]) if "files" in root else None
        return cls(objects, root["zarr_format"], _documents(root), inline=inline, table=root.get("shards"), cache=cache)

    @classmethod
    def of(cls, index: DigestIndex) -> IndexReader:
        """A reader of an index already in memory, its files read where they are (not copied:
        a dict of 1.3 M digests would take some 220 MB), so they must not change meanwhile."""
        return cls(None, index.zarr_format, dict(index.documents), inline=index.files)

    def learn_contents(self, contents: Mapping[str, str]) -> None:
        """Give the rows of a table stored before rows carried content hashes the hash
        ``contents`` maps their shard ID to (found by building the same shard)."""
        self.table = [
            [*row, contents[row[_ID]]] if len(row) == _CONTENT and row[_ID] in contents else row
            for row in self.table
        ]

    @property
    def shard_ids(self) -> list[str]:
        """The IDs of the shards this index names (none when its files are in its root)."""
        return [row[2] for row in self.table]

    @property
    def file_count(self) -> int:
        return len(self.inline) if self.inline is not None else sum(row[3] for row in self.table)

    @property
    def size(self) -> int:
        if isinstance(self.inline, FileDigests):
            return self.inline.total_size()
        if self.inline is not None:
            return sum(d.size for d in self.inline.values())
        return sum(row[4] for row in self.table)

    def raw_shard(self, number: int) -> dict[str, list[Any]]:
        """Shard ``number`` as stored (``{key: [md5, size]}``), read from storage and checked."""
        assert self.objects is not None  # only indexes loaded from storage have shards
        shard_id = self.table[number][2]
        data = _get_checked(self.objects, f"{SHARD_PREFIX}{shard_id}.json.gz", shard_id, "digest index shard")
        return dict(json.loads(gzip.decompress(data)))

    def _shard(self, number: int) -> tuple[list[str], dict[str, list[Any]]]:
        """A shard as stored (keys in order, ``[md5, size]`` each): compact, and quick to parse."""
        with self._lock:
            if number in self._cache:
                self._cache.move_to_end(number)
                return self._cache[number]
        files = self.raw_shard(number)
        loaded = (list(files), files)
        with self._lock:
            self._cache[number] = loaded
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return loaded

    def in_memory(self, key: str) -> bool:
        """Whether :meth:`get` of ``key`` reads nothing from storage (its shard is held)."""
        if self.inline is not None:
            return True
        number = bisect.bisect_right(self._firsts, key) - 1
        with self._lock:
            return number < 0 or key > self.table[number][1] or number in self._cache

    def get(self, key: str) -> FileDigest | None:
        """The digest of file ``key``, or None."""
        if self.inline is not None:
            return self.inline.get(key)
        number = bisect.bisect_right(self._firsts, key) - 1
        if number < 0 or key > self.table[number][1]:
            return None
        found = self._shard(number)[1].get(key)
        return FileDigest(found[0], found[1]) if found is not None else None

    def keys(self, *, prefix: str = "", after: str = "") -> Iterator[str]:
        """Keys starting with ``prefix`` that sort after ``after``, in order, read lazily."""
        start = max(prefix, after)
        if self.inline is not None:
            runs: Iterable[list[str]] = [self._inline_keys]
        else:
            first = max(0, bisect.bisect_right(self._firsts, start) - 1)
            runs = (self._shard(n)[0] for n in range(first, len(self.table)))
        for run in runs:
            for key in run[bisect.bisect_left(run, start):]:
                if key == after:
                    continue
                if not key.startswith(prefix):
                    return
                yield key

"""A local cache of file digests, so re-uploading a huge Zarr does not re-hash unchanged files.

Like dandi-cli's digest cache: a file whose size, modification time (ns) and inode are those
seen when it was last hashed keeps its MD5. Per Zarr directory, the files' rows in key order are
cut into segments of about :data:`SEGMENT_ROWS` files, each a file named by the BLAKE2b of its
content (the keys, then one column of machine integers per field: size, mtime, inode, MD5), and
a small head file lists them and is replaced atomically. It is read and compared column by column
in numpy, never an object per file (at DANDI's 1.3 M-file Zarr it is ~63 MB; a line of text per
file took ~15 µs to parse); a save writes only the segments whose rows changed, and a segment
keeps the bounds it had, so that a change in one region of the Zarr writes one or two of them.

Beside it, what the last upload derived from the files it was saved with (:class:`Derived`,
headed by the file digests' check value): the digest of every directory, from which the next
upload computes the ``dandi-zarr-checksum`` again only above the files that changed
(:meth:`~dandi_icechunk.checksum.DirectoryDigests.updated`), and the runs of its digest index,
whose unchanged ones are not hashed again (:class:`~dandi_icechunk.index.EarlierRuns`). What the
last scan of its keys found (:class:`KeyScan`), not looked for again while the keys stay the same.

And the last upload of the directory to each branch (:class:`UploadRecord`): when the
directory lists the same files with the same stats and the branch is still at the snapshot
that upload made, nothing changed, and the upload is over before any file is hashed or any
digest loaded.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import json
import logging
import os
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Buffer, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import platformdirs

from ..checksum import DirectoryDigests
from ..index import FileDigests
from ..packed import key_blocks, positions_in
from ..records import JsonRecord
from .file_stats import FileStats

_log = logging.getLogger("dandi_icechunk")
SEGMENT_ROWS = 16_384
"""Files a segment of the cache is cut to hold: the least a change rewrites (about 800 KB)."""
# the integers are the machine's: a cache is read by the machine that wrote it, or dropped
_MAGIC = f"dandi-icechunk digest cache 3 {sys.byteorder}\n".encode()
_SEGMENT = struct.Struct("<QQ16s")  # in the head: a segment's files, its keys' bytes, its ID
_LEFTOVER_SECONDS = 3600  # a file of the segments' directory no head names, older than this, is a crash's leftover
_DERIVED_MAGIC = f"dandi-icechunk derived digests 1 {sys.byteorder}\n".encode()
_STAT_TYPES = (np.int64, np.int64, np.uint64)  # size, mtime (ns), inode: FileStats' columns


@dataclass(frozen=True)
class Derived:
    """What an upload derived from its files' digests (the cached ones and its documents')."""

    directories: DirectoryDigests  # the digest of every directory
    runs: list[tuple[str, str, int, str]]  # its digest index's runs: first key, last key, files, content hash
    documents: list[str]  # sorted: the keys of the files kept in the index, not in the cache


@dataclass(frozen=True)
class Segment:
    """One segment of a cache, as its head lists it."""

    files: int
    key_bytes: int  # of its keys, ``\0``-separated and UTF-8 encoded
    id: bytes  # the BLAKE2b (16 bytes) of its keys and columns: the name of its file


@dataclass(frozen=True)
class Segments:
    """The segments of a cache as read (those lost left out), in key order, with their first keys
    and, for each whose keys are exactly the listing's there, its rows in the listing."""

    segments: list[Segment]
    first_keys: list[str]
    rows: list[tuple[int, int] | None]


@dataclass(frozen=True)
class _Stored:
    """A cache as read: its segments' keys (``\0``-separated) and columns joined."""

    keys: bytes | bytearray
    columns: list[np.ndarray]  # size, mtime (ns), inode, MD5 high and low 64 bits
    segments: list[Segment]  # those read, in key order
    check: bytes  # of the head: what binds what was derived to these digests
    whole: bool  # every segment the head lists was read


@dataclass(frozen=True)
class CachedDigests:
    """What the cache knows of a listing's files."""

    files: FileDigests  # the MD5 of each listed file whose stat is the one it had when hashed
    unknown: np.ndarray  # the others: their rows in the listing
    derived: Derived | None  # from the files when the cache was saved, when kept
    stale: list[str]  # keys ``derived`` counted that ``files`` lacks: files gone, documents then
    segments: Segments | None  # of the cache as read
    same_keys: bool = False  # the listing's keys are the cached ones (no file added or gone)

    @classmethod
    def none(cls, stats: FileStats) -> CachedDigests:
        """Nothing known of the files of ``stats``."""
        return cls(FileDigests(), np.arange(len(stats)), None, [], None)


@dataclass(frozen=True)
class KeyScan(JsonRecord):
    """What scanning a listing's keys found, kept to skip it when the keys come back the same.

    The keys' checks and the metadata documents among them follow from the keys alone; the
    files that belong to no array follow from the keys and the documents' bytes."""

    keys_digest: str  # :attr:`~.local_zarr.LocalListing.keys_digest` of the keys scanned
    named_documents: list[str]  # the keys named as metadata documents
    documents_digest: str  # of every file kept in the index but the strays: keys and bytes
    strays: list[str]  # the files that belong to no array


@dataclass(frozen=True)
class UploadRecord(JsonRecord):
    """What one upload of a local Zarr to one branch left behind."""

    fingerprint: str  # of the directory's listing (keys and stats) when it was scanned
    snapshot_id: str  # the branch's tip after the upload
    complete: bool  # the snapshot holds exactly the listed files (no patch, no rebase)


class DigestCache:
    """MD5s of local files by path, valid while their :data:`FileStat` is unchanged.

    A cache that cannot be written (a read-only home, a full disk) never stops an upload: it
    warns once, and the uploads that follow hash every file."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._warned = False

    @classmethod
    def default(cls) -> DigestCache:
        """The cache in the user's cache directory."""
        return cls(Path(platformdirs.user_cache_dir("dandi-icechunk")) / "digests")

    def _file(self, root: Path, suffix: str = ".digests") -> Path:
        name = hashlib.sha256(str(root.resolve()).encode()).hexdigest()
        return self.directory / f"{name}{suffix}"

    def unchanged(self, root: Path, stats: FileStats) -> CachedDigests:
        """The digest of each file of ``stats`` (key -> stat as listed) whose stat is the one it had
        when it was hashed; none when the cache of the Zarr at ``root`` is missing or damaged.
        With them what was derived from them (:meth:`save_derived`), if that is whole."""
        try:
            stored = self._read(root)
        except (OSError, ValueError, struct.error):
            return CachedDigests.none(stats)
        cached = stored.columns
        keys = stats.sorted_keys()
        stat = [np.frombuffer(column, dtype) for column, dtype in zip(stats.columns(), _STAT_TYPES, strict=True)]
        positions, gone, segments = _match(stored, keys)
        same_keys = None not in segments.rows and sum(s.files for s in stored.segments) == len(keys)
        if same_keys:  # the same files, in the same rows: compared row for row
            known = np.logical_and.reduce([now == then for now, then in zip(stat, cached[:3], strict=True)])
            listed = at = np.flatnonzero(known)
        else:
            listed = np.flatnonzero(positions >= 0)
            at = positions[listed]
            same = np.logical_and.reduce([now[listed] == then[at] for now, then in zip(stat, cached[:3], strict=True)])
            listed, at = listed[same], at[same]
            known = np.zeros(len(keys), bool)
            known[listed] = True
        files = FileDigests.from_columns(
            list(itertools.compress(keys, known.tolist())),
            [cached[3][at].tobytes(), cached[4][at].tobytes(), stat[0][listed].tobytes()],
            taken_from=stats,
        )
        unknown = np.flatnonzero(~known)
        try:
            if not stored.whole:
                raise ValueError("derived from digests of which a segment is lost")
            derived = _read_derived(self._file(root, ".derived"), stored.check)
        except (OSError, ValueError, struct.error):
            return CachedDigests(files, unknown, None, [], segments, same_keys)
        return CachedDigests(files, unknown, derived, gone + derived.documents, segments, same_keys)

    def save(self, root: Path, stats: FileStats, digests: FileDigests, cached: CachedDigests | None = None) -> bytes | None:
        """Replace the cache of the Zarr at ``root`` with the MD5 of each file of ``stats`` (the
        listing it was hashed from): ``digests`` has the same keys. ``cached``: what
        :meth:`unchanged` found of these stats, whose segments keep their bounds and are kept
        where their files are the same (where the keys are the listing's and no file's stat
        changed: not even hashed again). Returns the check value that binds to these digests
        what is derived from them (:meth:`save_derived`), or None if the cache cannot be written."""
        if stats.sorted_keys() != digests.sorted_keys():
            raise ValueError("the digests to cache are of other files than the listing's")
        with self._writing():
            return self._save(root, stats, digests, cached)
        return None

    def _save(self, root: Path, stats: FileStats, digests: FileDigests, cached: CachedDigests | None) -> bytes:
        high, low, _ = digests.columns()
        columns = [np.frombuffer(column, dtype) for column, dtype in zip(stats.columns(), _STAT_TYPES, strict=True)]
        columns += [np.frombuffer(high, np.uint64), np.frombuffer(low, np.uint64)]
        keys = stats.sorted_keys()
        before = cached.segments if cached is not None else None
        unknown = cached.unknown if cached is not None else np.empty(0, np.int64)
        kept: dict[tuple[int, int], Segment] = {}  # by their rows: those of the listing's keys, kept where no stat changed
        ends = [len(keys)]
        if before is not None:
            kept = {rows: segment for rows, segment in zip(before.rows, before.segments, strict=True) if rows}
            ends = [bisect.bisect_left(keys, first) for first in before.first_keys[1:]] + ends
        folder = self._file(root, ".segments")
        folder.mkdir(parents=True, exist_ok=True)
        segments = []
        for start, end in itertools.pairwise([0, *_segment_ends(ends)]):
            rows = [column[start:end] for column in columns]
            segment = kept.get((start, end))
            if segment is None or np.searchsorted(unknown, start) != np.searchsorted(unknown, end):
                segment = self._save_segment(folder, "\0".join(keys[start:end]).encode(), rows)
            segments.append(segment)
        head = [_MAGIC, struct.pack("<Q", len(segments)), *(_SEGMENT.pack(s.files, s.key_bytes, s.id) for s in segments)]
        check = self._write_checked(self._file(root), head)
        _remove_unnamed(folder, {segment.id.hex() for segment in segments}, before)
        for earlier in (".tsv.gz", ".directories"):  # the text format, the directory digests alone (2026-11)
            self._file(root, earlier).unlink(missing_ok=True)
        return check

    def _save_segment(self, folder: Path, keys: bytes, columns: list[np.ndarray]) -> Segment:
        """The segment of ``keys`` and ``columns``, its file written unless it is there."""
        parts: list[Buffer] = [keys, *columns]
        segment = Segment(len(columns[0]), len(keys), _content_id(parts))
        file = folder / segment.id.hex()
        if not file.exists():
            with self._replacing(file) as f:
                for part in parts:
                    f.write(part)
        return segment

    def _read(self, root: Path) -> _Stored:
        """The cache of the Zarr at ``root``: :class:`ValueError` if its head is damaged; a
        segment lost or damaged is left out (its files are hashed again)."""
        body, check = _read_checked(self._file(root), _MAGIC)
        (count,) = struct.unpack_from("<Q", body)
        listed = [Segment(*fields) for fields in _SEGMENT.iter_unpack(body[8:])]
        if len(listed) != count:
            raise ValueError(f"{self._file(root)} is cut short")
        folder = self._file(root, ".segments")
        types = (*_STAT_TYPES, np.uint64, np.uint64)
        keys = bytearray(sum(segment.key_bytes + 1 for segment in listed))
        columns = [np.empty(sum(segment.files for segment in listed), dtype) for dtype in types]
        segments: list[Segment] = []
        at = row = 0
        for segment in listed:  # copied into place one at a time: never the segments and the columns held whole twice
            try:
                data = (folder / segment.id.hex()).read_bytes()
            except OSError:
                continue
            files = segment.files
            if len(data) != segment.key_bytes + 40 * files or _content_id([data]) != segment.id:
                continue
            if segments:
                keys[at] = 0
                at += 1
            keys[at : at + segment.key_bytes] = memoryview(data)[: segment.key_bytes]
            at += segment.key_bytes
            for i, (column, dtype) in enumerate(zip(columns, types, strict=True)):
                column[row : row + files] = np.frombuffer(data, dtype, files, segment.key_bytes + 8 * files * i)
            row += files
            segments.append(segment)
        del keys[at:]
        return _Stored(keys, [column[:row] for column in columns], segments, check, len(segments) == len(listed))

    def save_derived(self, root: Path, saved: bytes, derived: Derived) -> None:
        """Keep what was derived from the files of the Zarr at ``root`` cached by the
        :meth:`save` that returned ``saved`` and its documents (the files not in that
        listing): read back only with those digests, by :meth:`unchanged`."""
        with self._writing():
            self._save_derived(root, saved, derived)

    def _save_derived(self, root: Path, saved: bytes, derived: Derived) -> None:
        directories, runs, documents = derived.directories, derived.runs, derived.documents
        header = [_DERIVED_MAGIC, saved, struct.pack("<QQQ", len(directories), len(documents), len(runs))]
        key_lists = [directories, documents, [run[0] for run in runs], [run[1] for run in runs]]
        blocks = [b"".join(key_blocks(keys)) for keys in key_lists]
        sizes = struct.pack("<QQQQ", *map(len, blocks))
        run_columns: list[Buffer] = [np.array([run[2] for run in runs], np.uint64), bytes.fromhex("".join(run[3] for run in runs))]
        self._write_checked(self._file(root, ".derived"),
                            itertools.chain(header, [sizes], blocks, directories.columns(), run_columns))

    def last_upload(self, root: Path, target: str) -> UploadRecord | None:
        """The last upload of the Zarr at ``root`` to ``target`` (a repository and branch)."""
        try:
            return UploadRecord(**self._uploads(root)[target])
        except (KeyError, TypeError):
            return None

    def record_upload(self, root: Path, target: str, record: UploadRecord) -> None:
        """Remember ``record`` as the last upload of the Zarr at ``root`` to ``target``."""
        uploads = {**self._uploads(root), target: record.to_json()}
        with self._writing(), self._replacing(self._file(root, ".uploads.json")) as f:
            f.write(json.dumps(uploads).encode())

    def last_scan(self, root: Path) -> KeyScan | None:
        """What scanning the keys of the Zarr at ``root`` found last time."""
        try:
            scan = KeyScan(**json.loads(self._file(root, ".scan.json").read_bytes()))
        except (OSError, ValueError, TypeError):
            return None
        lists = (scan.named_documents, scan.strays)
        if all(isinstance(keys, list) and all(isinstance(k, str) for k in keys) for keys in lists):
            return scan
        return None

    def record_scan(self, root: Path, scan: KeyScan) -> None:
        """Remember ``scan`` as the last scan of the keys of the Zarr at ``root``."""
        with self._writing(), self._replacing(self._file(root, ".scan.json")) as f:
            f.write(json.dumps(scan.to_json()).encode())

    def _uploads(self, root: Path) -> dict[str, dict]:
        try:
            uploads = json.loads(self._file(root, ".uploads.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return uploads if isinstance(uploads, dict) else {}

    def _write_checked(self, file: Path, parts: Iterable[Buffer]) -> bytes:
        """Replace ``file`` with ``parts`` followed by their BLAKE2b check value, which is returned
        (read back by :func:`_read_checked`)."""
        parts = list(parts)
        check = _content_id(parts)
        with self._replacing(file) as f:
            for part in parts:
                f.write(part)
            f.write(check)
        return check

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Writes to the cache, whose failure is warned of (once) and otherwise ignored."""
        try:
            yield
        except OSError as exc:
            traceback.clear_frames(exc.__traceback__)  # their views of the digests' columns, which then grow
            if not self._warned:
                self._warned = True
                _log.warning("cannot write the digest cache in %s (%s); the upload goes on, and later ones hash "
                             "every file again until it can be written: free space there or fix its permissions",
                             self.directory, exc.strerror or exc)

    @contextlib.contextmanager
    def _replacing(self, file: Path) -> Iterator[IO[bytes]]:
        """A file to write that replaces ``file`` when done, and is removed on failure."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            os.replace(tmp, file)
        except BaseException:
            os.unlink(tmp)
            raise


def _match(stored: _Stored, keys: list[str]) -> tuple[np.ndarray, list[str], Segments]:
    """Each listed key's row in the cache ``stored`` (or -1), the cached keys not listed, and
    the cache's segments with the listing's rows of each whose keys are exactly those there.

    A segment holds the cached keys from its first key to the next segment's: its keys are
    compared with the listing's in that range at once (their bytes), and walked key by key only
    where they differ, so files added or removed in one region cost that region's walk."""
    firsts = _first_keys(stored)
    ends = [*(bisect.bisect_left(keys, first) for first in firsts[1:]), len(keys)] if firsts else []
    starts = [bisect.bisect_left(keys, firsts[0]), *ends[:-1]] if firsts else []
    positions = np.full(len(keys), -1, np.int64)
    gone: list[str] = []
    rows: list[tuple[int, int] | None] = []
    at = row = 0
    for segment, start, end in zip(stored.segments, starts, ends, strict=True):
        block = stored.keys[at : at + segment.key_bytes]
        if end - start == segment.files and "\0".join(keys[start:end]).encode() == block:
            positions[start:end] = np.arange(row, row + segment.files)
            rows.append((start, end))
        else:
            listed, missing = positions_in(keys[start:end], block.decode().split("\0"))
            gone += missing
            positions[start:end] = np.where(listed >= 0, listed + row, -1)
            rows.append(None)
        at += segment.key_bytes + 1
        row += segment.files
    return positions, gone, Segments(stored.segments, firsts, rows)


def _content_id(parts: Iterable[Buffer]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part)
    return digest.digest()


def _first_keys(stored: _Stored) -> list[str]:
    """The first key of each segment of ``stored``."""
    firsts, at = [], 0
    for segment in stored.segments:
        end = stored.keys.find(b"\0", at, at + segment.key_bytes)
        firsts.append(stored.keys[at : at + segment.key_bytes if end < 0 else end].decode())
        at += segment.key_bytes + 1
    return firsts


def _segment_ends(ends: list[int]) -> list[int]:
    """The rows where segments end, from those where they ended (``ends``, the last one the
    number of rows): none empty; one of more than three times :data:`SEGMENT_ROWS` cut in
    pieces of that many; one of less than a quarter of them joined to the one before, unless
    that makes one too large to keep. The ends it gives, it gives back unchanged."""
    out: list[int] = []
    start = 0
    for end in sorted(set(ends)):
        if end == start:
            continue
        if end - start > 3 * SEGMENT_ROWS:
            out += range(start + SEGMENT_ROWS, end - SEGMENT_ROWS, SEGMENT_ROWS)
        if out and end - out[-1] < SEGMENT_ROWS // 4 and end - (out[-2] if len(out) > 1 else 0) <= 3 * SEGMENT_ROWS:
            out[-1] = end
        else:
            out.append(end)
        start = end
    return out


def _remove_unnamed(folder: Path, named: set[str], before: Segments | None) -> None:
    """Remove the segments of ``folder`` the head no longer names: those the last head named
    (``before``) now, and others (what a crash left) once they are old."""
    replaced = {segment.id.hex() for segment in before.segments} if before is not None else set()
    for entry in os.scandir(folder):
        if entry.name in named:
            continue
        with contextlib.suppress(OSError):
            if entry.name in replaced or entry.stat().st_mtime < time.time() - _LEFTOVER_SECONDS:
                os.unlink(entry.path)


def _read_checked(file: Path, magic: bytes) -> tuple[bytes, bytes]:
    """What :meth:`DigestCache._write_checked` wrote to ``file`` after ``magic``, and its check
    value; :class:`ValueError` if it is damaged or of another format."""
    data = file.read_bytes()
    check = data[-16:]
    if _content_id([memoryview(data)[:-16]]) != check or not data.startswith(magic) or len(data) < len(magic) + 16:
        raise ValueError(f"{file} is damaged or of another format")
    return data[len(magic) : -16], check


def _read_derived(file: Path, saved: bytes) -> Derived:
    """What ``file`` keeps derived, if it was saved with the digests whose check value is
    ``saved``; :class:`ValueError` if not, or if it is damaged."""
    body, _ = _read_checked(file, _DERIVED_MAGIC)
    if body[:16] != saved:
        raise ValueError(f"{file} is of other cached digests")
    counts = struct.unpack_from("<QQQ", body, 16)
    sizes = struct.unpack_from("<QQQQ", body, 40)
    at = 72
    key_lists = []
    for count, size in zip((*counts, counts[2]), sizes, strict=True):
        key_lists.append(_split_keys(body[at : at + size], count))
        at += size
    directory_keys, documents, firsts, lasts = key_lists
    directory_count, run_count = counts[0], counts[2]
    columns = [body[at + 8 * directory_count * i : at + 8 * directory_count * (i + 1)] for i in range(4)]
    at += 32 * directory_count
    files = np.frombuffer(body, np.uint64, run_count, at).tolist()
    contents = body[at + 8 * run_count :]
    if len(contents) != 32 * run_count:
        raise ValueError(f"{file} is cut short")
    runs = [(first, last, count, contents[32 * i : 32 * (i + 1)].hex())
            for i, (first, last, count) in enumerate(zip(firsts, lasts, files, strict=True))]
    return Derived(DirectoryDigests.from_columns(directory_keys, columns), runs, documents)


def _split_keys(block: bytes, count: int) -> list[str]:
    keys = block.decode().split("\0") if count else []
    if len(keys) != count:
        raise ValueError("a key list of the wrong length")
    return keys

"""A local cache of file digests, so re-uploading a huge Zarr does not re-hash unchanged files.

Like dandi-cli's digest cache: a file whose size, modification time (ns) and inode are those
seen when it was last hashed keeps its MD5. One file per Zarr directory, replaced atomically:
the sorted keys, then one column of machine integers per field (size, mtime, inode, MD5), then
a checksum of it all. It is read and compared column by column in numpy, never an object per
file: at DANDI's 1.3 M-file Zarr it is ~75 MB, a line of text per file took ~15 µs to parse.

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

import contextlib
import hashlib
import itertools
import json
import os
import struct
import sys
import tempfile
from collections.abc import Buffer, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import platformdirs

from ..checksum import DirectoryDigests
from ..index import FileDigests
from ..packed import key_blocks, left_join
from ..records import JsonRecord
from .file_stats import FileStats

# the integers are the machine's: a cache is read by the machine that wrote it, or dropped
_MAGIC = f"dandi-icechunk digest cache 2 {sys.byteorder}\n".encode()
_DERIVED_MAGIC = f"dandi-icechunk derived digests 1 {sys.byteorder}\n".encode()
_STAT_TYPES = (np.int64, np.int64, np.uint64)  # size, mtime (ns), inode: FileStats' columns


@dataclass(frozen=True)
class Derived:
    """What an upload derived from its files' digests (the cached ones and its documents')."""

    directories: DirectoryDigests  # the digest of every directory
    runs: list[tuple[str, str, int, str]]  # its digest index's runs: first key, last key, files, content hash
    documents: list[str]  # sorted: the keys of the files kept in the index, not in the cache


@dataclass(frozen=True)
class CachedDigests:
    """What the cache knows of a listing's files."""

    files: FileDigests  # the MD5 of each listed file whose stat is the one it had when hashed
    unknown: np.ndarray  # the others: their rows in the listing
    derived: Derived | None  # from the files when the cache was saved, when kept
    stale: list[str]  # keys ``derived`` counted that ``files`` lacks: files gone, documents then
    stored_keys: bytes | None  # the listing's keys as stored, when they are the cached ones (no file added or gone)

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
    """MD5s of local files by path, valid while their :data:`FileStat` is unchanged."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

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
            cached_keys, cached, check = _read(self._file(root))
        except (OSError, ValueError, struct.error):
            return CachedDigests.none(stats)
        keys = stats.sorted_keys()
        stat = [np.frombuffer(column, dtype) for column, dtype in zip(stats.columns(), _STAT_TYPES, strict=True)]
        gone: list[str] = []
        stored_keys = cached_keys if _same_keys(cached_keys, stats) else None
        if stored_keys is not None:  # the same files, in the same rows: compared row for row
            known = np.logical_and.reduce([now == then for now, then in zip(stat, cached[:3], strict=True)])
            listed = at = np.flatnonzero(known)
        else:  # each listed file's row in the cache, or -1: one walk of both sorted key lists
            rows = cached_keys.decode().split("\0") if cached_keys else []
            joined = left_join(zip(keys, keys), zip(rows, range(len(rows))))
            positions = np.fromiter((-1 if row is None else row for _, _, row in joined), np.int64, len(keys))
            kept = np.zeros(len(rows), bool)
            kept[positions[positions >= 0]] = True
            gone = list(map(rows.__getitem__, np.flatnonzero(~kept).tolist()))
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
            derived = _read_derived(self._file(root, ".derived"), check)
        except (OSError, ValueError, struct.error):
            return CachedDigests(files, unknown, None, [], stored_keys)
        return CachedDigests(files, unknown, derived, gone + derived.documents, stored_keys)

    def save(self, root: Path, stats: FileStats, digests: FileDigests, stored_keys: bytes | None = None) -> bytes:
        """Replace the cache of the Zarr at ``root`` with the MD5 of each file of ``stats`` (the
        listing it was hashed from): ``digests`` has the same keys. ``stored_keys``: those keys
        as the cache read them (:attr:`CachedDigests.stored_keys`), not encoded again. Returns
        the check value that binds to these digests what is derived from them (:meth:`save_derived`)."""
        if stats.sorted_keys() != digests.sorted_keys():
            raise ValueError("the digests to cache are of other files than the listing's")
        high, low, _ = digests.columns()
        key_parts = [stored_keys] if stored_keys is not None else list(key_blocks(stats))
        header = [_MAGIC, struct.pack("<QQ", len(stats), sum(map(len, key_parts)))]
        check = self._write_checked(self._file(root), itertools.chain(header, key_parts, stats.columns(), (high, low)))
        for before in (".tsv.gz", ".directories"):  # the text format, the directory digests alone (2026-11)
            self._file(root, before).unlink(missing_ok=True)
        return check

    def save_derived(self, root: Path, saved: bytes, derived: Derived) -> None:
        """Keep what was derived from the files of the Zarr at ``root`` cached by the
        :meth:`save` that returned ``saved`` and its documents (the files not in that
        listing): read back only with those digests, by :meth:`unchanged`."""
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
        with self._replacing(self._file(root, ".uploads.json")) as f:
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
        with self._replacing(self._file(root, ".scan.json")) as f:
            f.write(json.dumps(scan.to_json()).encode())

    def _uploads(self, root: Path) -> dict[str, dict]:
        try:
            uploads = json.loads(self._file(root, ".uploads.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return uploads if isinstance(uploads, dict) else {}

    def _write_checked(self, file: Path, parts: Iterable[Buffer]) -> bytes:
        """Replace ``file`` with ``parts`` followed by their BLAKE2b check value, which is returned."""
        check = hashlib.blake2b(digest_size=16)
        with self._replacing(file) as f:
            for part in parts:
                check.update(part)
                f.write(part)
            f.write(check.digest())
        return check.digest()

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


def _same_keys(cached: bytes, keys: Iterable[str]) -> bool:
    view, at = memoryview(cached), 0
    for block in key_blocks(keys):
        if view[at : at + len(block)] != block:
            return False
        at += len(block)
    return at == len(cached)


def _read(file: Path) -> tuple[bytes, list[np.ndarray], bytes]:
    """The keys (``\\0``-separated) and the five columns (size, mtime, inode, MD5 high and
    low 64 bits) of the cache ``file``, and its check value; :class:`ValueError` if it is
    damaged or cut short."""
    check = hashlib.blake2b(digest_size=16)
    with file.open("rb") as f:

        def read(n: int) -> bytes:
            data = f.read(n)
            if len(data) != n:
                raise ValueError(f"{file} is cut short")
            check.update(data)
            return data

        if read(len(_MAGIC)) != _MAGIC:
            raise ValueError(f"{file} is no digest cache of this format")
        rows, key_bytes = struct.unpack("<QQ", read(16))
        keys = read(key_bytes)
        columns = [np.frombuffer(read(8 * rows), dtype) for dtype in (*_STAT_TYPES, np.uint64, np.uint64)]
        if f.read() != check.digest():
            raise ValueError(f"{file} is damaged")
    return keys, columns, check.digest()


def _read_derived(file: Path, saved: bytes) -> Derived:
    """What ``file`` keeps derived, if it was saved with the digests whose check value is
    ``saved``; :class:`ValueError` if not, or if it is damaged."""
    data = file.read_bytes()
    body, stored = data[:-16], data[-16:]
    if hashlib.blake2b(body, digest_size=16).digest() != stored:
        raise ValueError(f"{file} is damaged")
    at = len(_DERIVED_MAGIC)
    if body[:at] != _DERIVED_MAGIC or body[at : at + 16] != saved:
        raise ValueError(f"{file} is of other cached digests")
    counts = struct.unpack_from("<QQQ", body, at + 16)
    sizes = struct.unpack_from("<QQQQ", body, at + 40)
    at += 72
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

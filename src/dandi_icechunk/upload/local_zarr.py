"""A Zarr directory on the uploader's machine: find its files, validate it, hash it.

Everything here happens before anything is written to a repository, so bad input is refused
with nothing changed. Every regular file is part of the asset and of its checksum, as in DANDI
today, except what dandi-cli itself leaves out (:data:`.walk.EXCLUDED_NAMES`). Files Icechunk
cannot hold (zero-byte chunks, files that belong to no array) are kept verbatim in the digest
index.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import operator
import os
from collections.abc import Buffer, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..checksum import DirectoryDigests
from ..errors import InvalidZarrError
from ..hierarchy import Hierarchy, check_keys, documents_among
from ..index import DigestIndex, EarlierRuns, FileDigest, FileDigests
from ..packed import key_blocks
from .digest_cache import CachedDigests, Derived, DigestCache, KeyScan
from .file_stats import FileStats
from .walk import Refused, list_tree

EXTRAS_MAX_BYTES = 64 * 1024 * 1024
"""Most bytes of non-Zarr files kept in the digest index (read on every upload and export)."""
_log = logging.getLogger("dandi_icechunk")
_first = operator.itemgetter(0)
_READ_BLOCK = 8 * 1024 * 1024
_HASH_BATCH = 256
_HASH_BATCH_BYTES = 64 * 1024 * 1024
_THREADED_MIN_FILE_SIZE = 16 * 1024
ProgressCallback = Callable[[int, int], None]
"""Called with (files, bytes) done since the last call."""
BatchMapper = Callable[..., Iterable[list[tuple[str, FileDigest]]]]
"""``map(hash_batch, batches)`` or its like: the digests of each batch, in any order."""


@dataclass(frozen=True)
class LocalZarr:
    """A validated local Zarr: its hierarchy, metadata documents and chunk files.

    Held per chunk file is its key and stat only (a 1.3 M-file Zarr is held by the uploader for
    the whole upload): its path and Icechunk key are derived when needed.
    """

    root: Path
    hierarchy: Hierarchy
    documents: dict[str, bytes]  # metadata documents, and files kept in the digest index
    size: int  # total bytes of all files, as listed
    stats: FileStats  # of the chunk files, when listed
    scan: KeyScan  # what scanning the listing found

    @property
    def file_count(self) -> int:
        """Number of files (documents and chunks)."""
        return len(self.documents) + len(self.stats)

    def path(self, key: str) -> str:
        """The local file of ``key``."""
        return os.path.join(self.root, key)

    def digest_index(
        self,
        workers: int = 2,
        progress: ProgressCallback | None = None,
        cache: DigestCache | None = None,
        map_batches: BatchMapper | None = None,
    ) -> DigestIndex:
        """MD5 and size of every file.

        Files are hashed in batches; threads only pay off for larger files (MD5 releases the
        GIL on big buffers, while many small reads mostly contend for it). With ``cache``,
        files unchanged since they were last hashed (size, mtime, inode) are not read. With
        ``map_batches``, the batches run there instead: on a Dask cluster, say
        (:mod:`.distributed`).
        """
        cached = cache.unchanged(self.root, self.stats) if cache else CachedDigests.none(self.stats)
        files = cached.files
        if progress:
            progress(len(files) + len(self.documents), files.total_size() + sum(map(len, self.documents.values())))
        keys, sizes, rows = self.stats.sorted_keys(), self.stats.columns()[0], cached.unknown.tolist()
        to_hash = list(zip(map(keys.__getitem__, rows), map(sizes.__getitem__, rows), strict=True))
        batches = _batches((k, self.path(k), size) for k, size in to_hash)
        with contextlib.ExitStack() as stack:
            if map_batches is None and workers > 1 and _in_threads([size for _, size in to_hash]):
                map_batches = stack.enter_context(ThreadPoolExecutor(max_workers=workers)).map
            for digests in (map_batches or map)(hash_batch, batches):
                files.update(digests)
                if progress:
                    progress(len(digests), sum(d.size for _, d in digests))
        return self.index_of(files, cache, cached, list(map(_first, to_hash)))

    def index_of(
        self,
        chunk_digests: FileDigests,
        cache: DigestCache | None = None,
        cached: CachedDigests | None = None,
        hashed: Iterable[str] = (),
    ) -> DigestIndex:
        """The digest index of this Zarr given every chunk's digest (the documents are hashed
        here); the chunks' digests are saved in ``cache`` for the next upload, with what is
        derived from them: the digest of every directory and the index's runs, which the next
        upload computes again only where files changed. ``cached``: what the cache knew
        (:meth:`DigestCache.unchanged`), and ``hashed`` the keys whose digests it did not know.
        ``chunk_digests`` is taken over, not copied: the documents' digests are added to it."""
        saved = cache.save(self.root, self.stats, chunk_digests, cached) if cache else None
        chunk_digests.update((k, FileDigest.of(v)) for k, v in self.documents.items())
        if cache is None or saved is None:  # the checksum is computed when it is asked for
            return DigestIndex(self.hierarchy.zarr_format, chunk_digests, dict(self.documents))
        documents = sorted(self.documents)
        earlier_runs = None
        if cached is None or cached.derived is None:
            directories = DirectoryDigests.of(chunk_digests.rows())
        else:
            before = cached.derived
            changed = [*hashed, *cached.stale, *documents]  # every key whose digest may differ
            directories = before.directories.updated(chunk_digests, changed)
            if len(changed) < len(chunk_digests) // 4:  # a change of most files hashes every run anyway
                same_keys = cached.same_keys and before.documents == documents
                earlier_runs = EarlierRuns.of(before.runs, changed, same_keys=same_keys)
        index = DigestIndex(self.hierarchy.zarr_format, chunk_digests, dict(self.documents), directories.checksum,
                            earlier_runs)
        cache.save_derived(self.root, saved, Derived(directories, EarlierRuns.kept(index.runs), documents))
        return index

    def chunks(self, keys: Sequence[str], sizes: Sequence[int]) -> list[ChunkFile]:
        """What sending each chunk of ``keys`` (array by array, as
        :meth:`~dandi_icechunk.hierarchy.Hierarchy.in_grid_order` gives them; ``sizes`` as
        listed) needs, in values a worker process can take."""
        out: list[ChunkFile] = []
        for grid, start, end in self.hierarchy.array_runs(keys):
            run = keys[start:end]
            out += map(ChunkFile, run, map(self.path, run), grid.icechunk_keys(run), sizes[start:end])
        return out


def _in_threads(sizes: Sequence[int]) -> bool:
    """Whether files of ``sizes`` (those to hash, not the whole Zarr's: an update of a few small
    files of a big Zarr hashes them in place) are hashed faster in threads than in place."""
    return sum(sizes) >= _THREADED_MIN_FILE_SIZE * max(len(sizes), 1)


def _batches(items: Iterable[tuple[str, str, int]]) -> Iterator[list[tuple[str, str, int]]]:
    """(key, path, size) in batches of at most ``_HASH_BATCH`` files and, past its first file,
    ``_HASH_BATCH_BYTES``: a Zarr of 147 shards is hashed on every core too, not as one batch."""
    batch: list[tuple[str, str, int]] = []
    held = 0
    for item in items:
        if batch and (len(batch) == _HASH_BATCH or held + item[2] > _HASH_BATCH_BYTES):
            yield batch
            batch, held = [], 0
        batch.append(item)
        held += item[2]
    if batch:
        yield batch


class ChunkFile(NamedTuple):
    """One chunk file to send: logical key, file path, Icechunk key, size when listed."""

    key: str
    path: str
    icechunk_key: str
    size: int


def refuse_changed(chunk: ChunkFile, expected: FileDigest, digest: FileDigest) -> None:
    """Refuse a file read for sending whose ``digest`` is no longer the ``expected`` one
    (changed since it was hashed): every byte committed is a byte that was hashed, even after
    an edit in place that kept the size and modification time."""
    if digest != expected:
        raise InvalidZarrError(
            f"{chunk.key} changed while it was being uploaded; nothing was committed. "
            "Wait until whatever writes the Zarr has finished, then run the upload again"
        )


def read_file(path: str | Path, key: str, size: int = 0) -> bytes:
    """The bytes of ``path``, ``size`` of them as listed (the file is read to its end whatever
    it holds now); unreadable files raise :class:`InvalidZarrError` naming ``key``."""
    parts: list[bytes] = []
    _read_to_end(path, key, size + 1, parts.append)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_file_into(path: str | Path, key: str, buffer: Buffer) -> int | None:
    """Read ``path`` into the writable ``buffer``; how many bytes it held, or None when it holds
    more than ``buffer`` (it grew since it was listed: read it with :func:`read_file`).
    Unreadable files raise :class:`InvalidZarrError` naming ``key``."""
    view = memoryview(buffer).cast("B")
    total = 0
    try:
        with open(path, "rb", buffering=0) as file:
            while total < len(view) and (got := file.readinto(view[total:])):
                total += got
            if total == len(view) and file.read(1):
                return None
    except OSError as exc:
        raise _unreadable(key, exc) from None
    return total


def hash_batch(part: list[tuple[str, str, int]]) -> list[tuple[str, FileDigest]]:
    """MD5 and size of each (key, path, size when listed) of ``part``."""
    return [(key, hash_file(path, key, size)) for key, path, size in part]


def hash_file(path: str | Path, key: str, size: int) -> FileDigest:
    """MD5 and size of ``path`` (``size`` as listed), read a block at most at a time: the file
    is never held whole."""
    md5 = hashlib.md5()
    total = _read_to_end(path, key, min(size + 1, _READ_BLOCK), md5.update)
    return FileDigest(md5.hexdigest(), total)


def _read_to_end(path: str | Path, key: str, first: int, take: Callable[[bytes], object]) -> int:
    """Give ``take`` the bytes of ``path``, ``first`` of them and then a block at a time to its
    end (a file that grew since it was listed is read whole); how many there were.

    Plain ``os.read`` calls: a 1 KiB file took 13.6 µs to read and 14.3 µs to hash through
    ``open()`` and its buffered file object, 5.5 and 9.6 µs so (`docs/per-file-work.md`). The
    first read asks for what the listing said, not a whole block: a block-sized allocation for
    a small file is an mmap and page faults whenever ``MALLOC_TRIM_THRESHOLD_`` is set, as
    Dask's nanny sets it."""
    total = 0
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            want = first
            while block := os.read(fd, want):
                take(block)
                total += len(block)
                want = _READ_BLOCK
        finally:
            os.close(fd)
    except OSError as exc:
        raise _unreadable(key, exc) from None
    return total


def _unreadable(key: str, exc: OSError) -> InvalidZarrError:
    return InvalidZarrError(f"cannot read {key} ({exc.strerror or exc}); fix its permissions or remove it")


@dataclass(frozen=True)
class LocalListing:
    """Every file of a local Zarr directory as listed, before anything is read or validated."""

    root: Path
    stats: FileStats  # the file of a key is root/key
    fingerprint: str  # changes whenever a file is added, removed, or its stat changes
    keys_digest: str  # changes whenever a file is added or removed

    @classmethod
    def of(cls, path: str | Path, workers: int = 1) -> LocalListing:
        """List the Zarr directory ``path``, a large one in up to ``workers`` processes
        (:func:`~.walk.list_tree`); a path that is no directory, or that cannot be listed
        (permissions, symlink loops, special files), raises :class:`InvalidZarrError`."""
        root = Path(path)
        if not root.is_dir():
            raise InvalidZarrError(f"{root} is not a directory; give the path of a .zarr directory")
        try:
            tree = list_tree(str(root), workers)
        except Refused as exc:
            raise InvalidZarrError(str(exc)) from None
        stats, excluded = FileStats.from_columns(tree.keys, tree.columns), tree.excluded
        fingerprint = hashlib.blake2b(f"{len(stats)}\n".encode(), digest_size=20)  # the count fixes where keys end
        try:
            for block in key_blocks(stats):
                fingerprint.update(block)
        except UnicodeEncodeError:
            bad = next(k for k in stats if not k.isascii() and _not_utf8(k))
            shown = os.fsencode(bad).decode(errors="backslashreplace")
            raise InvalidZarrError(f"{shown}: its name is not UTF-8, which Zarr keys must be; rename it") from None
        keys_digest = fingerprint.hexdigest()
        for column in stats.columns():
            fingerprint.update(column)
        if excluded:
            _log.warning("%s: left out as dandi-cli does: %s", root, _shown(sorted(excluded)))
        return cls(root, stats, fingerprint.hexdigest(), keys_digest)


def _not_utf8(key: str) -> bool:
    try:
        key.encode()
    except UnicodeEncodeError:
        return True
    return False


def scan_local_zarr(path: str | Path | LocalListing, known: KeyScan | None = None) -> LocalZarr:
    """Find and validate every file of the Zarr directory ``path`` (or of a listing of it,
    whose stats the result takes over). ``known``: the scan of a listing before
    (:attr:`LocalZarr.scan`); what follows from the same keys and documents is not found again.

    Raises :class:`InvalidZarrError` for anything that cannot be uploaded as it is: not a
    directory, no or broken metadata, mixed v2/v3, symlink loops, special files, invalid keys,
    and files that are neither metadata nor a chunk of an array.
    """
    listing = path if isinstance(path, LocalListing) else LocalListing.of(path)
    root, stats = listing.root, listing.stats
    if known is not None and known.keys_digest != listing.keys_digest:
        known = None
    if known is None:
        check_keys(stats)
    named = known.named_documents if known is not None else documents_among(stats)
    documents = {key: read_file(root / key, key) for key in named}
    keys, sizes = stats.sorted_keys(), np.frombuffer(stats.columns()[0], np.int64)
    for row in np.flatnonzero(sizes == 0).tolist():  # Icechunk refuses empty chunks
        documents[keys[row]] = read_file(root / keys[row], keys[row])
    size = int(sizes.sum())
    stats.remove(documents.keys())
    try:
        hierarchy = Hierarchy.from_documents(documents)
    except InvalidZarrError as exc:
        raise InvalidZarrError(f"{root}: {exc}") from None
    digest = hashlib.blake2b(digest_size=20)
    for key in sorted(documents):
        digest.update(f"{key}\0{len(documents[key])}\0".encode())
        digest.update(documents[key])
    documents_digest = digest.hexdigest()
    if known is not None and known.documents_digest == documents_digest:
        stray = known.strays
    else:
        stray = hierarchy.strays(stats.sorted_keys())
    if stray:
        extra_bytes = sum(stats[k][0] for k in stray)
        if extra_bytes > EXTRAS_MAX_BYTES:
            raise InvalidZarrError(
                f"{root}: {len(stray)} file(s) belong to no Zarr array ({_shown(stray)}) and hold "
                f"{extra_bytes} bytes, more than the {EXTRAS_MAX_BYTES} kept beside the arrays; "
                "move the large ones out of the Zarr directory and run again"
            )
        _log.warning(
            "%s: %d file(s) belong to no Zarr array (%s); uploaded as they are (part of the "
            "asset and its checksum), not readable through zarr", root, len(stray), _shown(stray),
        )
        for key in stray:
            documents[key] = read_file(root / key, key)
        stats.remove(set(stray))
    scan = KeyScan(listing.keys_digest, list(named), documents_digest, list(stray))
    return LocalZarr(root, hierarchy, documents, size, stats, scan)


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

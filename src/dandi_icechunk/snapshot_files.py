"""A snapshot's files as they were uploaded: read one, list them, read every one back, verify.

Chunk bytes come from Icechunk (stored unchanged), metadata documents from the digest index
(kept verbatim), so a Zarr v2 upload comes back as the same Zarr v2 files. The HTTP view and the
archive's files endpoint serve them one at a time (:class:`SnapshotFiles`); readers export them
(:mod:`dandi_icechunk.read.export`); the archive's audit and ``dandi-icechunk verify`` check them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import icechunk
from zarr.buffer import default_buffer_prototype

from . import aio
from .aio import run_bounded
from .errors import IntegrityError, first_line
from .hierarchy import Hierarchy, node_key
from .index import DigestIndex, FileDigest, FileDigests, IndexReader
from .objects import DEFAULT_JOBS
from .progress import NoProgress, Progress
from .records import JsonRecord
from .session import ZarrRepository

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_INLINE_HANDLE_MAX = 256 * 1024
READ_CHUNK_REFS = 20_000
"""Chunk refs of the manifests kept by a read of every file (split by split, in grid order: a
few splits are enough) and by each snapshot the HTTP view has open (Icechunk's default is
15 M): splits of chunks kept inline hold their bytes, up to ~80 MB in 20,000 refs
(:mod:`~dandi_icechunk.chunk_layout`)."""


@dataclass(frozen=True)
class SnapshotFiles:
    """One snapshot's files, opened for reading one at a time; the digest index is read a shard
    at a time, so memory does not grow with the Zarr.

    >>> files = SnapshotFiles.open(repository, snapshot_id)
    >>> files.list(prefix="0/", limit=1000)
    >>> asyncio.run(files.read("0/.zarray"))
    """

    zarr_id: str
    snapshot_id: str
    written_at: datetime
    index: IndexReader
    hierarchy: Hierarchy | None
    store: Any

    @classmethod
    def open(
        cls, repository: ZarrRepository, snapshot_id: str, *, index: DigestIndex | None = None,
        chunk_refs: int | None = None,
    ) -> SnapshotFiles:
        """Open ``snapshot_id`` (its digest index is read as needed, unless given whole), keeping
        at most ``chunk_refs`` chunk refs of the manifests read (Icechunk's default: 15 M)."""
        reader = repository.index_reader(snapshot_id) if index is None else IndexReader.of(index)
        icechunk_repo = repository.icechunk
        if chunk_refs is not None:
            caching = icechunk.CachingConfig(num_chunk_refs=chunk_refs)
            icechunk_repo = icechunk_repo.reopen(config=icechunk.RepositoryConfig(caching=caching))
        return cls(
            zarr_id=repository.zarr_id,
            snapshot_id=snapshot_id,
            written_at=repository.icechunk.lookup_snapshot(snapshot_id).written_at,
            index=reader,
            hierarchy=Hierarchy.from_documents(reader.documents) if reader.documents else None,
            store=icechunk_repo.readonly_session(snapshot_id=snapshot_id).store,
        )

    def in_reading_order(self, keys: Iterable[str]) -> list[str]:
        """``keys``: files that are no chunk first, then chunks array by array in grid order, so
        that each manifest split is read once (and chunks kept inside it come from memory)."""
        if self.hierarchy is None:
            return sorted(keys)
        chunks, others = self.hierarchy.partition(keys)
        return others + self.hierarchy.in_grid_order(chunks)

    def digest(self, key: str) -> FileDigest | None:
        """MD5 and size of file ``key``, or None when the snapshot has no such file."""
        return self.index.get(key)

    def list(self, *, prefix: str = "", after: str = "", limit: int | None = None) -> list[str]:
        """Keys starting with ``prefix`` (as a string, like S3's ``Prefix``) that sort after
        ``after``, in order, at most ``limit``."""
        return list(itertools.islice(self.index.keys(prefix=prefix, after=after), limit))

    def is_directory(self, path: str) -> bool:
        """Whether ``path`` ("" is the root) holds any file."""
        return path == "" or bool(self.list(prefix=path.rstrip("/") + "/", limit=1))

    async def read(self, key: str) -> bytes | None:
        """The file's bytes as uploaded; ``None`` for a chunk missing from the repository."""
        if key in self.index.documents:
            return self.index.documents[key]
        return await _get_chunk(self.store, self.hierarchy, key)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(first, last) byte that a single HTTP ``Range`` header asks of a file of ``size`` bytes; None for the whole file, "invalid" if unsatisfiable."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if not match or match.groups() == ("", ""):
        return "invalid"
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(size - 1, int(last)) if last else size - 1
    return "invalid" if start > end or start >= size else (start, end)


@dataclass(frozen=True)
class VerifyResult(JsonRecord):
    """The outcome of recomputing a snapshot's checksum from its stored data."""

    zarr_id: str
    snapshot_id: str
    expected_checksum: str | None
    actual_checksum: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every file is intact and the checksum matches."""
        return not self.problems and self.expected_checksum == self.actual_checksum

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, with ``ok``."""
        return {**super().to_json(), "ok": self.ok}


def read_snapshot_files(
    repository: ZarrRepository,
    snapshot_id: str,
    index: DigestIndex,
    handle: Callable[[str, bytes | None], None],
    jobs: int,
    progress: Progress,
) -> None:
    """Call ``handle(key, data)`` for every file of the snapshot: in place for small files (a
    thread hop costs more than hashing or writing them), in worker threads for larger ones.

    ``data`` is ``None`` for a chunk missing from the repository.
    """
    try:
        files = SnapshotFiles.open(repository, snapshot_id, index=index, chunk_refs=READ_CHUNK_REFS)
    except icechunk.IcechunkError as exc:
        raise IntegrityError(
            f"snapshot {snapshot_id} of {repository.zarr_id} cannot be read: {first_line(exc)}; "
            "run `dandi-icechunk audit --repair` on its publication"
        ) from None
    progress.start("reading", index.file_count, index.size)

    async def one(key: str) -> None:
        data = await files.read(key)
        if data is None or len(data) <= _INLINE_HANDLE_MAX:
            handle(key, data)
        else:
            await asyncio.to_thread(handle, key, data)
        progress.advance(1, len(data or b""))

    try:
        aio.run(run_bounded(one, files.in_reading_order(index.files), jobs))
    finally:
        progress.finish()


async def _get_chunk(store: Any, hierarchy: Hierarchy | None, key: str) -> bytes | None:
    """The stored bytes of chunk ``key``; ``None`` when it is missing or unreadable."""
    target = hierarchy.icechunk_key(key) if hierarchy else None
    if target is None:
        return None
    try:
        buffer = await store.get(target, default_buffer_prototype())
    except icechunk.IcechunkError:  # the chunk object is gone from storage
        return None
    return buffer.to_bytes() if buffer is not None else None


def verify_snapshot(
    repository: ZarrRepository,
    *,
    snapshot_id: str | None = None,
    tag: str | None = None,
    branch: str | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
) -> VerifyResult:
    """Recompute the ``dandi-zarr-checksum`` of a snapshot from the stored bytes and compare it
    with the one recorded at commit; also check every file against its recorded MD5 and that
    Icechunk's node metadata matches the uploaded documents."""
    sid = repository.resolve(snapshot_id=snapshot_id, tag=tag, branch=branch)
    info = repository.commit_info(sid)
    index = repository.index(sid)
    problems: list[str] = []
    # Only what differs from the index is kept: every digest again would be ~40 MB at 1.3 M files.
    differing: dict[str, FileDigest | None] = {}

    def check(key: str, data: bytes | None) -> None:
        if data is None:
            problems.append(f"{key}: missing from the repository (or unreadable)")
            differing[key] = None
            return
        digest = FileDigest.of(data)
        if digest != index.files[key]:
            problems.append(f"{key}: stored bytes do not match the uploaded file's MD5/size")
            differing[key] = digest

    read_snapshot_files(repository, sid, index, check, jobs, progress or NoProgress())
    try:
        problems.extend(_check_nodes(repository, sid, index))
    except icechunk.IcechunkError as exc:  # the snapshot or a manifest is damaged
        problems.append(f"snapshot {sid} cannot be read: {first_line(exc)}")
    return VerifyResult(
        zarr_id=repository.zarr_id,
        snapshot_id=sid,
        expected_checksum=info.zarr_checksum if info else None,
        actual_checksum=_checksum_of_stored(index, differing),
        problems=sorted(problems),
    )


def _checksum_of_stored(index: DigestIndex, differing: dict[str, FileDigest | None]) -> str:
    """The checksum of the stored files: the index's, with the files that differ from it as
    stored (``None``: missing)."""
    if not differing:
        return index.zarr_checksum()
    stored = FileDigests(
        (key, digest) for key, recorded in index.files.items()
        if (digest := differing.get(key, recorded)) is not None
    )
    return DigestIndex(index.zarr_format, stored).zarr_checksum()


def _check_nodes(repository: ZarrRepository, snapshot_id: str, index: DigestIndex) -> list[str]:
    if not index.documents:
        return []
    store = repository.icechunk.readonly_session(snapshot_id=snapshot_id).store
    prototype = default_buffer_prototype()
    nodes = Hierarchy.from_documents(index.documents).nodes

    async def run() -> list[str]:
        problems = []
        for path, node in nodes.items():
            key = node_key(path)
            stored = await store.get(key, prototype)
            if stored is None:
                problems.append(f"{key}: node missing from the repository")
            elif json.loads(stored.to_bytes()) != json.loads(node.icechunk_document):
                problems.append(f"{key}: node metadata differs from the uploaded metadata")
        return problems

    return aio.run(run())

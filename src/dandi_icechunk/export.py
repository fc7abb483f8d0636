"""Read a snapshot back as the files that were uploaded: export to a directory, or verify.

Chunk bytes come from Icechunk (stored unchanged), metadata documents from the digest index
(kept verbatim), so a Zarr v2 upload comes back as the same Zarr v2 files.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import icechunk
from zarr.core.buffer import default_buffer_prototype

from .errors import DandiIcechunkError, IntegrityError
from .hierarchy import Hierarchy
from .index import DigestIndex, FileDigest
from .progress import NoProgress, Progress
from .records import JsonRecord
from .session import ZarrRepository

DEFAULT_JOBS = 16


@dataclass(frozen=True)
class ExportResult(JsonRecord):
    """What an export wrote."""

    zarr_id: str
    snapshot_id: str
    destination: str
    file_count: int
    size: int
    zarr_checksum: str


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


def _read_snapshot(
    repository: ZarrRepository,
    snapshot_id: str,
    index: DigestIndex,
    handle: Callable[[str, bytes | None], None],
    jobs: int,
    progress: Progress,
) -> None:
    """Call ``handle(key, data)`` (in worker threads) for every file of the snapshot.

    ``data`` is ``None`` for a chunk missing from the repository.
    """
    session = repository.icechunk.readonly_session(snapshot_id=snapshot_id)
    store = session.store
    hierarchy = Hierarchy.from_documents(index.documents) if index.documents else None
    progress.start("reading", index.file_count, index.size)

    async def run() -> None:
        semaphore = asyncio.Semaphore(jobs)

        async def one(key: str) -> None:
            async with semaphore:
                if key in index.documents:
                    data: bytes | None = index.documents[key]
                else:
                    data = await _get_chunk(store, hierarchy, key)
                await asyncio.to_thread(handle, key, data)
                progress.advance(1, len(data or b""))

        tasks = [asyncio.create_task(one(k)) for k in sorted(index.files)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    try:
        asyncio.run(run())
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


def export_snapshot(
    repository: ZarrRepository,
    destination: str | Path,
    *,
    snapshot_id: str | None = None,
    tag: str | None = None,
    branch: str | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
) -> ExportResult:
    """Write one snapshot (default: tip of ``main``) to ``destination`` as the uploaded files.

    ``destination`` must not exist. Files are written to ``destination.partial`` and renamed
    at the end, so an interrupted export never leaves a half-written Zarr under its name.
    """
    dest = Path(destination)
    if dest.exists():
        raise DandiIcechunkError(f"{dest} already exists; give a new directory to export into")
    sid = repository.resolve(snapshot_id=snapshot_id, tag=tag, branch=branch)
    index = repository.index(sid)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    missing: list[str] = []

    def write(key: str, data: bytes | None) -> None:
        if data is None:
            missing.append(key)
            return
        path = partial / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    _read_snapshot(repository, sid, index, write, jobs, progress or NoProgress())
    if missing:
        raise IntegrityError(
            f"snapshot {sid} of {repository.zarr_id} lacks {len(missing)} chunk(s) "
            f"(first: {sorted(missing)[0]}); nothing was exported. Run `dandi-icechunk verify`"
        )
    os.replace(partial, dest)
    return ExportResult(
        zarr_id=repository.zarr_id,
        snapshot_id=sid,
        destination=str(dest),
        file_count=index.file_count,
        size=index.size,
        zarr_checksum=index.zarr_checksum(),
    )


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
    actual: dict[str, FileDigest] = {}
    problems: list[str] = []

    def check(key: str, data: bytes | None) -> None:
        if data is None:
            problems.append(f"{key}: missing from the repository (or unreadable)")
            return
        digest = FileDigest(hashlib.md5(data).hexdigest(), len(data))
        actual[key] = digest
        if digest != index.files[key]:
            problems.append(f"{key}: stored bytes do not match the uploaded file's MD5/size")

    _read_snapshot(repository, sid, index, check, jobs, progress or NoProgress())
    problems.extend(_check_nodes(repository, sid, index))
    return VerifyResult(
        zarr_id=repository.zarr_id,
        snapshot_id=sid,
        expected_checksum=info.zarr_checksum if info else None,
        actual_checksum=DigestIndex(index.zarr_format, actual).zarr_checksum(),
        problems=sorted(problems),
    )


def _check_nodes(repository: ZarrRepository, snapshot_id: str, index: DigestIndex) -> list[str]:
    if not index.documents:
        return []
    store = repository.icechunk.readonly_session(snapshot_id=snapshot_id).store
    prototype = default_buffer_prototype()
    nodes = Hierarchy.from_documents(index.documents).nodes

    async def run() -> list[str]:
        problems = []
        for path, node in nodes.items():
            key = f"{path}/zarr.json" if path else "zarr.json"
            stored = await store.get(key, prototype)
            if stored is None:
                problems.append(f"{key}: node missing from the repository")
            elif json.loads(stored.to_bytes()) != json.loads(node.icechunk_document):
                problems.append(f"{key}: node metadata differs from the uploaded metadata")
        return problems

    return asyncio.run(run())

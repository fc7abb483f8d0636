"""Send chunk files into a session's store: bounded in parallel transfers and in bytes held,
each chunk's bytes checked against (or hashed into) its digest as they are read for sending.
The same code runs in the uploading process and in each Dask worker (:mod:`.distributed`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from zarr.buffer import cpu

from ..aio import run_bounded
from ..index import FileDigest, FileDigests
from .local_zarr import ChunkFile, read_file, refuse_changed

CHUNK_MEMORY_BUDGET = 768 * 1024 * 1024
"""Most chunk bytes an upload holds in memory at once (a chunk larger than this is sent alone)."""
_INLINE_READ_MAX = 1024 * 1024


async def write_chunks(
    store: Any,
    chunks: Iterable[ChunkFile],
    jobs: int,
    advance: Callable[[int, int], None],
    *,
    expected: Mapping[str, FileDigest] | None = None,
    hashed: FileDigests | dict[str, FileDigest] | None = None,
) -> None:
    """Write each chunk file to ``store``, hashing the bytes sent (into ``hashed``, if given). A
    chunk must still have its digest in ``expected``, if given (else :class:`InvalidZarrError`)."""

    def checked(chunk: ChunkFile, data: bytes) -> FileDigest:
        digest = FileDigest.of(data)  # what is sent is what was hashed
        if expected is not None:
            refuse_changed(chunk, expected[chunk.key], digest)
        return digest

    async def one(chunk: ChunkFile) -> None:
        if chunk.size <= _INLINE_READ_MAX:  # a thread hop costs more than reading a small chunk in place
            data = read_file(chunk.path, chunk.key, chunk.size)
            digest = checked(chunk, data)
            await store.set(chunk.icechunk_key, cpu.Buffer.from_bytes(data))
        else:
            data = await asyncio.to_thread(read_file, chunk.path, chunk.key, chunk.size)
            # Hashed while it is sent (MD5 lets go of the GIL): a big chunk's hash takes as long
            # as a good part of its PUT. A chunk that fails its check is never committed.
            sending = asyncio.create_task(store.set(chunk.icechunk_key, cpu.Buffer.from_bytes(data)))
            sending.add_done_callback(_retrieved)  # its error is read even when the refusal is raised
            try:
                digest = await asyncio.to_thread(checked, chunk, data)
            except BaseException:
                sending.cancel()
                raise
            await sending
        if hashed is not None:
            hashed[chunk.key] = digest
        advance(1, len(data))

    await run_bounded(one, chunks, jobs, weight=lambda c: c.size, budget=CHUNK_MEMORY_BUDGET)


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()

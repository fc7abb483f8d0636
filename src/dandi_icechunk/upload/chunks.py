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
from .local_zarr import ChunkFile, read_hashed, read_unchanged

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
    """Write each chunk file to ``store``. A chunk in ``expected`` must still have that digest
    (else :class:`InvalidZarrError`); the others are hashed as read, into ``hashed``."""

    def read(chunk: ChunkFile) -> tuple[bytes, FileDigest | None]:
        if expected is not None:
            return read_unchanged(chunk, expected[chunk.key]), None
        return read_hashed(chunk)

    async def one(chunk: ChunkFile) -> None:
        # A thread hop costs more than reading a small chunk in place.
        data, digest = read(chunk) if chunk.size <= _INLINE_READ_MAX else await asyncio.to_thread(read, chunk)
        await store.set(chunk.icechunk_key, cpu.Buffer.from_bytes(data))
        if hashed is not None and digest is not None:
            hashed[chunk.key] = digest
        advance(1, len(data))

    await run_bounded(one, chunks, jobs, weight=lambda c: c.size, budget=CHUNK_MEMORY_BUDGET)

"""Uploads past one machine, on Dask (``dask.distributed``).

The workers hash the files and send the chunks, each task into its own forked Icechunk session
(``Session.fork``); the uploading process merges the forks into the upload's session and makes
the one commit as always: same checksum, digest index and atomicity as an upload in one process,
and a failed task leaves nothing committed. Every worker must see the Zarr at the same path (a
shared filesystem) and reach the bucket; the forks carry the repository's credentials to them.

A fork can only write chunks of arrays that exist in the snapshot it starts from, so an upload
that makes or changes nodes first commits them to a scratch branch of its own
(:data:`SCRATCH_BRANCH_PREFIX`), forks from there, and deletes the branch: that staging
snapshot is never on the upload's branch (``gc`` removes a scratch branch a crash left behind).

>>> from distributed import Client
>>> upload_zarr("big.ome.zarr", location, zarr_id, dask=Client("tcp://scheduler:8786"))
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import icechunk

from .. import aio
from ..errors import InvalidArgumentError, first_line
from ..index import FileDigest, FileDigests
from ..session import scratch_branch
from .chunks import write_chunks
from .local_zarr import BatchMapper, ChunkFile

if TYPE_CHECKING:
    from distributed import Client

_PART_FILES = 4096
_PART_BYTES = 1024 * 1024 * 1024


class _NodeWrites(Protocol):
    def __bool__(self) -> bool: ...
    async def apply(self, store: Any) -> None: ...


def connect(address: str, *, timeout: float = 10) -> Client:
    """A client of the Dask scheduler at ``address`` (``tcp://host:8786``)."""
    try:
        from distributed import Client
    except ImportError:
        raise InvalidArgumentError(
            "uploading on Dask needs the dask extra: pip install 'dandi-icechunk[dask]'"
        ) from None
    try:
        return Client(address, timeout=timeout)
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(
            f"cannot reach the Dask scheduler at {address} ({first_line(exc)}); start it "
            "(`dask scheduler`) or give its address"
        ) from None


def hash_on(client: Client) -> BatchMapper:
    """A ``map_batches`` for :meth:`LocalZarr.digest_index` that hashes on ``client``'s workers,
    several batches per task (a task costs about what hashing a few hundred small files does)."""

    def map_batches(hash_batch: Callable[[list[Any]], list[Any]], batches: Iterable[list[Any]]) -> Iterator[list[Any]]:
        batches = list(batches)
        size = _files_per_task(client, sum(map(len, batches)))
        tasks: list[list[list[Any]]] = [[]]
        for batch in batches:
            if tasks[-1] and sum(map(len, tasks[-1])) + len(batch) > size:
                tasks.append([])
            tasks[-1].append(batch)
        futures = client.map(_run_batches, [hash_batch] * len(tasks), tasks, pure=False)
        return _completed(client, futures)

    return map_batches


def _run_batches[T, R](work: Callable[[list[T]], list[R]], batches: list[list[T]]) -> list[R]:
    return [result for batch in batches for result in work(batch)]


def _files_per_task(client: Client, files: int) -> int:
    """At least four tasks per worker (so that a slow one does not hold up the end), at most
    :data:`_PART_FILES` files each."""
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    return max(1, min(_PART_FILES, -(-files // (4 * workers))))


def write_on_dask(
    client: Client,
    repository: icechunk.Repository,
    session: icechunk.Session,
    nodes: _NodeWrites,
    chunks: list[ChunkFile],
    jobs: int,
    advance: Callable[[int, int], None],
    *,
    expected: Mapping[str, FileDigest] | None = None,
    hashed: FileDigests | dict[str, FileDigest] | None = None,
) -> None:
    """Apply ``nodes`` and send ``chunks`` into ``session`` (which has no changes yet), the
    chunks from ``client``'s workers, ``jobs`` transfers per task."""
    node_fork = None
    if nodes:
        node_fork = session.fork()
        aio.run(nodes.apply(node_fork.store))
    parts = list(_parts(chunks, _files_per_task(client, len(chunks))))
    forks = []
    with _fork_source(repository, session, node_fork) as source:
        futures = client.map(
            _write_part,
            [source.fork() for _ in parts],
            parts,
            [None if expected is None else {c.key: expected[c.key] for c in part} for part in parts],
            jobs=jobs,
            pure=False,
        )
        for fork, digests, files, size in _completed(client, futures):
            forks.append(fork)
            if hashed is not None:
                hashed.update(digests)
            advance(files, size)
    session.merge(*([node_fork] if node_fork else []), *forks)


def _write_part(
    fork: icechunk.ForkSession,
    chunks: list[ChunkFile],
    expected: dict[str, FileDigest] | None,
    *,
    jobs: int,
) -> tuple[icechunk.ForkSession, dict[str, FileDigest], int, int]:
    """One task, on a worker: send ``chunks`` into ``fork``; the fork, digests and amount sent."""
    hashed: dict[str, FileDigest] = {}
    sent = [0, 0]

    def advance(files: int, size: int) -> None:
        sent[0] += files
        sent[1] += size

    aio.run(write_chunks(fork.store, chunks, jobs, advance, expected=expected, hashed=hashed))
    return fork, hashed, sent[0], sent[1]


def _parts(chunks: list[ChunkFile], files: int) -> Iterable[list[ChunkFile]]:
    part: list[ChunkFile] = []
    size = 0
    for chunk in chunks:
        if part and (len(part) == files or size + chunk.size > _PART_BYTES):
            yield part
            part, size = [], 0
        part.append(chunk)
        size += chunk.size
    if part:
        yield part


@contextlib.contextmanager
def _fork_source(
    repository: icechunk.Repository, session: icechunk.Session, node_fork: icechunk.ForkSession | None
) -> Iterator[icechunk.Session]:
    """The session the chunk writers fork from: ``session`` itself, or, when the upload writes
    nodes, a session on a scratch branch whose tip is ``session``'s base plus those nodes."""
    if node_fork is None:
        yield session
        return
    with scratch_branch(repository, session.snapshot_id) as scratch:
        staging = repository.writable_session(scratch)
        staging.merge(node_fork)
        staging.commit("nodes of an upload in progress, for its workers (never on a branch of record)")
        yield repository.writable_session(scratch)


def _completed(client: Client, futures: list[Any]) -> Iterator[Any]:
    """Each future's result as it completes; the first failure cancels the rest and is raised."""
    from distributed import as_completed

    try:
        for _, result in as_completed(futures, with_results=True):
            yield result
    finally:
        client.cancel(futures)

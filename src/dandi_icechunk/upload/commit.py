"""Upload a local Zarr into its repository: one commit, only what changed.

The flow: scan and validate the local Zarr, hash it (MD5 per file, as DANDI does), compare with
the digest index of the branch tip, write changed chunks in parallel into a writable session,
store the new digest index, commit. Nothing is visible to readers before the commit; an
interrupted upload leaves the previous snapshot in place and can simply be run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import icechunk
import numpy as np
from zarr.buffer import cpu

from .. import aio
from ..chunk_layout import ICECHUNK_INLINE_MAX, inline_chunk_max, manifest_splitting, split_bytes
from ..errors import (
    ConflictError,
    InvalidArgumentError,
    RefNotFoundError,
    RepositoryNotFoundError,
    StorageLocationError,
    first_line,
)
from ..hierarchy import Hierarchy, node_key
from ..index import (
    DigestIndex,
    FileDigests,
    IndexDelta,
    IndexReader,
    differing_parts,
    load_index_files,
    store_index,
)
from ..location import StorageLocation, validate_zarr_id
from ..objects import DEFAULT_JOBS
from ..progress import NoProgress, Progress
from ..records import JsonRecord
from ..reuse import ReuseError, attach_zarr, find_by_checksum, register_checksum
from ..session import (
    DEFAULT_BRANCH,
    CommitInfo,
    ZarrRepository,
    current_user,
    is_embargoed_branch,
    scratch_branch,
)
from .allocator import release_free_memory, tune_malloc
from .chunks import write_chunks
from .digest_cache import DigestCache, UploadRecord
from .distributed import hash_on, write_on_dask
from .local_zarr import LocalListing, LocalZarr, scan_local_zarr
from .staged import StagedUpload, batch_ends, cached_chunk_refs

if TYPE_CHECKING:
    from distributed import Client

_MULTIPART_MIN = 1024 * 1024 * 1024  # single PUTs up to 1 GiB: measured faster (benchmarks/big_objects.py)


@dataclass(frozen=True)
class UploadResult(JsonRecord):
    """What an upload did. ``snapshot_id`` is ``None`` when nothing had changed."""

    zarr_id: str
    repository: str
    snapshot_id: str | None
    parent_snapshot_id: str
    zarr_checksum: str
    file_count: int
    size: int
    files_written: int
    bytes_written: int
    files_deleted: int
    reused: bool = False


def upload_zarr(
    path: str | Path,
    location: StorageLocation,
    zarr_id: str,
    *,
    embargoed: bool = False,
    branch: str = DEFAULT_BRANCH,
    message: str | None = None,
    dandiset: str | None = None,
    user: str | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
    dedup: bool = True,
    digest_cache: DigestCache | None = None,
    delete_missing: bool = True,
    dask: Client | None = None,
) -> UploadResult:
    """Upload the Zarr directory ``path`` as one commit on ``branch`` of the repository of
    ``zarr_id`` at ``location`` (created, under the prefix ``embargoed`` selects, if new).

    Only new and changed files are written and files removed locally are removed; with no change
    no commit is made. Bad input raises :class:`InvalidZarrError` before anything is written
    (not even a new repository; a file that turns unreadable while a first upload without
    ``dedup`` sends it leaves at most an empty repository, no commit); a concurrent upload that
    changed the same chunks raises :class:`ConflictError` and nothing is committed.

    With ``dedup``, a Zarr not yet in the archive whose content is (same ``dandi-zarr-checksum``)
    is not uploaded: the existing snapshot is attached to ``dandiset`` instead, and the result
    names that Zarr (``reused`` is true, nothing is written); and the new snapshot is entered in
    the checksum lookup. Uploads with vended credentials (one prefix only) pass ``dedup=False``:
    the archive does both (:func:`~dandi_icechunk.archive_hooks.finalize_upload`).
    With ``digest_cache``, local files unchanged since the last upload are not hashed again, and
    an upload of a directory listed exactly as at its last upload to ``branch``, still the tip,
    ends after the listing.
    Without ``delete_missing`` (dandi-cli's ``--zarr-mode patch``), files of the branch tip that
    are not in the local Zarr are kept: the new snapshot holds both.
    With ``dask`` (a ``distributed.Client``), the cluster's workers hash and send the files,
    each into a forked session merged into the one commit (:mod:`.distributed`): every worker
    must see ``path`` at the same place.

    >>> upload_zarr("sample.ome.zarr", StorageLocation.resolve(), zarr_id).snapshot_id
    'YB0DXG4KM8HMTY0S0TJ0'
    """
    zarr_id = validate_zarr_id(zarr_id)
    if jobs < 1:
        raise InvalidArgumentError(f"jobs must be at least 1 (parallel transfers), got {jobs}")
    if is_embargoed_branch(branch):
        raise ReuseError(
            f"branch {branch!r} is an embargoed Dandiset's view of a public Zarr: uploading to it "
            "would put the embargoed Dandiset's new chunks under the public prefix. Upload to a "
            "new Zarr of the embargoed Dandiset instead, or lift the embargo first"
        )
    progress = progress or NoProgress()
    tune_malloc()
    listing = LocalListing.of(path, workers=os.cpu_count() or 1)
    if digest_cache is not None and (unchanged := _unchanged_since_last_upload(
        listing, location, zarr_id, branch, digest_cache, delete_missing=delete_missing, dedup=dedup,
    )) is not None:
        return unchanged
    last_scan = digest_cache.last_scan(listing.root) if digest_cache else None
    local = scan_local_zarr(listing, known=last_scan)
    if digest_cache is not None and local.scan != last_scan:
        digest_cache.record_scan(listing.root, local.scan)
    # On Dask, the workers' sessions come back to this process whole: inline chunks would too.
    inline_max = inline_chunk_max(local.hierarchy) if dask is None else ICECHUNK_INLINE_MAX
    config = icechunk.RepositoryConfig(
        manifest=icechunk.ManifestConfig(splitting=manifest_splitting(local.hierarchy)),
        inline_chunk_threshold_bytes=inline_max,
        storage=icechunk.StorageSettings(minimum_size_for_multipart_upload=_MULTIPART_MIN),
        # Icechunk's defaults keep up to 15 M chunk refs of the manifests it reads and writes
        # (every batch of a staged upload, ~80 bytes a chunk at 300 k chunks, and more with
        # inline chunks), and the transaction logs it writes: each amended batch's holds every
        # batch before it.
        caching=icechunk.CachingConfig(num_chunk_refs=cached_chunk_refs(inline_max), num_transaction_changes=1),
    )

    def hashed(local: LocalZarr) -> DigestIndex:
        progress.start("hashing", local.file_count, local.size)
        index = local.digest_index(workers=os.cpu_count() or 1, progress=progress.advance, cache=digest_cache,
                                   map_batches=hash_on(dask) if dask is not None else None)
        progress.finish()
        return index

    writer: ZarrRepository | None = None
    looked_up: str | None = None  # the checksum, when the lookup needed it before anything was sent
    if dedup:
        new_index = hashed(local)
        try:
            writer = ZarrRepository.open(location, zarr_id, config=config)
        except RepositoryNotFoundError:  # a Zarr new to the archive: is its content there?
            checksum = looked_up = new_index.zarr_checksum()
            found = find_by_checksum(location, checksum, embargoed=embargoed)
            if found is not None:
                return _reuse(location, found, dandiset, embargoed, new_index, checksum)
    if writer is None:
        writer = ZarrRepository.open(
            location, zarr_id, create=True, embargoed=embargoed, config=config
        )
    with contextlib.ExitStack() as cleanup:  # a staged upload's scratch branch goes, whatever happens
        session = writer.writable_session(branch)
        base_sid = session.snapshot_id
        base = writer.index_reader(base_sid)
        hierarchy = local.hierarchy
        removed_nodes = 0
        staged: StagedUpload | None = None
        if not dedup and base.file_count == 0:
            # A first upload with no checksum lookup sends every chunk: each is hashed as it is read
            # for sending, so no file is read twice and hashing overlaps the writes.
            chunk_digests = FileDigests()
            with _storage_errors(writer.zarr_id):
                staged = _write_changes(writer, session, branch, cleanup, local, _NodeChanges.of(hierarchy, None, []),
                                        list(local.stats), jobs, progress, hashed=chunk_digests, dask=dask)
            new_index = local.index_of(chunk_digests, digest_cache)
            known = None
            base_index = DigestIndex(base.zarr_format, {}, {})
            delta = base_index.delta_to(new_index)
        else:
            if not dedup:
                new_index = hashed(local)
            if not delete_missing:
                whole = DigestIndex(base.zarr_format, load_index_files(base), base.documents)
                new_index = whole.apply(IndexDelta(new_index.files.keys(), frozenset()), new_index)
                hierarchy = Hierarchy.from_documents(new_index.documents)
            # Only the index shards whose content differs are read and compared.
            base_index, changed = differing_parts(base, new_index)
            delta = base_index.delta_to(changed)
            # Unchanged content has the checksum recorded at its commit.
            recorded = None if delta or looked_up else writer.commit_info(base_sid)
            known = looked_up or (recorded.zarr_checksum if recorded else None)
            written_chunks = [k for k in delta.written if k not in new_index.documents]
            # Chunks that leave Icechunk: removed, or now kept in the index (a chunk emptied to 0 bytes).
            dropped_chunks = sorted(
                (delta.removed | (delta.written & new_index.documents.keys())) - base_index.documents.keys()
            )
            if delta:
                old_hierarchy = (
                    Hierarchy.from_documents(base_index.documents) if base_index.documents else None
                )
                nodes = _NodeChanges.of(hierarchy, old_hierarchy, dropped_chunks)
                removed_nodes = len(nodes.removed)
                with _storage_errors(writer.zarr_id):
                    staged = _write_changes(writer, session, branch, cleanup, local, nodes, written_chunks, jobs,
                                            progress, expected=new_index, dask=dask)
        # Past the writes no file's stat is needed: not held through the commit (~100 MB at 1.3 M files).
        root, fingerprint = listing.root, listing.fingerprint
        del listing, local
        release_free_memory()
        # Not in a thread beside the writes: small chunks are read and sent by Python code, which
        # then waits for the GIL after each read (`docs/per-file-work.md`).
        checksum = known or new_index.zarr_checksum()
        result = UploadResult(
            zarr_id=zarr_id,
            repository=writer.url,
            snapshot_id=None,
            parent_snapshot_id=base_sid,
            zarr_checksum=checksum,
            file_count=new_index.file_count,
            size=new_index.size,
            files_written=len(delta.written),
            bytes_written=new_index.size if len(delta.written) == new_index.file_count else sum(
                new_index.files[k].size for k in delta.written
            ),
            files_deleted=len(delta.removed),
        )
        if not delta:
            if dedup:
                register_checksum(location, checksum, writer.zarr_id, base_sid, embargoed=writer.embargoed)
            if digest_cache is not None:
                digest_cache.record_upload(root, _upload_target(writer.url, branch),
                                           UploadRecord(fingerprint, base_sid, complete=delete_missing))
            return result

        committed: dict[str, Any] = {}

        def commit_info_for(parent: str) -> CommitInfo:
            index = new_index if parent == base_sid else _rebased_index(
                writer, parent, base_index, new_index, delta
            )
            info = CommitInfo(
                zarr_checksum=checksum if index is new_index else index.zarr_checksum(),
                file_count=index.file_count,
                size=index.size,
                index_id=store_index(writer.objects, index,
                                     stored=base.table if parent == base_sid else _index_table(writer, parent)),
                zarr_format=index.zarr_format,
                user=user or current_user(),
                dandiset=dandiset,
            )
            committed.update(parent=parent, info=info)
            return info

        summary = f"{len(delta.written)} written, {len(delta.removed)} deleted"
        if removed_nodes:
            summary += f", {removed_nodes} node(s) removed"
        message = message or f"Upload {root.name} ({summary})"
        with _storage_errors(writer.zarr_id):
            if staged is None:
                snapshot_id = writer.commit(session, message, commit_info_for)
            else:
                snapshot_id = staged.publish(message, commit_info_for(base_sid).to_metadata())
        # After a rebase over a concurrent upload the snapshot holds both uploads' changes.
        info: CommitInfo = committed["info"]
        if dedup:
            register_checksum(location, info.zarr_checksum, writer.zarr_id, snapshot_id, embargoed=writer.embargoed)
        if digest_cache is not None:
            complete = delete_missing and committed["parent"] == base_sid
            digest_cache.record_upload(root, _upload_target(writer.url, branch),
                                       UploadRecord(fingerprint, snapshot_id, complete=complete))
        return UploadResult(
            **{
                **result.to_json(),
                "snapshot_id": snapshot_id,
                "parent_snapshot_id": committed["parent"],
                "zarr_checksum": info.zarr_checksum,
                "file_count": info.file_count,
                "size": info.size,
            }
        )


def _upload_target(repository_url: str, branch: str) -> str:
    return f"{repository_url}#{branch}"


def _unchanged_since_last_upload(
    listing: LocalListing,
    location: StorageLocation,
    zarr_id: str,
    branch: str,
    cache: DigestCache,
    *,
    delete_missing: bool,
    dedup: bool,
) -> UploadResult | None:
    """The result of an upload that has nothing to do, told from the listing alone: the
    directory lists as it did at its last upload to ``branch`` and the branch is still at the
    snapshot that upload made. ``None`` when that cannot be told so cheaply; the repository is
    opened only when the listing matches a recorded upload."""
    matching: dict[bool, UploadRecord] = {}  # by the area (embargoed or not) the upload went to
    for area in (False, True):
        target = _upload_target(location.repository_url(zarr_id, embargoed=area), branch)
        last = cache.last_upload(listing.root, target)
        # A patch leaves files the directory lacks: the same listing is a no-change patch, not a no-change upload.
        if last is not None and last.fingerprint == listing.fingerprint and (last.complete or not delete_missing):
            matching[area] = last
    if not matching:
        return None
    try:
        repository = ZarrRepository.open(location, zarr_id)
    except RepositoryNotFoundError:
        return None
    last = matching.get(repository.embargoed)
    if last is None:
        return None
    try:
        tip = repository.resolve(branch=branch)
    except RefNotFoundError:  # the branch is gone
        return None
    info = repository.commit_info(tip) if tip == last.snapshot_id else None
    if info is None:
        return None
    if dedup:
        register_checksum(location, info.zarr_checksum, zarr_id, tip, embargoed=repository.embargoed)
    return UploadResult(zarr_id=zarr_id, repository=repository.url, snapshot_id=None, parent_snapshot_id=tip,
                        zarr_checksum=info.zarr_checksum, file_count=info.file_count, size=info.size,
                        files_written=0, bytes_written=0, files_deleted=0)


def _index_table(repository: ZarrRepository, snapshot_id: str) -> list[list[Any]]:
    """The shard table of the snapshot's digest index: those shards are stored, not written again."""
    info = repository.commit_info(snapshot_id)
    return IndexReader.load(repository.objects, info.index_id).table if info else []


@contextlib.contextmanager
def _storage_errors(zarr_id: str) -> Iterator[None]:
    """Storage refusing a write (expired or revoked credentials, no rights) is our error."""
    try:
        yield
    except icechunk.IcechunkError as exc:
        if isinstance(exc, icechunk.ConflictError):
            raise
        raise StorageLocationError(
            f"writing to the repository of {zarr_id} failed ({first_line(exc)}); nothing was committed. "
            "If your upload credentials expired or were revoked, get new ones and run again"
        ) from None


def _reuse(
    location: StorageLocation,
    found: tuple[str, str],
    dandiset: str | None,
    embargoed: bool,
    index: DigestIndex,
    checksum: str,
) -> UploadResult:
    """The result of an upload whose content the archive already holds: attach, write nothing."""
    zarr_id, snapshot_id = found
    repository = ZarrRepository.open(location, zarr_id)
    if dandiset is not None:
        attachment = attach_zarr(
            location, zarr_id, dandiset, snapshot_id=snapshot_id, dandiset_embargoed=embargoed
        )
        snapshot_id = attachment.snapshot_id
    return UploadResult(
        zarr_id=zarr_id, repository=repository.url, snapshot_id=snapshot_id,
        parent_snapshot_id=snapshot_id, zarr_checksum=checksum, file_count=index.file_count,
        size=index.size, files_written=0, bytes_written=0, files_deleted=0, reused=True,
    )


def _rebased_index(
    repository: ZarrRepository,
    parent: str,
    base: DigestIndex,
    ours: DigestIndex,
    delta: IndexDelta,
) -> DigestIndex:
    """Our changes on top of a parent another upload committed meanwhile."""
    theirs = repository.index(parent)
    clashes = sorted(
        k
        for k in delta.written | delta.removed
        if theirs.files.get(k) != base.files.get(k) and theirs.files.get(k) != ours.files.get(k)
    )
    if clashes:
        raise ConflictError(
            f"another upload to {repository.zarr_id} changed the same files "
            f"({', '.join(clashes[:5])}); nothing was committed. Check the new state with "
            "`dandi-icechunk log`, then run the upload again"
        )
    return theirs.apply(delta, ours)


@dataclass(frozen=True)
class _NodeChanges:
    """What an upload changes besides chunk bytes: nodes removed (children first), nodes made
    or rewritten (parents first), chunks dropped. Applied before any chunk is written."""

    removed: list[str]
    written: list[tuple[str, bytes]]
    dropped_chunks: list[str]

    @classmethod
    def of(cls, hierarchy: Hierarchy, old: Hierarchy | None, dropped_chunks: list[str]) -> _NodeChanges:
        new_nodes = hierarchy.nodes
        old_nodes = old.nodes if old else {}
        # A node whose type changed is removed and made again.
        gone = [
            p for p, n in old_nodes.items()
            if p not in new_nodes or new_nodes[p].node_type != n.node_type
        ]
        changed = [
            p for p, n in new_nodes.items()
            if p not in old_nodes or old_nodes[p].icechunk_document != n.icechunk_document
            or p in gone
        ]
        gone_prefixes = tuple(p + "/" for p in gone if p)
        dropped = [
            key for k in dropped_chunks
            if old and not ("" in gone or k.startswith(gone_prefixes))
            and (key := old.icechunk_key(k)) is not None
        ]
        return cls(
            removed=sorted(gone, key=lambda p: -p.count("/") - len(p)),
            written=[(p, new_nodes[p].icechunk_document)
                     for p in sorted(changed, key=lambda p: (p.count("/"), p) if p else (-1, p))],
            dropped_chunks=dropped,
        )

    def __bool__(self) -> bool:
        return bool(self.removed or self.written or self.dropped_chunks)

    async def apply(self, store: Any) -> None:
        for path in self.removed:
            await store.delete(node_key(path))
        for path, document in self.written:
            await store.set(node_key(path), cpu.Buffer.from_bytes(document))
        for key in self.dropped_chunks:
            if await store.exists(key):
                await store.delete(key)


def _write_changes(
    writer: ZarrRepository,
    session: icechunk.Session,
    branch: str,
    cleanup: contextlib.ExitStack,
    local: LocalZarr,
    nodes: _NodeChanges,
    written_chunks: list[str],
    jobs: int,
    progress: Progress,
    *,
    expected: DigestIndex | None = None,
    hashed: FileDigests | None = None,
    dask: Client | None = None,
) -> StagedUpload | None:
    """Write the changes into ``session``: nodes first, then chunks (``written_chunks``, in any
    order: sent in grid order), here or on ``dask``.
    Each chunk sent either has the digest ``expected`` holds for it, or has its digest put in
    ``hashed``. More chunks than one batch (:func:`~.staged.batch_ends`) go in batches to a scratch
    branch (:mod:`.staged`), deleted when ``cleanup`` closes: the staged upload is returned, and
    its last batch is what to commit instead of ``session``."""
    known = expected.files if expected is not None else None
    order = local.hierarchy.grid_order(written_chunks)  # each batch fills its own manifest splits
    ordered = list(map(written_chunks.__getitem__, order.tolist()))
    if written_chunks == list(local.stats):  # a first upload's every key, as listed: sizes in bulk
        sizes = np.frombuffer(local.stats.columns()[0], np.int64)[order]
    else:
        sizes = np.fromiter(map(local.stats.size_of, ordered), np.int64, len(ordered))
    del written_chunks, order  # a first upload's list of every key: ordered holds them
    progress.start("uploading", len(ordered), int(sizes.sum()))
    try:
        if dask is not None:
            write_on_dask(dask, writer.icechunk, session, nodes, local.chunks(ordered, sizes.tolist()),
                          jobs, progress.advance, expected=known, hashed=hashed)
            return None
        staged = None
        inline_max = writer.icechunk.config.inline_chunk_threshold_bytes or ICECHUNK_INLINE_MAX
        ends = batch_ends(split_bytes(local.hierarchy, ordered, inline_max))
        if len(ends) > 1:
            scratch = cleanup.enter_context(scratch_branch(writer.icechunk, session.snapshot_id))
            staged = StagedUpload(writer, branch, session.snapshot_id, scratch)

        async def run(store: Any, batch: tuple[list[str], list[int]], first: bool) -> None:
            if first:
                await nodes.apply(store)
            await write_chunks(store, local.chunks(*batch), jobs, progress.advance, expected=known, hashed=hashed)
            await asyncio.sleep(0)  # a Ctrl-C during the last writes cancels here, before the commit

        for n, (start, end) in enumerate(itertools.pairwise([0, *ends])):
            batch = ordered[start:end], sizes[start:end].tolist()  # a slice at a time: not a second list of every key
            aio.run(run((staged.session if staged else session).store, batch, n == 0))
            if staged and n < len(ends) - 1:
                staged.stage()
        return staged
    finally:
        progress.finish()

"""Reclaim storage of draft snapshots and abandoned uploads, never of published data.

Scratch branches that crashed Dask uploads left, older than the restore window, are deleted;
snapshots older than the window that no branch or tag points at are expired, then
Icechunk's garbage collection deletes objects that no surviving snapshot reaches and that are
older than the window (so an upload in progress is never touched), and digest indexes that no
surviving snapshot names go too. Published snapshots are reached by their tags; GC finds them in
the archive's own record of publications as well, and refuses to run while one of them is not
named by a tag (run ``audit --repair`` first), so it never depends on the caller remembering.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import icechunk

from ..errors import GarbageCollectionError
from ..index import INDEX_PREFIX, SHARD_PREFIX, index_shard_ids
from ..location import StorageLocation
from ..records import JsonRecord
from ..session import SCRATCH_BRANCH_PREFIX, ZarrRepository
from .ledger import recorded_publications

PUBLISH_TAG_PREFIX = "dandiset/"
DEFAULT_RESTORE_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class GCResult(JsonRecord):
    """What garbage collection reclaimed (or, in a dry run, would reclaim)."""

    zarr_id: str
    dry_run: bool
    snapshots_expired: int
    objects_deleted: int
    bytes_deleted: int
    index_objects_deleted: int
    kept_published: list[str]
    scratch_branches_deleted: list[str]
    """Branches crashed Dask uploads left (a dry run names them; what only they reach is
    counted in the next run's objects)."""


def collect_garbage(
    location: StorageLocation,
    zarr_id: str,
    *,
    published_snapshots: Iterable[str] | None = None,
    restore_window: timedelta = DEFAULT_RESTORE_WINDOW,
    dry_run: bool = False,
    now: datetime | None = None,
) -> GCResult:
    """Garbage-collect the repository of ``zarr_id``.

    Published snapshots, always kept: those the archive recorded at publish
    (:mod:`~dandi_icechunk.archive.ledger`, which uploaders cannot change), the targets of the
    ``dandiset/...`` tags, and any ``published_snapshots`` given. A dry run expires nothing and deletes nothing;
    it reports the snapshots that would expire and the objects unreachable today.
    """
    repo = ZarrRepository.open(location, zarr_id)
    ic = repo.icechunk
    tags = {t: ic.lookup_tag(t) for t in ic.list_tags()}
    published = (
        set(published_snapshots or ())
        | set(recorded_publications(location, repo.zarr_id).values())
        | {sid for t, sid in tags.items() if t.startswith(PUBLISH_TAG_PREFIX)}
    )
    untagged = sorted(published - set(tags.values()))
    if untagged:
        raise GarbageCollectionError(
            f"published snapshot(s) {', '.join(untagged)} of {zarr_id} are not named by any tag, "
            "so garbage collection could delete them; nothing was deleted. Run "
            "`dandi-icechunk audit --repair` first"
        )
    cutoff = (now or datetime.now(UTC)) - restore_window
    abandoned = _abandoned_scratch_branches(ic, cutoff)
    if dry_run:
        expired = _would_expire(ic, cutoff, ignored=abandoned)
    else:
        for branch in abandoned:
            ic.delete_branch(branch)
        expired = ic.expire_snapshots(older_than=cutoff)
    try:
        summary = ic.garbage_collect(cutoff, dry_run=dry_run)
    except icechunk.IcechunkError as exc:
        raise GarbageCollectionError(f"garbage collection of {zarr_id} failed: {exc}") from None
    index_count, index_bytes = _collect_indexes(repo, cutoff, dry_run)
    objects = (
        summary.chunks_deleted + summary.manifests_deleted + summary.snapshots_deleted
        + summary.attributes_deleted + summary.transaction_logs_deleted
    )
    return GCResult(
        zarr_id=repo.zarr_id,
        dry_run=dry_run,
        snapshots_expired=len(expired),
        objects_deleted=objects + index_count,
        bytes_deleted=summary.bytes_deleted + index_bytes,
        index_objects_deleted=index_count,
        kept_published=sorted(published),
        scratch_branches_deleted=abandoned,
    )


def _abandoned_scratch_branches(ic: icechunk.Repository, cutoff: datetime) -> list[str]:
    """Scratch branches of uploads (staged batches, a Dask upload's nodes) that a killed process
    left behind: an upload whose last batch or nodes were staged before the window is over."""
    return sorted(
        b for b in ic.list_branches()
        if b.startswith(SCRATCH_BRANCH_PREFIX) and ic.lookup_snapshot(ic.lookup_branch(b)).written_at < cutoff
    )


def _would_expire(ic: icechunk.Repository, cutoff: datetime, ignored: Iterable[str] = ()) -> set[str]:
    branches = ic.list_branches() - set(ignored)
    tips = {ic.lookup_branch(b) for b in branches} | {ic.lookup_tag(t) for t in ic.list_tags()}
    candidates: set[str] = set()
    for branch in branches:
        history = list(ic.ancestry(branch=branch))
        candidates |= {s.id for s in history[:-1] if s.written_at < cutoff}  # the root stays
    return candidates - tips


def _collect_indexes(repo: ZarrRepository, cutoff: datetime, dry_run: bool) -> tuple[int, int]:
    """Delete digest indexes (and index shards) that no surviving snapshot names and that are
    older than ``cutoff``."""
    ic = repo.icechunk
    named: set[str] = set()
    refs = [("branch", b) for b in ic.list_branches()] + [("tag", t) for t in ic.list_tags()]
    for kind, name in refs:
        for snapshot in ic.ancestry(**{kind: name}):
            index_id = snapshot.metadata.get("dandi:index_id")
            if index_id and f"{INDEX_PREFIX}{index_id}.json.gz" not in named:
                named.add(f"{INDEX_PREFIX}{index_id}.json.gz")
                named.update(f"{SHARD_PREFIX}{s}.json.gz" for s in index_shard_ids(repo.objects, index_id))
    count = size = 0
    for key, nbytes, modified in repo.objects.list_with_times(INDEX_PREFIX):
        if key not in named and modified < cutoff:
            count += 1
            size += nbytes
            if not dry_run:
                repo.objects.delete(key)
    return count, size

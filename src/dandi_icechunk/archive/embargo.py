"""Lift the embargo of a Zarr: its repository moves from the private prefix to the public one.

The move is server-side (no byte is uploaded again) and keeps every object as it is, so every
snapshot ID, tag and branch stays valid. Copies stay tagged ``embargoed=true`` (which the bucket
policy keeps from anonymous readers) until the ``repo`` object has moved, so embargoed bytes are
never anonymously readable before the embargo is lifted; an upload committing during the move
either makes it go round again or fails cleanly; running the move again after a crash finishes
it (:func:`~dandi_icechunk.objects.move_prefix`). Time grows with the number of objects (a
server-side copy, an untag and a delete each).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import icechunk

from ..location import StorageLocation
from ..objects import DEFAULT_JOBS, REPO_OBJECT, move_prefix
from ..records import JsonRecord
from ..reuse import register_checksum
from ..session import ZarrRepository
from .ledger import keep_publications_in_arraylake_gc


@dataclass(frozen=True)
class UnembargoResult(JsonRecord):
    """What lifting the embargo of one Zarr moved."""

    zarr_id: str
    objects_moved: int
    bytes_moved: int
    seconds: float


def _follow_in_arraylake(location: StorageLocation, zarr_id: str) -> None:
    """With Arraylake, once the repository is under the public prefix, register it under its
    public name and drop the embargoed record (both idempotent)."""
    if location.arraylake is None or not icechunk.Repository.exists(location.icechunk_storage(zarr_id)):
        return
    location.arraylake.register(location, zarr_id, embargoed=False, config=None)
    location.arraylake.unregister(zarr_id, embargoed=True)
    keep_publications_in_arraylake_gc(location, zarr_id)


def unembargo_zarr(location: StorageLocation, zarr_id: str, *, jobs: int = DEFAULT_JOBS) -> UnembargoResult:
    """Make the repository of ``zarr_id`` public. Idempotent: a public Zarr moves nothing."""
    start = time.perf_counter()
    _follow_in_arraylake(location, zarr_id)  # a run that crashed after the move
    repo = ZarrRepository.open(location, zarr_id, embargoed=True)  # it exists, somewhere
    # Whatever is left under the private prefix moves, even when the public repository is already
    # there: a run interrupted after moving the repo object is finished by the next one.
    moved = move_prefix(
        location,
        location.repository_prefix(repo.zarr_id, embargoed=True),
        location.repository_prefix(repo.zarr_id, embargoed=False),
        last=REPO_OBJECT,
        jobs=jobs,
    )
    _follow_in_arraylake(location, zarr_id)
    public = ZarrRepository.open(location, zarr_id)
    tip = public.resolve()
    info = public.commit_info(tip)
    if info is not None:
        register_checksum(location, info.zarr_checksum, public.zarr_id, tip, embargoed=False)
    return UnembargoResult(
        zarr_id=public.zarr_id, objects_moved=moved[0], bytes_moved=moved[1],
        seconds=time.perf_counter() - start,
    )

"""A Dandiset's new draft of a Zarr, recorded by the archive: from an upload
(:func:`finalize_draft`) or from another Dandiset's Zarr, reused (:func:`attach_draft`).

The uploader (with credentials for one repository) has committed; the archive, which alone
writes its own record and the checksum lookup, checks and records the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import FinalizeError
from ..location import StorageLocation
from ..reuse import Attachment, attach_zarr, register_checksum
from ..session import DEFAULT_BRANCH, CommitInfo, ZarrRepository
from .ledger import (
    DraftRecord,
    descends_from,
    draft_branch,
    record_draft,
    recorded_drafts,
    restore_refs,
)

_log = logging.getLogger("dandi_icechunk")


@dataclass(frozen=True)
class Finalized:
    """A finalized upload: its commit metadata, snapshot and branch."""

    info: CommitInfo
    snapshot_id: str
    branch: str


def finalize_draft(location: StorageLocation, zarr_id: str, dandiset_id: str | None = None) -> Finalized:
    """Finalize an upload: check the refs, record the new draft, enter it in the checksum
    lookup (which uploaders cannot write) and return what was finalized.

    With ``dandiset_id`` (what the archive always passes), the Dandiset's draft branch must
    still descend from the snapshot last finalized for it: a branch another writer reset or
    rewound is put back and the upload refused (:class:`FinalizeError`; upload again). Refs of
    the Zarr's other Dandisets that this upload's credentials moved are put back too
    (:func:`~dandi_icechunk.archive.ledger.restore_refs`).
    """
    repository = ZarrRepository.open(location, zarr_id)
    drafts = recorded_drafts(location, repository.zarr_id)
    for line in restore_refs(repository, drafts, except_dandiset=dandiset_id):
        _log.warning("Zarr %s: %s", repository.zarr_id, line)
    branch = draft_branch(repository, dandiset_id, drafts) if dandiset_id else DEFAULT_BRANCH
    tip = repository.resolve(branch=branch)
    info = repository.commit_info(tip)
    if info is None:
        raise FinalizeError(f"Zarr {zarr_id} has no uploaded snapshot to finalize")
    if dandiset_id is not None:
        previous = drafts.get(dandiset_id)
        if previous is not None and not descends_from(repository, tip, previous.snapshot_id):
            repository.icechunk.reset_branch(branch, previous.snapshot_id, from_snapshot_id=tip)
            raise FinalizeError(
                f"branch {branch} of Zarr {zarr_id} no longer descends from Dandiset "
                f"{dandiset_id}'s last finalized snapshot {previous.snapshot_id}: another writer "
                "moved it. It was put back; nothing was finalized. Upload again"
            )
        record_draft(location, repository.zarr_id, DraftRecord(dandiset_id, branch, tip))
    register_checksum(location, info.zarr_checksum, repository.zarr_id, tip, embargoed=repository.embargoed)
    return Finalized(info, tip, branch)


def attach_draft(
    location: StorageLocation,
    zarr_id: str,
    dandiset_id: str,
    *,
    snapshot_id: str | None = None,
    tag: str | None = None,
    dandiset_embargoed: bool = False,
) -> Attachment:
    """Attach an existing Zarr to another Dandiset (:func:`~dandi_icechunk.reuse.attach_zarr`)
    and record that Dandiset's draft, so that its branch is guarded like every finalized draft."""
    attachment = attach_zarr(
        location, zarr_id, dandiset_id, snapshot_id=snapshot_id, tag=tag,
        dandiset_embargoed=dandiset_embargoed,
    )
    if dandiset_id not in recorded_drafts(location, attachment.zarr_id):
        draft = DraftRecord(dandiset_id, attachment.branch, attachment.snapshot_id)
        record_draft(location, attachment.zarr_id, draft)
    return attachment

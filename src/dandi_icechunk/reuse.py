"""One Zarr in many Dandisets: attach an existing snapshot instead of uploading it again.

:func:`attach_zarr` makes the Zarr part of another Dandiset by reference: a branch of that
Dandiset (``dandiset/<id>``) in the same repository, starting at the chosen snapshot. Edits made
for that Dandiset are commits on its branch: only changed chunks are new objects, and the Zarr's
own branch and tags (other Dandisets' drafts and published versions) never move.

:func:`find_by_checksum` / :func:`register_checksum` keep a lookup from ``dandi-zarr-checksum`` to
a snapshot holding exactly that content, so an upload of content already in the archive attaches
it in seconds. Entries are write-once objects named by the checksum (uploaders with vended
credentials cannot write them; the archive registers at finalize): two uploads of the same
content at once cannot leave entries that disagree, and a crash leaves at most a missing entry
(the next upload or finalize of that content registers it).

Both the uploader (dedup) and the archive (attach, finalize, unembargo) use this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import DandiIcechunkError, ReuseError
from .location import StorageLocation
from .objects import prefix_objects
from .records import JsonRecord
from .session import ZarrRepository, dandiset_branch


@dataclass(frozen=True)
class Attachment(JsonRecord):
    """A Zarr attached to a Dandiset: which repository, branch and snapshot."""

    zarr_id: str
    dandiset_id: str
    branch: str
    snapshot_id: str
    zarr_checksum: str
    size: int
    repository: str


def attach_zarr(
    location: StorageLocation,
    zarr_id: str,
    dandiset_id: str,
    *,
    snapshot_id: str | None = None,
    tag: str | None = None,
    dandiset_embargoed: bool = False,
) -> Attachment:
    """Attach a snapshot of ``zarr_id`` (default: the tip of its ``main``) to ``dandiset_id``.

    Idempotent: attaching again returns the Dandiset's branch as it is. An embargoed Zarr cannot
    be attached to a public Dandiset.
    """
    repo = ZarrRepository.open(location, zarr_id)
    if repo.embargoed and not dandiset_embargoed:
        raise ReuseError(
            f"Zarr {zarr_id} belongs to an embargoed Dandiset; it cannot be attached to the "
            f"public Dandiset {dandiset_id} until its embargo is lifted"
        )
    branch = dandiset_branch(dandiset_id, embargoed=dandiset_embargoed and not repo.embargoed)
    if branch in repo.icechunk.list_branches():
        sid = repo.resolve(branch=branch)
    else:
        sid = repo.resolve(snapshot_id=snapshot_id, tag=tag)
        info = repo.commit_info(sid)
        if info is None:
            raise ReuseError(f"snapshot {sid} of {zarr_id} holds no upload; attach a later one")
        try:
            repo.icechunk.create_branch(branch, sid)
        except Exception as exc:  # a concurrent attach made it: use it
            if branch not in repo.icechunk.list_branches():
                raise ReuseError(f"cannot attach {zarr_id} to {dandiset_id}: {exc}") from None
            sid = repo.resolve(branch=branch)
    info = repo.commit_info(sid)
    assert info is not None
    return Attachment(
        zarr_id=repo.zarr_id, dandiset_id=dandiset_id, branch=branch, snapshot_id=sid,
        zarr_checksum=info.zarr_checksum, size=info.size, repository=repo.url,
    )


def register_checksum(
    location: StorageLocation, zarr_checksum: str, zarr_id: str, snapshot_id: str, *, embargoed: bool
) -> None:
    """Record that ``snapshot_id`` of ``zarr_id`` holds content with ``zarr_checksum`` (first wins)."""
    entry = json.dumps({"zarr_id": zarr_id, "snapshot_id": snapshot_id}).encode()
    prefix_objects(location, location.checksums_prefix(embargoed=embargoed)).put_if_absent(
        f"{zarr_checksum}.json", entry
    )


def find_by_checksum(
    location: StorageLocation, zarr_checksum: str, *, embargoed: bool = False
) -> tuple[str, str] | None:
    """A ``(zarr_id, snapshot_id)`` holding content with ``zarr_checksum``, if one is known and
    still holds it. Public Zarrs only, unless ``embargoed`` (the uploader's own embargoed ones)."""
    for area in (False, True) if embargoed else (False,):
        data = prefix_objects(location, location.checksums_prefix(embargoed=area)).get(f"{zarr_checksum}.json")
        if data is None:
            continue
        entry = json.loads(data)
        try:
            info = ZarrRepository.open(location, entry["zarr_id"]).commit_info(entry["snapshot_id"])
        except DandiIcechunkError:
            continue  # gone (expired or deleted): not a match
        if info is not None and info.zarr_checksum == zarr_checksum:
            return entry["zarr_id"], entry["snapshot_id"]
    return None

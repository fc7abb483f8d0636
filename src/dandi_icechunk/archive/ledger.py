"""The archive's own record of each Zarr, where uploaders cannot write, and the refs it guards.

Icechunk keeps every branch and tag of a repository in one object that any writer of the
repository can rewrite, so the credentials vended for a Zarr shared by two Dandisets can move the
other Dandiset's refs. The archive therefore keeps its own record under
``zarr-icechunk-archive/<zarr_id>/`` (outside every repository prefix, out of reach of upload
credentials):

- ``published/<tag>.json``: every version it published (write-once), which GC always keeps;
- ``drafts/<dandiset>.json``: each Dandiset's draft branch and the snapshot last finalized on
  it, which publish publishes.

:func:`restore_refs` compares the repository's refs with the record and undoes what another
Dandiset's uploader did: a draft branch deleted, reset or rewound is put back, and a branch made
under another Dandiset's name is deleted. The archive runs it at every finalize and publish.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from ..location import StorageLocation
from ..objects import RepositoryObjects, prefix_objects
from ..session import DEFAULT_BRANCH, ZarrRepository, dandiset_branch

_PUBLISHED, _DRAFTS = "published/", "drafts/"


@dataclass(frozen=True)
class DraftRecord:
    """A Dandiset's draft of a Zarr, as last finalized: its branch and snapshot."""

    dandiset_id: str
    branch: str
    snapshot_id: str


def _record(location: StorageLocation, zarr_id: str) -> RepositoryObjects:
    return prefix_objects(location, location.archive_prefix(zarr_id))


def record_publication(location: StorageLocation, zarr_id: str, tag: str, snapshot_id: str) -> None:
    """Record that ``tag`` published ``snapshot_id`` of ``zarr_id`` (idempotent; first wins)."""
    entry = json.dumps({"tag": tag, "snapshot_id": snapshot_id}).encode()
    _record(location, zarr_id).put_if_absent(f"{_PUBLISHED}{tag}.json", entry)
    keep_publications_in_arraylake_gc(location, zarr_id)


def keep_publications_in_arraylake_gc(location: StorageLocation, zarr_id: str) -> None:
    """With Arraylake, its scheduled GC of ``zarr_id`` keeps every recorded publication."""
    if location.arraylake is not None:
        from .gc import DEFAULT_RESTORE_WINDOW

        keep = recorded_publications(location, zarr_id).values()
        location.arraylake.schedule_gc(zarr_id, keep=keep, restore_window=DEFAULT_RESTORE_WINDOW)


def recorded_publications(location: StorageLocation, zarr_id: str) -> dict[str, str]:
    """Tag -> snapshot ID of every version of ``zarr_id`` the archive recorded as published."""
    return {e["tag"]: e["snapshot_id"] for e in _entries(_record(location, zarr_id), _PUBLISHED)}


def record_draft(location: StorageLocation, zarr_id: str, draft: DraftRecord) -> None:
    """Record ``draft`` as its Dandiset's draft of ``zarr_id`` (replacing the previous one)."""
    entry = json.dumps(draft.__dict__).encode()
    _record(location, zarr_id).put(f"{_DRAFTS}{draft.dandiset_id}.json", entry)


def recorded_drafts(location: StorageLocation, zarr_id: str) -> dict[str, DraftRecord]:
    """Dandiset ID -> its recorded draft of ``zarr_id``."""
    drafts = [DraftRecord(**e) for e in _entries(_record(location, zarr_id), _DRAFTS)]
    return {d.dandiset_id: d for d in drafts}


def _entries(objects: RepositoryObjects, prefix: str) -> list[dict[str, str]]:
    found = []
    for key, _, _ in objects.list_with_times(prefix):
        data = objects.get(key)
        if data is not None:
            found.append(json.loads(data))
    return found


def draft_branch(
    repository: ZarrRepository, dandiset_id: str, drafts: Mapping[str, DraftRecord]
) -> str:
    """The branch holding ``dandiset_id``'s draft of a Zarr: the recorded one (in ``drafts``,
    see :func:`recorded_drafts`); else its own branch when the Zarr was attached to it from
    another Dandiset; else ``main``."""
    recorded = drafts.get(dandiset_id)
    if recorded is not None:
        return recorded.branch
    branches = repository.icechunk.list_branches()
    for embargoed in (False, True):
        if (branch := dandiset_branch(dandiset_id, embargoed=embargoed)) in branches:
            return branch
    return DEFAULT_BRANCH


def descends_from(repository: ZarrRepository, snapshot_id: str, ancestor: str) -> bool:
    """Whether ``ancestor`` is ``snapshot_id`` or one of its ancestors."""
    return ancestor == snapshot_id or ancestor in {
        s.id for s in repository.icechunk.ancestry(snapshot_id=snapshot_id)
    }


def restore_refs(
    repository: ZarrRepository,
    drafts: Mapping[str, DraftRecord],
    *,
    except_dandiset: str | None = None,
) -> list[str]:
    """Put every recorded draft branch (but ``except_dandiset``'s) back where the archive left
    it when it was deleted, rewound, reset elsewhere, or set to a snapshot of another Dandiset's
    draft (new commits on top of it are left: they are an upload its next finalize judges), and
    delete branches made under the name of a Dandiset whose draft is elsewhere. ``drafts`` is
    the archive's record (:func:`recorded_drafts`). Returns what was undone."""
    ic = repository.icechunk
    branches = ic.list_branches()
    undone = []
    histories = {  # what each Dandiset's draft branch holds
        d.dandiset_id: {s.id for s in ic.ancestry(branch=d.branch)}
        for d in drafts.values() if d.branch in branches
    }
    for draft in drafts.values():
        if draft.dandiset_id == except_dandiset:
            continue
        if draft.branch not in branches:
            ic.create_branch(draft.branch, draft.snapshot_id)
            undone.append(f"recreated deleted branch {draft.branch} of Dandiset {draft.dandiset_id}")
            continue
        tip = ic.lookup_branch(draft.branch)
        foreign = tip != draft.snapshot_id and any(
            tip in held for other, held in histories.items() if other != draft.dandiset_id
        )
        if foreign or draft.snapshot_id not in histories[draft.dandiset_id]:
            ic.reset_branch(draft.branch, draft.snapshot_id, from_snapshot_id=tip)
            undone.append(
                f"reset branch {draft.branch} of Dandiset {draft.dandiset_id} from {tip} back to "
                f"{draft.snapshot_id}"
            )
    owned = {d.branch for d in drafts.values()}
    for dandiset_id in drafts:
        for name in (dandiset_branch(dandiset_id), dandiset_branch(dandiset_id, embargoed=True)):
            if name in branches and name not in owned:
                ic.delete_branch(name)
                undone.append(f"deleted branch {name}, made under Dandiset {dandiset_id}'s name")
    return undone

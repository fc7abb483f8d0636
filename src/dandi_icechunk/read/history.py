"""Inspect a repository: what changed between two snapshots, and a summary of the repository."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..hierarchy import Hierarchy
from ..records import JsonRecord
from ..session import DEFAULT_BRANCH, ZarrRepository


@dataclass(frozen=True)
class SnapshotDiff(JsonRecord):
    """Files (keys as uploaded) added, modified and removed from one snapshot to another."""

    zarr_id: str
    from_snapshot: str
    to_snapshot: str
    added: list[str]
    modified: list[str]
    removed: list[str]
    bytes_added: int
    bytes_removed: int


def diff_snapshots(repository: ZarrRepository, from_ref: str, to_ref: str) -> SnapshotDiff:
    """Compare two snapshots (each named by snapshot ID, tag or branch) by their digest indexes.

    No chunk is read: the comparison uses the MD5s recorded at upload.
    """
    old_sid, new_sid = repository.resolve_name(from_ref), repository.resolve_name(to_ref)
    old, new = repository.index(old_sid), repository.index(new_sid)
    delta = old.delta_to(new)
    added = sorted(k for k in delta.written if k not in old.files)
    modified = sorted(k for k in delta.written if k in old.files)
    removed = sorted(delta.removed)
    return SnapshotDiff(
        zarr_id=repository.zarr_id,
        from_snapshot=old_sid,
        to_snapshot=new_sid,
        added=added,
        modified=modified,
        removed=removed,
        bytes_added=sum(new.files[k].size for k in delta.written),
        bytes_removed=sum(old.files[k].size for k in removed),
    )


def repository_info(repository: ZarrRepository, branch: str = DEFAULT_BRANCH) -> dict[str, Any]:
    """Where the repository is, its branches and tags, and what the tip of ``branch`` holds."""
    tip = repository.resolve(branch=branch)
    info = repository.commit_info(tip)
    index = repository.index(tip)
    hierarchy_counts = {"arrays": 0, "groups": 0}
    if index.documents:
        for node in Hierarchy.from_documents(index.documents).nodes.values():
            hierarchy_counts["arrays" if node.grid else "groups"] += 1
    return {
        "zarr_id": repository.zarr_id,
        "repository": repository.url,
        "embargoed": repository.embargoed,
        "branch": branch,
        "snapshot_id": tip,
        "zarr_format": index.zarr_format,
        "zarr_checksum": info.zarr_checksum if info else None,
        "file_count": index.file_count,
        "size": index.size,
        **hierarchy_counts,
        "branches": {b: repository.icechunk.lookup_branch(b) for b in sorted(repository.icechunk.list_branches())},
        "tags": {t: repository.icechunk.lookup_tag(t) for t in sorted(repository.icechunk.list_tags())},
    }

"""The archive's own record of what it published, where uploaders cannot write.

Tags live in the repository, and anyone who can write the repository can delete them. So publish
also writes one write-once object per published version, ``<zarr_id>/<tag>.json`` under
``zarr-icechunk-published/`` (outside every repository prefix, so vended upload credentials do
not reach it). Garbage collection keeps every snapshot recorded here whatever happened to the
tags, and refuses to run while one of them is not named by a tag.
"""

from __future__ import annotations

import json

from ..location import StorageLocation
from ..objects import prefix_objects


def record_publication(location: StorageLocation, zarr_id: str, tag: str, snapshot_id: str) -> None:
    """Record that ``tag`` published ``snapshot_id`` of ``zarr_id`` (idempotent; first wins)."""
    entry = json.dumps({"tag": tag, "snapshot_id": snapshot_id}).encode()
    prefix_objects(location, location.published_prefix(zarr_id)).put_if_absent(f"{tag}.json", entry)


def recorded_publications(location: StorageLocation, zarr_id: str) -> dict[str, str]:
    """Tag -> snapshot ID of every version of ``zarr_id`` the archive recorded as published."""
    objects = prefix_objects(location, location.published_prefix(zarr_id))
    found = {}
    for key, _, _ in objects.list_with_times(""):
        data = objects.get(key)
        if data is not None:
            entry = json.loads(data)
            found[entry["tag"]] = entry["snapshot_id"]
    return found

"""A snapshot's listing in the dandi/zarr-manifests (v2) layout, for manifest-driven tools.

Field mapping (one entry per uploaded file, keys as uploaded):

==============  ===========================================================================
``versionId``   the snapshot ID: the immutable version the entry belongs to
``lastModified`` when the snapshot was committed (``YYYY-MM-DDTHH:MM:SS+00:00``)
``size``        the file's size in bytes
``ETag``        the file's MD5 (lowercase hex): what S3 gives as ETag for a single-part PUT
==============  ===========================================================================

The bytes of an entry are served by ``dandi-icechunk serve`` at
``<server>/<zarr_id>/<versionId>/<key>``; the top-level ``icechunk`` object says which
repository and snapshot the manifest describes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..session import ZarrRepository

FIELDS = ["versionId", "lastModified", "size", "ETag"]


def snapshot_manifest(repository: ZarrRepository, snapshot_id: str) -> dict[str, Any]:
    """The zarr-manifests v2 document of one snapshot (no chunk is read)."""
    sid = repository.resolve(snapshot_id=snapshot_id)
    snapshot = repository.icechunk.lookup_snapshot(sid)
    index = repository.index(sid)
    modified = snapshot.written_at.replace(microsecond=0).isoformat()
    document = manifest_document(
        ((key, sid, modified, d.size, d.md5) for key, d in index.files.items()),
        zarr_checksum=index.zarr_checksum(),
    )
    document["icechunk"] = {"repository": repository.url, "zarrId": repository.zarr_id, "snapshotId": sid}
    return document


def manifest_document(
    entries: Iterable[tuple[str, str, str, int, str]], *, zarr_checksum: str
) -> dict[str, Any]:
    """A zarr-manifests v2 document from ``(key, versionId, lastModified, size, ETag)`` entries."""
    tree: dict[str, Any] = {}
    depth = count = total = 0
    latest = ""
    for key, version_id, modified, size, etag in sorted(entries):
        *dirs, name = key.split("/")
        depth = max(depth, len(dirs))
        node = tree
        for part in dirs:
            node = node.setdefault(part, {})
        node[name] = [version_id, modified, size, etag]
        count += 1
        total += size
        latest = max(latest, modified)
    return {
        "schemaVersion": 2,
        "fields": FIELDS,
        "statistics": {
            "entries": count,
            "depth": depth,
            "totalSize": total,
            "lastModified": latest,
            "zarrChecksum": zarr_checksum,
        },
        "entries": tree,
    }

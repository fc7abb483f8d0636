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

from typing import Any

from .session import ZarrRepository

FIELDS = ["versionId", "lastModified", "size", "ETag"]


def snapshot_manifest(repository: ZarrRepository, snapshot_id: str) -> dict[str, Any]:
    """The zarr-manifests v2 document of one snapshot (no chunk is read)."""
    sid = repository.resolve(snapshot_id=snapshot_id)
    snapshot = repository.icechunk.lookup_snapshot(sid)
    index = repository.index(sid)
    modified = snapshot.written_at.replace(microsecond=0).isoformat()
    entries: dict[str, Any] = {}
    depth = 0
    for key, digest in sorted(index.files.items()):
        *dirs, name = key.split("/")
        depth = max(depth, len(dirs))
        node = entries
        for part in dirs:
            node = node.setdefault(part, {})
        node[name] = [sid, modified, digest.size, digest.md5]
    return {
        "schemaVersion": 2,
        "fields": FIELDS,
        "statistics": {
            "entries": index.file_count,
            "depth": depth,
            "totalSize": index.size,
            "lastModified": modified,
            "zarrChecksum": index.zarr_checksum(),
        },
        "entries": entries,
        "icechunk": {"repository": repository.url, "zarrId": repository.zarr_id, "snapshotId": sid},
    }

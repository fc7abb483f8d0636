"""The digest index of a snapshot: every uploaded file's MD5 and size, plus its metadata documents.

Icechunk names chunk objects by random IDs and records no content checksum, so each snapshot we
commit carries (in its commit metadata) the ID of an index object stored beside the repository.
The index lets an upload decide what changed without reading chunks back, gives the
``dandi-zarr-checksum`` of the snapshot, and keeps the metadata documents exactly as uploaded.
Index objects are content-addressed (ID = SHA-256 of the bytes) and written once, before the
commit that names them: a crash leaves at most an unreferenced index, never a wrong one.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .checksum import dandi_zarr_checksum
from .errors import IntegrityError
from .hierarchy import is_document
from .objects import RepositoryObjects

INDEX_PREFIX = "dandi/index/"
_FORMAT = "dandi-icechunk-index/1"


@dataclass(frozen=True)
class FileDigest:
    """MD5 (hex) and size in bytes of one file of a Zarr."""

    md5: str
    size: int


@dataclass(frozen=True)
class IndexDelta:
    """What changed between two indexes: keys written (new or changed) and keys removed."""

    written: frozenset[str]
    removed: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.written or self.removed)


@dataclass(frozen=True)
class DigestIndex:
    """The logical files of one snapshot (keys as uploaded, relative to the Zarr root).

    ``documents`` holds the files kept verbatim in the index rather than in Icechunk: the
    metadata documents, and what Icechunk cannot hold (zero-byte chunks, and files that are no
    part of an array, such as ``OME/METADATA.ome.xml``).
    """

    zarr_format: Literal[2, 3] | None
    files: Mapping[str, FileDigest]
    documents: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> DigestIndex:
        """The index of a repository with nothing uploaded yet."""
        return cls(zarr_format=None, files={}, documents={})

    @property
    def file_count(self) -> int:
        """Number of files."""
        return len(self.files)

    @property
    def size(self) -> int:
        """Total bytes of all files."""
        return sum(d.size for d in self.files.values())

    def zarr_checksum(self) -> str:
        """The ``dandi-zarr-checksum`` of these files."""
        return dandi_zarr_checksum((k, d.md5, d.size) for k, d in self.files.items())

    def delta_to(self, newer: DigestIndex) -> IndexDelta:
        """The keys to write and remove to turn this index's files into ``newer``'s."""
        written = frozenset(k for k, d in newer.files.items() if self.files.get(k) != d)
        removed = frozenset(self.files.keys() - newer.files.keys())
        return IndexDelta(written=written, removed=removed)

    def apply(self, delta: IndexDelta, source: DigestIndex) -> DigestIndex:
        """This index with ``delta`` applied, taking written entries from ``source``."""
        files = {k: d for k, d in self.files.items() if k not in delta.removed}
        documents = {k: v for k, v in self.documents.items() if k not in delta.removed}
        for key in delta.written:
            files[key] = source.files[key]
            if key in source.documents:
                documents[key] = source.documents[key]
        return DigestIndex(zarr_format=source.zarr_format, files=files, documents=documents)

    def to_bytes(self) -> bytes:
        """Deterministic serialization (gzip-compressed JSON, keys sorted)."""
        documents: dict[str, str] = {}
        extras: dict[str, bytes] = {}
        for key, data in sorted(self.documents.items()):
            if is_document(key):
                documents[key] = data.decode()
            else:
                extras[key] = data
        body: dict[str, object] = {
            "format": _FORMAT,
            "zarr_format": self.zarr_format,
            "files": {k: [d.md5, d.size] for k, d in sorted(self.files.items())},
            "documents": documents,
        }
        if extras:  # absent otherwise, so an index without them keeps its bytes (and ID)
            body["extras"] = {k: base64.b64encode(v).decode() for k, v in extras.items()}
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return gzip.compress(raw, compresslevel=6, mtime=0)

    @classmethod
    def from_bytes(cls, data: bytes) -> DigestIndex:
        """Inverse of :meth:`to_bytes`."""
        body = json.loads(gzip.decompress(data))
        if body.get("format") != _FORMAT:
            raise IntegrityError(f"unknown digest index format {body.get('format')!r}")
        return cls(
            zarr_format=body["zarr_format"],
            files={k: FileDigest(md5, size) for k, (md5, size) in body["files"].items()},
            documents={
                **{k: v.encode() for k, v in body["documents"].items()},
                **{k: base64.b64decode(v) for k, v in body.get("extras", {}).items()},
            },
        )


def store_index(objects: RepositoryObjects, index: DigestIndex) -> str:
    """Write ``index`` (if not already there) and return its ID."""
    data = index.to_bytes()
    index_id = hashlib.sha256(data).hexdigest()
    objects.put_if_absent(f"{INDEX_PREFIX}{index_id}.json.gz", data)
    return index_id


def load_index(objects: RepositoryObjects, index_id: str) -> DigestIndex:
    """Read the index ``index_id``, checking that its bytes match its ID."""
    data = objects.get(f"{INDEX_PREFIX}{index_id}.json.gz")
    if data is None:
        raise IntegrityError(f"digest index {index_id} is missing from the repository")
    if hashlib.sha256(data).hexdigest() != index_id:
        raise IntegrityError(f"digest index {index_id} is corrupt (its bytes do not match its ID)")
    return DigestIndex.from_bytes(data)

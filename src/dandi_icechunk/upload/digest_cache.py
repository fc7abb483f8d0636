"""A local cache of file digests, so re-uploading a huge Zarr does not re-hash unchanged files.

Like dandi-cli's digest cache: a file whose size, modification time (ns) and inode are those
seen when it was last hashed keeps its MD5. One gzip-compressed JSON file per Zarr directory,
replaced atomically.

Beside it, the last upload of the directory to each branch (:class:`UploadRecord`): when the
directory lists the same files with the same stats and the branch is still at the snapshot
that upload made, nothing changed, and the upload is over before any file is hashed or any
digest loaded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ..records import JsonRecord

FileStat = tuple[int, int, int]
"""(size, mtime in ns, inode) of a file."""


@dataclass(frozen=True)
class UploadRecord(JsonRecord):
    """What one upload of a local Zarr to one branch left behind."""

    fingerprint: str  # of the directory's listing (keys and stats) when it was scanned
    snapshot_id: str  # the branch's tip after the upload
    complete: bool  # the snapshot holds exactly the listed files (no patch, no rebase)


class DigestCache:
    """MD5s of local files by path, valid while their :data:`FileStat` is unchanged."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @classmethod
    def default(cls) -> DigestCache:
        """The cache in the user's cache directory."""
        return cls(Path(platformdirs.user_cache_dir("dandi-icechunk")) / "digests")

    def _file(self, root: Path, suffix: str = ".json.gz") -> Path:
        name = hashlib.sha256(str(root.resolve()).encode()).hexdigest()
        return self.directory / f"{name}{suffix}"

    def load(self, root: Path) -> dict[str, tuple[FileStat, str]]:
        """key -> (stat when hashed, MD5) for the Zarr at ``root`` (empty if unknown or unreadable)."""
        try:
            entries = json.loads(gzip.decompress(self._file(root).read_bytes()))
        except (OSError, ValueError):
            return {}
        return {k: ((v[0], v[1], v[2]), v[3]) for k, v in entries.items()}

    def save(self, root: Path, entries: dict[str, tuple[FileStat, str]]) -> None:
        """Replace the cache of the Zarr at ``root``."""
        data = gzip.compress(json.dumps({k: [*st, md5] for k, (st, md5) in entries.items()}).encode(), 1)
        self._replace(self._file(root), data)

    def last_upload(self, root: Path, target: str) -> UploadRecord | None:
        """The last upload of the Zarr at ``root`` to ``target`` (a repository and branch)."""
        try:
            return UploadRecord(**self._uploads(root)[target])
        except (KeyError, TypeError):
            return None

    def record_upload(self, root: Path, target: str, record: UploadRecord) -> None:
        """Remember ``record`` as the last upload of the Zarr at ``root`` to ``target``."""
        uploads = {**self._uploads(root), target: record.to_json()}
        self._replace(self._file(root, ".uploads.json"), json.dumps(uploads).encode())

    def _uploads(self, root: Path) -> dict[str, dict]:
        try:
            uploads = json.loads(self._file(root, ".uploads.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return uploads if isinstance(uploads, dict) else {}

    def _replace(self, file: Path, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, file)

"""A local cache of file digests, so re-uploading a huge Zarr does not re-hash unchanged files.

Like dandi-cli's digest cache: a file whose size, modification time (ns) and inode are those
seen when it was last hashed keeps its MD5. One gzip-compressed JSON file per Zarr directory,
replaced atomically.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path

import platformdirs

FileStat = tuple[int, int, int]
"""(size, mtime in ns, inode) of a file."""


class DigestCache:
    """MD5s of local files by path, valid while their :data:`FileStat` is unchanged."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @classmethod
    def default(cls) -> DigestCache:
        """The cache in the user's cache directory."""
        return cls(Path(platformdirs.user_cache_dir("dandi-icechunk")) / "digests")

    def _file(self, root: Path) -> Path:
        name = hashlib.sha256(str(root.resolve()).encode()).hexdigest()
        return self.directory / f"{name}.json.gz"

    def load(self, root: Path) -> dict[str, tuple[FileStat, str]]:
        """key -> (stat when hashed, MD5) for the Zarr at ``root`` (empty if unknown or unreadable)."""
        try:
            entries = json.loads(gzip.decompress(self._file(root).read_bytes()))
        except (OSError, ValueError):
            return {}
        return {k: ((v[0], v[1], v[2]), v[3]) for k, v in entries.items()}

    def save(self, root: Path, entries: dict[str, tuple[FileStat, str]]) -> None:
        """Replace the cache of the Zarr at ``root``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        data = gzip.compress(json.dumps({k: [*st, md5] for k, (st, md5) in entries.items()}).encode(), 1)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, self._file(root))

"""A local cache of file digests, so re-uploading a huge Zarr does not re-hash unchanged files.

Like dandi-cli's digest cache: a file whose size, modification time (ns) and inode are those
seen when it was last hashed keeps its MD5. One gzip-compressed file per Zarr directory, a
tab-separated line per file, read and written as a stream (a 1.3 M-file Zarr's cache is never
held whole in memory), replaced atomically.

Beside it, the last upload of the directory to each branch (:class:`UploadRecord`): when the
directory lists the same files with the same stats and the branch is still at the snapshot
that upload made, nothing changed, and the upload is over before any file is hashed or any
digest loaded.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import platformdirs

from ..index import FileDigest, FileDigests
from ..packed import left_join
from ..records import JsonRecord
from .file_stats import FileStat, FileStats

_READ_BLOCK = 1 << 20


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

    def _file(self, root: Path, suffix: str = ".tsv.gz") -> Path:
        name = hashlib.sha256(str(root.resolve()).encode()).hexdigest()
        return self.directory / f"{name}{suffix}"

    def unchanged(self, root: Path, stats: FileStats) -> FileDigests:
        """The digest of each file of ``stats`` (key -> stat as listed) whose stat is the one it had
        when it was hashed; none when the cache of the Zarr at ``root`` is missing or unreadable."""
        found = FileDigests()
        try:
            found.update(
                (key, FileDigest(md5, seen[0]))
                for key, seen, entry in left_join(stats.items(), _entries(self._file(root))) if entry is not None
                for size, mtime, inode, md5 in (entry,)
                if len(md5) == 32 and seen == (int(size), int(mtime), int(inode))
            )
        except (OSError, ValueError, zlib.error):  # ValueError: no gzip, cut short, or a line that is no entry
            return FileDigests()
        return found

    def save(self, root: Path, entries: Iterable[tuple[str, FileStat, str]]) -> None:
        """Replace the cache of the Zarr at ``root`` with ``entries``: (key, stat when hashed, MD5)."""
        with self._replacing(self._file(root)) as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as f:
            lines: list[str] = []
            for key, (size, mtime, inode), md5 in entries:
                lines.append(f"{key}\t{size}\t{mtime}\t{inode}\t{md5}\n")
                if len(lines) == 4096:
                    f.write("".join(lines).encode())
                    lines.clear()
            f.write("".join(lines).encode())

    def last_upload(self, root: Path, target: str) -> UploadRecord | None:
        """The last upload of the Zarr at ``root`` to ``target`` (a repository and branch)."""
        try:
            return UploadRecord(**self._uploads(root)[target])
        except (KeyError, TypeError):
            return None

    def record_upload(self, root: Path, target: str, record: UploadRecord) -> None:
        """Remember ``record`` as the last upload of the Zarr at ``root`` to ``target``."""
        uploads = {**self._uploads(root), target: record.to_json()}
        with self._replacing(self._file(root, ".uploads.json")) as f:
            f.write(json.dumps(uploads).encode())

    def _uploads(self, root: Path) -> dict[str, dict]:
        try:
            uploads = json.loads(self._file(root, ".uploads.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return uploads if isinstance(uploads, dict) else {}

    @contextlib.contextmanager
    def _replacing(self, file: Path) -> Iterator[IO[bytes]]:
        """A file to write that replaces ``file`` when done, and is removed on failure."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            os.replace(tmp, file)
        except BaseException:
            os.unlink(tmp)
            raise


def _entries(file: Path) -> Iterator[tuple[str, list[str]]]:
    """(key, [size, mtime, inode, md5]) of each line of the cache ``file``, in the sorted order
    it was saved in (one walk beside the listing); :class:`ValueError` for anything else."""
    last = ""
    for lines in _lines(file):
        for line in lines:
            key, *entry = line.split("\t")
            if len(entry) != 4 or key <= last:
                raise ValueError(f"{file}: {line!r} is no entry in order")
            last = key
            yield key, entry


def _lines(file: Path) -> Iterator[list[str]]:
    """The lines of the gzip file ``file``, a block at a time; :class:`ValueError` if it is cut short."""
    decompressor, decoder = zlib.decompressobj(wbits=31), codecs.getincrementaldecoder("utf-8")()
    rest = ""
    with file.open("rb") as f:
        while block := f.read(_READ_BLOCK):
            *lines, rest = (rest + decoder.decode(decompressor.decompress(block))).split("\n")
            yield lines
    if rest or not decompressor.eof or decoder.decode(b"", final=True):
        raise ValueError(f"{file} is cut short")

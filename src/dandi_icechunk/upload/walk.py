"""Every file of a local directory tree, its key and ``stat``, in sorted key order: the listing
that starts every upload, a no-change one included.

A ``stat`` per file is most of the work (a file edited in place changes no directory), and the
GIL keeps threads from overlapping those calls (`docs/per-file-work.md`). So a tree still being
listed after a moment is finished by worker processes, each listing an interleaved share of
blocks of the directories left. Standard library only: a worker runs this file as a script
(``python -I -S walk.py``), without the package or site-packages.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from array import array
from typing import NamedTuple

EXCLUDED_NAMES = frozenset({".dandi", ".datalad", ".git", ".gitattributes", ".gitmodules"})
"""Files and directories dandi-cli leaves out of a Zarr asset, at any depth."""
COLUMN_TYPES = "qqQ"
"""The typecodes of :attr:`Tree.columns`: size, mtime in ns, inode."""
_log = logging.getLogger("dandi_icechunk")
_SERIAL_SECONDS = 0.25
_DIRECTORIES_PER_WORKER = 8  # shares of several blocks of directories each even out their sizes
_FIELDS = tuple(map(operator.attrgetter, ("st_size", "st_mtime_ns", "st_ino")))
_first = operator.itemgetter(0)
_BY_DESCRIPTOR = os.scandir in os.supports_fd and hasattr(os, "O_DIRECTORY")


class Refused(Exception):
    """The tree cannot be listed as a Zarr; the message says what is wrong and what to do."""


class Tree:
    """The files of a tree: keys (``/``-separated, sorted), their stat columns, and the keys
    of what was left out (:data:`EXCLUDED_NAMES`)."""

    __slots__ = ("columns", "excluded", "keys")

    def __init__(self, keys: list[str] | None = None, columns: tuple[array, ...] | None = None,
                 excluded: list[str] | None = None) -> None:
        self.keys = keys or []
        self.columns = columns or tuple(array(code) for code in COLUMN_TYPES)
        self.excluded = excluded or []

    def _add_files(self, keys: list[str], stats: list[os.stat_result]) -> None:
        self.keys += keys
        for column, field in zip(self.columns, _FIELDS, strict=True):
            column.extend(map(field, stats))  # in C, no tuple made per file

    def _take(self, other: Tree) -> None:
        """Add the files of ``other``, emptying it (so that they are not held twice)."""
        self.keys += other.keys
        other.keys.clear()
        for column, more in zip(self.columns, other.columns, strict=True):
            column.extend(more)
            del more[:]
        self.excluded += other.excluded


class _Dir(NamedTuple):
    """A directory (or a symlink to one) whose whole subtree is listed as one unit."""

    key: str
    path: str
    above: tuple[str, ...]  # the directories above it, to refuse a symlink leading back up


_Piece = _Dir | tuple[list[str], list[os.stat_result]]  # a directory, or a run of files in it
_Share = tuple[list[Tree], str | None]  # the trees of a share's first blocks, and why the next was refused


def list_tree(root: str, workers: int = 1, serial_seconds: float = _SERIAL_SECONDS) -> Tree:
    """List every file under ``root``, following symlinks and refusing loops, special files and
    what cannot be read (:class:`Refused`, naming the first such key in sorted order).

    With ``workers`` above 1, a tree not listed within ``serial_seconds`` is finished by that
    many processes (this one among them): small trees never start one. A worker that fails
    leaves its share to this process.

    >>> tree = list_tree("sample.zarr", workers=4)
    >>> tree.keys[:2], tree.columns[0][0]
    (['.zattrs', '.zgroup'], 2)
    """
    start = time.monotonic()
    tree = Tree()
    pieces = _pieces("", root, (), tree.excluded)
    while workers > 1 and 0 < _count_dirs(pieces) < _DIRECTORIES_PER_WORKER * workers:
        pieces = [p for piece in pieces for p in (_pieces(*piece, tree.excluded) if isinstance(piece, _Dir) else [piece])]
    dirs_left = _count_dirs(pieces)
    for i, piece in enumerate(pieces):
        if not isinstance(piece, _Dir):
            tree._add_files(*piece)
        elif workers > 1 and dirs_left > 1 and time.monotonic() - start > serial_seconds:
            _list_in_parallel(pieces[i:], workers, tree)
            break
        else:
            _list_dir(piece, tree)
            dirs_left -= 1
    return tree


def _count_dirs(pieces: list[_Piece]) -> int:
    return sum(isinstance(p, _Dir) for p in pieces)


def _list_in_parallel(pieces: list[_Piece], workers: int, tree: Tree) -> None:
    """List ``pieces`` into ``tree``: cut into blocks of consecutive pieces, the ``b``-th block
    listed by process ``b % workers``, this one being process 0. A process sends back a tree a
    block, not one a directory: a Zarr may hold a directory a file."""
    blocks = _blocks(pieces, _DIRECTORIES_PER_WORKER * workers)
    workers = min(workers, len(blocks))
    shares = [blocks[n::workers] for n in range(workers)]
    procs = [_start_worker(share) for share in shares[1:]]
    try:
        listed = [_list_share(shares[0]), *map(_collect, procs)]
    finally:
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    done = [out if out is not None else _list_share(share) for out, share in zip(listed, shares, strict=True)]
    refusals = [(len(trees) * workers + n, refusal) for n, (trees, refusal) in enumerate(done) if refusal is not None]
    if refusals:
        raise Refused(min(refusals)[1])
    for b in range(len(blocks)):
        tree._take(done[b % workers][0][b // workers])


def _blocks(pieces: list[_Piece], count: int) -> list[list[_Piece]]:
    """``pieces`` cut into at most ``count`` runs, each of about as many directories."""
    per_block = -(-_count_dirs(pieces) // count)
    blocks: list[list[_Piece]] = [[]]
    dirs = 0
    for piece in pieces:
        if dirs == per_block:
            blocks.append([])
            dirs = 0
        blocks[-1].append(piece)
        dirs += isinstance(piece, _Dir)
    return blocks


def _list_share(share: list[list[_Piece]]) -> _Share:
    trees: list[Tree] = []
    for block in share:
        tree = Tree()
        try:
            for piece in block:
                if isinstance(piece, _Dir):
                    _list_dir(piece, tree)
                else:
                    tree._add_files(*piece)
        except Refused as exc:
            return trees, str(exc)
        trees.append(tree)
    return trees, None


def _start_worker(share: list[list[_Piece]]) -> subprocess.Popen[bytes] | None:
    if getattr(sys, "frozen", False):  # a bundled application: its executable is no Python to run this with
        return None
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", __file__],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError as exc:
        _log.warning("cannot start a listing process (%s); this process lists its share", exc)
        return None
    try:
        assert proc.stdin is not None
        with proc.stdin:
            pickle.dump([[tuple(p) for p in block] for block in share], proc.stdin)  # no _Dir there to unpickle
    except OSError:  # it is gone already
        proc.kill()
        _log.warning("a listing process failed (exit code %s); this process lists its share", proc.wait())
        return None
    return proc


def _collect(proc: subprocess.Popen[bytes] | None) -> _Share | None:
    if proc is None:
        return None
    assert proc.stdout is not None
    try:
        parts, refusal = pickle.load(proc.stdout)  # from our own worker: trusted
    except Exception:  # noqa: BLE001 (killed, or it died: its share is listed here instead)
        proc.stdout.close()
        _log.warning("a listing process failed (exit code %s); this process lists its share", proc.wait())
        return None
    proc.stdout.close()
    proc.wait()
    return [Tree(keys.decode(errors="surrogateescape").split("\0") if keys else [], columns, excluded)
            for keys, columns, excluded in parts], refusal


def _list_dir(top: _Dir, tree: Tree) -> None:
    """Add every file under ``top`` to ``tree``, in sorted key order."""
    stack = [iter(_pieces(*top, tree.excluded))]
    while stack:
        for piece in stack[-1]:
            if isinstance(piece, _Dir):  # its files come before the rest of this directory's
                stack.append(iter(_pieces(*piece, tree.excluded)))
                break
            tree._add_files(*piece)
        else:
            stack.pop()


def _pieces(key: str, directory: str, above: tuple[str, ...], excluded: list[str]) -> list[_Piece]:
    """The entries of ``directory`` (key ``key``, ``""`` for the root) in sorted key order, a
    directory's key sorting as ``key/`` does: runs of files, and directories.

    Only files and symlinks are stat'ed: a real directory cannot lead back above itself, so the
    identities of the directories above are looked up only when a symlink to a directory is met.
    """
    prefix = key + "/" if key else ""
    below = (*above, directory)
    kept: list[tuple[str, str, os.stat_result | None]] = []
    with contextlib.ExitStack() as opened:
        try:
            # Listed by a descriptor where the platform can: each stat then looks up a name in
            # the directory, not the whole path again (2.9-3.1 -> 2.4 µs a file, `docs/per-file-work.md`).
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY) if _BY_DESCRIPTOR else None
            if fd is not None:
                opened.callback(os.close, fd)
            with os.scandir(directory if fd is None else fd) as listing:
                entries = list(listing)
        except OSError as exc:
            raise Refused(f"cannot list {directory} ({exc.strerror or exc}); fix its permissions") from None
        for entry in entries:
            name = prefix + entry.name
            if entry.name in EXCLUDED_NAMES:
                excluded.append(name)
            elif entry.is_dir(follow_symlinks=False):
                kept.append((name + "/", entry.name, None))
            else:
                try:
                    st = entry.stat()
                except OSError as exc:
                    raise Refused(f"cannot read {name} ({exc.strerror or exc}); a broken symlink? fix or remove it") from None
                if stat.S_ISREG(st.st_mode):
                    kept.append((name, entry.name, st))
                elif not stat.S_ISDIR(st.st_mode):
                    raise Refused(f"{name} is not a regular file (a FIFO, socket or device)")
                elif (st.st_dev, st.st_ino) in {(a.st_dev, a.st_ino) for a in map(os.stat, below)}:
                    raise Refused(f"symlink loop at {name} (it leads back to a directory above it); remove the link")
                else:
                    kept.append((name + "/", entry.name, None))
    kept.sort(key=_first)
    pieces: list[_Piece] = []
    keys: list[str] = []
    stats = []
    for name, base, file_stat in kept:
        if file_stat is not None:
            keys.append(name)
            stats.append(file_stat)
            continue
        if keys:
            pieces.append((keys, stats))
            keys, stats = [], []
        pieces.append(_Dir(name[:-1], os.path.join(directory, base), below))
    if keys:
        pieces.append((keys, stats))
    return pieces


def _worker() -> None:
    """List the share of blocks on stdin; their trees, or why one was refused, to stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the upload, which ends its workers
    share = pickle.load(sys.stdin.buffer)
    trees, refusal = _list_share([[_Dir(*p) if len(p) == 3 else p for p in block] for block in share])
    # one string a tree: faster; names that are not UTF-8 pass as they are, for the uploader to refuse
    parts = [("\0".join(t.keys).encode(errors="surrogateescape"), t.columns, t.excluded) for t in trees]
    pickle.dump((parts, refusal), sys.stdout.buffer, protocol=5)


if __name__ == "__main__":
    _worker()

"""The listing of a local Zarr: sorted, complete, the same in one process or several, and the
same refusals either way."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dandi_icechunk.upload import walk
from dandi_icechunk.upload.walk import Refused, Tree, list_tree


def _in_processes(root: Path, workers: int = 3) -> Tree:
    """The listing with worker processes from the start (no moment listed here first)."""
    return list_tree(str(root), workers=workers, serial_seconds=0)


def _as_dict(tree: Tree) -> dict[str, tuple[int, int, int]]:
    return dict(zip(tree.keys, zip(*tree.columns, strict=True), strict=True))


def _tree(root: Path, directories: int = 40, files: int = 3) -> set[str]:
    """A Zarr-like tree: chunk directories of files, metadata beside them, nested two deep;
    enough directories under ``a`` to be shared out as they are."""
    keys = {".zgroup", "a/.zarray"}
    for d in range(directories):
        for f in range(files):
            keys.add(f"a/{d}/{f}")
            keys.add(f"a/{d}/sub/{f}")
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(key.encode())
    return keys


@given(st.lists(st.lists(st.sampled_from(["a", "a.b", "a-", "a b", "ab", "b", "0", "10", "2", ".zarray", "zarr.json", "é", "A"]),
                         min_size=1, max_size=3), min_size=1, max_size=25))
def test_the_listing_is_in_sorted_key_order_so_it_needs_no_sort_in_one_process_or_several(paths: list[list[str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files: set[str] = set()
        for parts in paths:
            key = "/".join(parts)
            # a name is a file or a directory, not both
            if any(key.startswith(f + "/") or f.startswith(key + "/") for f in files):
                continue
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(b"x")
            files.add(key)
        serial = list_tree(tmp)
        parallel = list_tree(tmp, workers=2, serial_seconds=0)
    assert serial.keys == sorted(files)
    assert _as_dict(parallel) == _as_dict(serial) and parallel.keys == serial.keys


def test_worker_processes_list_symlinks_odd_names_and_leave_out_what_dandi_cli_does_as_one_process_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _tree(tmp_path)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_bytes(b"linked")
    os.symlink(tmp_path / "outside", tmp_path / "a" / "3" / "linked")
    os.symlink(tmp_path / "a" / "0" / "0", tmp_path / "a" / "7" / "also0")
    (tmp_path / "a" / "5" / ".git").mkdir()
    (tmp_path / "a" / "5" / ".git" / "HEAD").write_bytes(b"x")
    (tmp_path / "a" / "9" / ".gitattributes").write_bytes(b"x")
    Path(os.fsdecode(bytes(tmp_path / "a" / "8") + b"/not-utf8-\xff")).write_bytes(b"x")  # for the uploader to refuse

    serial = list_tree(str(tmp_path))
    shares_here: list[int] = []
    list_share = walk._list_share
    monkeypatch.setattr(walk, "_list_share", lambda share: shares_here.append(len(share)) or list_share(share))
    parallel = _in_processes(tmp_path)
    assert len(shares_here) == 1, "a worker failed: its share was listed here"

    assert set(serial.keys) == keys | {"outside/f", "a/3/linked/f", "a/7/also0", os.fsdecode(b"a/8/not-utf8-\xff")}
    assert serial.columns[0][serial.keys.index("a/3/linked/f")] == len(b"linked")
    assert _as_dict(parallel) == _as_dict(serial) and parallel.keys == serial.keys
    assert sorted(parallel.excluded) == sorted(serial.excluded) == ["a/5/.git", "a/9/.gitattributes"]


def _fifo(root: Path, directory: str) -> str:
    os.mkfifo(root / directory / "fifo")
    return f"{directory}/fifo is not a regular file"


def _loop(root: Path, directory: str) -> str:
    os.symlink("..", root / directory / "loop")
    return f"symlink loop at {directory}/loop"


def _dangling(root: Path, directory: str) -> str:
    os.symlink(root / "nowhere", root / directory / "9")
    return f"cannot read {directory}/9"


@pytest.mark.parametrize("breaker", [_fifo, _loop, _dangling], ids=["special file", "symlink loop", "dangling symlink"])
def test_worker_processes_refuse_the_first_bad_entry_in_key_order_as_one_process_does(
    breaker: Callable[[Path, str], str], tmp_path: Path
) -> None:
    """Two bad entries in directories of different processes' shares: the one first in key
    order is named, whichever process met it."""
    _tree(tmp_path)
    # 3 processes, a's 40 directories in 20 blocks of 2 in key order (0 1, 10 11, 12 13, 14 15,
    # ...), block b listed by process b % 3: a worker lists a/10, this process a/14
    first = breaker(tmp_path, "a/10/sub")
    breaker(tmp_path, "a/14/sub")
    with pytest.raises(Refused) as serial:
        list_tree(str(tmp_path))
    with pytest.raises(Refused) as parallel:
        _in_processes(tmp_path)
    assert first in str(serial.value)
    assert str(parallel.value) == str(serial.value)


def test_a_small_tree_is_listed_without_starting_a_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = _tree(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker process was started")

    monkeypatch.setattr(walk.subprocess, "Popen", refuse)
    assert list_tree(str(tmp_path), workers=4).keys == sorted(keys)


def test_the_listing_is_shared_with_worker_processes_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = _tree(tmp_path)
    started: list[list[str]] = []
    popen = subprocess.Popen

    def spy(args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        started.append(args)
        return popen(args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(walk.subprocess, "Popen", spy)
    assert _in_processes(tmp_path, workers=3).keys == sorted(keys)
    assert len(started) == 2 and all(args[-1].endswith("walk.py") for args in started)


def test_a_worker_sends_back_a_tree_a_block_of_directories_not_one_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Zarr of one file a directory: a tree for each would cost more than listing it here."""
    keys = {f"{i}/0" for i in range(200)}
    for key in keys:
        (tmp_path / key).parent.mkdir()
        (tmp_path / key).write_bytes(b"x")
    sent_back: list[int] = []
    collect = walk._collect

    def counted(proc: subprocess.Popen[bytes] | None) -> object:
        out = collect(proc)
        assert out is not None
        sent_back.append(len(out[0]))
        return out

    monkeypatch.setattr(walk, "_collect", counted)
    assert _in_processes(tmp_path, workers=2).keys == sorted(keys)
    assert sent_back == [8]  # the worker's 8 of 16 blocks


@pytest.mark.parametrize("executable", ["/nonexistent/python", sys.executable + "-that-dies"], ids=["cannot start", "dies"])
def test_a_worker_that_cannot_start_or_dies_leaves_its_share_to_this_process(
    executable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "z"
    keys = _tree(root)
    expected = _as_dict(list_tree(str(root)))
    if executable.endswith("-that-dies"):
        executable = str(tmp_path / "dies")
        Path(executable).write_text("#!/bin/sh\nkill -9 $$\n")
        Path(executable).chmod(0o755)
    monkeypatch.setattr(walk.sys, "executable", executable)
    tree = _in_processes(root)
    assert tree.keys == sorted(keys) and _as_dict(tree) == expected
    assert caplog.text.count("this process lists its share") == 2  # one line for each of the 2 workers


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open descriptors in /proc")
@pytest.mark.parametrize("breaker", [None, _fifo, _loop, _dangling], ids=["listed", "special file", "symlink loop", "dangling symlink"])
def test_the_listing_leaves_no_directory_open_whether_it_ends_or_is_refused(
    breaker: Callable[[Path, str], str] | None, tmp_path: Path
) -> None:
    keys = _tree(tmp_path)
    if breaker is not None:
        breaker(tmp_path, "a/10/sub")
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        if breaker is None:
            assert set(list_tree(str(tmp_path)).keys) == keys
        else:
            with pytest.raises(Refused):
                list_tree(str(tmp_path))
    assert set(os.listdir("/proc/self/fd")) == before

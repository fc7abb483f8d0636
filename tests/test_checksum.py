"""Our one-pass dandi-zarr-checksum gives exactly what the zarr_checksum package gives."""

from __future__ import annotations

import hashlib
import random
from pathlib import PurePosixPath

import pytest
from zarr_checksum import compute_zarr_checksum
from zarr_checksum.generators import ZarrArchiveFile

from dandi_icechunk.checksum import DirectoryDigests
from dandi_icechunk.index import DigestIndex, FileDigest, FileDigests

NAMES = ["a", "b", "0", "1", "10", "2", "c0", ".zarray", ".zattrs", "zarr.json", "é", "A", "q\"", "b\\", "\x7f"]


def _random_tree(rng: random.Random) -> dict[str, tuple[str, int]]:
    keys = {"/".join(rng.choice(NAMES) for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 40))}
    # a name cannot be both a file and a directory
    files = [k for k in keys if not any(other.startswith(k + "/") for other in keys)]
    return {k: (hashlib.md5(k.encode()).hexdigest(), rng.randint(0, 10**9)) for k in files}


def _checksums(files: dict[str, tuple[str, int]]) -> set[str]:
    """Ours, from a dict of digests and from packed ones (their rows are read another way)."""
    digests = {k: FileDigest(md5, size) for k, (md5, size) in files.items()}
    return {DigestIndex(2, digests).zarr_checksum(), DigestIndex(2, FileDigests(digests)).zarr_checksum()}


def _reference(files: dict[str, tuple[str, int]]) -> str:
    return str(compute_zarr_checksum(
        ZarrArchiveFile(path=PurePosixPath(k), size=size, digest=md5)  # type: ignore[arg-type]
        for k, (md5, size) in files.items()
    ))


@pytest.mark.parametrize("seed", range(50))
def test_checksum_matches_zarr_checksum_package_on_random_trees(seed: int) -> None:
    files = _random_tree(random.Random(seed))
    assert _checksums(files) == {_reference(files)}


def test_checksum_of_no_files_is_the_packages_empty_checksum() -> None:
    assert _checksums({}) == {_reference({})}


def test_checksum_changes_when_one_file_changes() -> None:
    files = {f"{i}/0": (hashlib.md5(str(i).encode()).hexdigest(), 100) for i in range(5000)}  # past one hex block
    (before,) = _checksums(files)
    files["500/0"] = (hashlib.md5(b"changed").hexdigest(), 100)
    assert _checksums(files) != {before}


def _changed(rng: random.Random, files: dict[str, tuple[str, int]]) -> tuple[dict[str, tuple[str, int]], set[str]]:
    """``files`` with some removed, some changed and some added (new directories among them),
    and the keys that differ."""
    keys = sorted(files)
    removed = set(rng.sample(keys, rng.randint(0, len(keys) // 3)))
    edited = set(rng.sample(keys, rng.randint(0, len(keys) // 3))) - removed
    now = {k: v for k, v in files.items() if k not in removed}
    now |= {k: (hashlib.md5(f"edited {k}".encode()).hexdigest(), rng.randint(0, 10**9)) for k in edited}
    added = set(_random_tree(rng)) - set(files)
    # a name cannot be both a file and a directory
    added = {k for k in added if not any(o.startswith(k + "/") or k.startswith(o + "/") for o in now)}
    now |= {k: (hashlib.md5(f"added {k}".encode()).hexdigest(), 7) for k in added}
    return now, removed | edited | added


def _directories(files: dict[str, tuple[str, int]]) -> DirectoryDigests:
    return DirectoryDigests.of((k, *files[k]) for k in sorted(files))


def _packed(files: dict[str, tuple[str, int]]) -> FileDigests:
    return FileDigests((k, FileDigest(md5, size)) for k, (md5, size) in files.items())


@pytest.mark.parametrize("seed", range(60))
def test_directory_digests_updated_where_files_changed_equal_those_computed_whole(seed: int) -> None:
    rng = random.Random(seed)
    files = _random_tree(rng)
    directories = _directories(files)
    assert directories.checksum == _reference(files)
    for _ in range(3):  # updates of updates
        files, changed = _changed(rng, files)
        directories = directories.updated(_packed(files), changed)
        assert dict(directories.items()) == dict(_directories(files).items())
        assert directories.checksum == _reference(files)


def test_directory_digests_updated_recompute_only_the_directories_above_changed_files() -> None:
    files = {f"{i}/{j}": (hashlib.md5(f"{i}/{j}".encode()).hexdigest(), 10) for i in range(50) for j in range(3)}
    directories = _directories(files)
    files["7/1"] = (hashlib.md5(b"new").hexdigest(), 11)
    # a change left out of ``changed`` stays out: what is not named is taken from before
    assert directories.updated(_packed(files), []).checksum == directories.checksum
    updated = directories.updated(_packed(files), ["7/1"])
    assert updated.checksum == _reference(files)
    assert {d for d in updated if updated[d] != directories[d]} == {"", "7"}


def test_directory_digests_refuse_a_new_directory_none_of_whose_keys_is_named_changed() -> None:
    files = {"a/0": (hashlib.md5(b"0").hexdigest(), 1)}
    directories = _directories(files)
    files |= {"b/c/0": (hashlib.md5(b"1").hexdigest(), 1), "d": (hashlib.md5(b"2").hexdigest(), 1)}
    with pytest.raises(ValueError, match="b/ is new"):
        directories.updated(_packed(files), ["d"])

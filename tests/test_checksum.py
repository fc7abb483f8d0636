"""Our one-pass dandi-zarr-checksum gives exactly what the zarr_checksum package gives."""

from __future__ import annotations

import hashlib
import random
from pathlib import PurePosixPath

import pytest
from zarr_checksum import compute_zarr_checksum
from zarr_checksum.generators import ZarrArchiveFile

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

"""Bad input: one clear error naming the problem, and the repository exactly as it was."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from dandi_icechunk.errors import (
    InvalidZarrError,
    InvalidZarrIdError,
    RefNotFoundError,
    RepositoryNotFoundError,
    StorageLocationError,
)
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.snapshot_files import verify_snapshot
from dandi_icechunk.testing import make_ome_zarr_v2, make_zarr_v3
from dandi_icechunk.upload import upload_zarr


def _broken_zarray(z: Path) -> None:
    (z / "0" / ".zarray").write_text('{"shape": [16, 64, 64], "chunks": ')


def _missing_zarray(z: Path) -> None:
    (z / "1" / ".zarray").unlink()


def _mixed_v2_v3(z: Path) -> None:
    (z / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))


def _symlink_loop(z: Path) -> None:
    os.symlink("..", z / "0" / "loop")


def _dangling_symlink(z: Path) -> None:
    os.symlink(z / "nowhere", z / "0" / "0" / "0" / "9")


def _invalid_key(z: Path) -> None:
    (z / "0" / "0" / "0" / "a\\b").write_bytes(b"x")


def _reserved_key(z: Path) -> None:
    (z / "__private").write_bytes(b"x")


def _zarr_format_wrong(z: Path) -> None:
    meta = json.loads((z / "0" / ".zarray").read_text())
    meta["zarr_format"] = 3
    (z / "0" / ".zarray").write_text(json.dumps(meta))


def _not_utf8_name(z: Path) -> None:
    (Path(os.fsdecode(bytes(z / "0" / "0" / "0") + b"/bad\xffname"))).write_bytes(b"x")


def _fifo(z: Path) -> None:
    os.mkfifo(z / "0" / "0" / "0" / "5")


BREAKERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "broken metadata JSON": (_broken_zarray, r"0/\.zarray is not valid JSON"),
    "missing .zarray": (_missing_zarray, r"neither \.zarray nor \.zgroup"),
    "mixed v2 and v3": (_mixed_v2_v3, "mixed Zarr v2 and v3 metadata"),
    "symlink loop": (_symlink_loop, "symlink loop at 0/loop"),
    "unreadable (dangling symlink)": (_dangling_symlink, "cannot read 0/0/0/9"),
    "invalid key": (_invalid_key, "is not a valid Zarr key"),
    "reserved key": (_reserved_key, "__private' is not a valid Zarr key"),
    "wrong zarr_format": (_zarr_format_wrong, "zarr_format is 3, expected 2"),
    "special file": (_fifo, "not a regular file"),
    "name not UTF-8": (_not_utf8_name, r"0/0/0/bad\\xffname: its name is not UTF-8"),
}


@pytest.mark.parametrize("case", list(BREAKERS))
def test_bad_zarr_is_refused_with_the_reason_and_changes_nothing(
    case: str, location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    first = upload_zarr(src, location, zarr_id)
    breaker, message = BREAKERS[case]
    breaker(src)
    with pytest.raises(InvalidZarrError, match=message):
        upload_zarr(src, location, zarr_id)
    repo = ZarrRepository.open(location, zarr_id)
    assert repo.resolve() == first.snapshot_id
    assert len(repo.history()) == 2


def test_bad_zarr_does_not_even_create_a_repository(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    _mixed_v2_v3(src)
    with pytest.raises(InvalidZarrError):
        upload_zarr(src, location, zarr_id)
    with pytest.raises(RepositoryNotFoundError, match="no repository for zarr_id"):
        ZarrRepository.open(location, zarr_id)


def test_unreadable_file_is_named(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode; the dangling-symlink case covers this")
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    os.chmod(src / "0" / "0" / "0" / "0", 0)
    with pytest.raises(InvalidZarrError, match="cannot read 0/0/0/0"):
        upload_zarr(src, location, zarr_id)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text("x"), "is not a directory"),
        (lambda p: p.mkdir(), "this is not a Zarr"),
        (lambda p: (p.mkdir(), (p / "data.bin").write_bytes(b"1")), "this is not a Zarr"),
    ],
    ids=["a file", "an empty directory", "a directory of other files"],
)
def test_not_a_zarr(make: Callable[[Path], object], message: str, location: StorageLocation,
                    zarr_id: str, tmp_path: Path) -> None:
    target = tmp_path / "thing.zarr"
    make(target)
    with pytest.raises(InvalidZarrError, match=message):
        upload_zarr(target, location, zarr_id)


def test_zarr_id_that_is_not_a_uuid(location: StorageLocation, tmp_path: Path) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    with pytest.raises(InvalidZarrIdError, match="'not-a-uuid' is not a zarr_id"):
        upload_zarr(src, location, "not-a-uuid")


def test_snapshot_tag_and_branch_that_do_not_exist(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    upload_zarr(src, location, zarr_id)
    repo = ZarrRepository.open(location, zarr_id)
    with pytest.raises(RefNotFoundError, match="snapshot AAAAAAAAAAAAAAAAAAAA .* does not exist"):
        verify_snapshot(repo, snapshot_id="AAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(RefNotFoundError, match="is not a snapshot ID"):
        export_snapshot(repo, tmp_path / "out", snapshot_id="nonsense")
    with pytest.raises(RefNotFoundError, match="tag 'v1'"):
        export_snapshot(repo, tmp_path / "out", tag="v1")
    with pytest.raises(RefNotFoundError, match="branch 'nope'"):
        repo.history("nope")
    assert not (tmp_path / "out").exists()


def test_repository_that_does_not_exist(location: StorageLocation, zarr_id: str) -> None:
    with pytest.raises(RepositoryNotFoundError, match=zarr_id):
        ZarrRepository.open(location, zarr_id)


def test_s3_endpoint_that_does_not_answer(zarr_id: str, tmp_path: Path) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    dead = StorageLocation.parse("s3://dandiarchive?endpoint_url=http://127.0.0.1:9")
    with pytest.raises(StorageLocationError, match="http://127.0.0.1:9 does not answer"):
        upload_zarr(src, dead, zarr_id)


def test_export_refuses_an_existing_destination(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    upload_zarr(src, location, zarr_id)
    dest = tmp_path / "exists"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(Exception, match="already exists"):
        export_snapshot(ZarrRepository.open(location, zarr_id), dest)
    assert (dest / "keep").read_text() == "mine"
    shutil.rmtree(dest)

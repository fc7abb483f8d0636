"""One Zarr in many Dandisets: reuse by reference, copy-on-write edits, upload dedup."""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr

from dandi_icechunk import open_dataset
from dandi_icechunk.archive_hooks import (
    attach_zarr_to_dandiset,
    finalize_upload,
    publish_dandiset,
    publish_tag,
    unembargo_dandiset_zarrs,
)
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.read import AccessDeniedError
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.reference import SnapshotReference
from dandi_icechunk.reuse import ReuseError, find_by_checksum, register_checksum
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.testing import S3Server, draft_zarr_asset, make_zarr_v3
from dandi_icechunk.upload import upload_zarr

from .conftest import chunk_objects, tree_bytes


def _publish(location: StorageLocation, dandiset: str, version: str, zarr_id: str, branch: str = "main") -> SnapshotReference:
    repo = ZarrRepository.open(location, zarr_id)
    info = repo.commit_info(repo.resolve(branch=branch))
    assert info is not None
    asset = draft_zarr_asset(zarr_id, "x.zarr", info.zarr_checksum, info.size)
    return SnapshotReference.from_asset(publish_dandiset(dandiset, version, [asset], location=location)[0])


def test_zarr_reused_in_a_second_dandiset_without_upload_and_edited_copy_on_write(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr", shape=(16, 128, 128), chunks=(4, 32, 32))
    upload_zarr(src, location, zarr_id, dandiset="000001")
    a_v1 = _publish(location, "000001", "0.260101.1200", zarr_id)
    a_files = tree_bytes(src)
    chunks_before = chunk_objects(location, zarr_id)

    attached = attach_zarr_to_dandiset(zarr_id, "000002", location=location, tag=a_v1.tag)
    assert (attached.snapshot_id, attached.branch) == (a_v1.snapshot_id, "dandiset/000002")
    assert attach_zarr_to_dandiset(zarr_id, "000002", location=location) == attached  # idempotent
    assert chunk_objects(location, zarr_id) == chunks_before  # nothing uploaded
    b_v1 = _publish(location, "000002", "0.260102.1200", zarr_id)
    assert b_v1.snapshot_id == a_v1.snapshot_id

    b_src = tmp_path / "b.zarr"
    shutil.copytree(src, b_src)
    noise = np.random.default_rng(5).integers(0, 4096, (4, 16, 16), dtype=np.uint16)
    zarr.open_group(str(b_src), mode="r+")["data"][0:4, 0:16, 0:16] = noise  # B edits one chunk
    edit = upload_zarr(b_src, location, zarr_id, branch=attached.branch, dandiset="000002")
    assert edit.files_written == 1
    finalize_upload(zarr_id, location=location, dandiset_id="000002")  # B's draft now names it
    assert len(chunk_objects(location, zarr_id) - chunks_before) == 1  # copy-on-write: one new chunk

    repo = ZarrRepository.open(location, zarr_id)
    assert repo.resolve() == a_v1.snapshot_id  # A's draft did not move
    assert repo.resolve(tag=a_v1.tag) == a_v1.snapshot_id
    out = export_snapshot(repo, tmp_path / "a-now.zarr")
    assert tree_bytes(Path(out.destination)) == a_files
    b_v2 = _publish(location, "000002", "0.260103.1200", zarr_id, branch=attached.branch)
    assert b_v2.snapshot_id == edit.snapshot_id and b_v2.tag == publish_tag("000002", "0.260103.1200")
    out = export_snapshot(repo, tmp_path / "b-v2.zarr", tag=b_v2.tag)
    assert tree_bytes(Path(out.destination)) == tree_bytes(b_src)


def test_uploading_content_the_archive_already_holds_uploads_nothing(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr", chunks=(4, 16, 16))
    first = upload_zarr(src, location, zarr_id, dandiset="000001")
    copy = tmp_path / "copy.zarr"
    shutil.copytree(src, copy)
    chunks_before = chunk_objects(location, zarr_id)

    new_id = str(uuid.uuid4())
    again = upload_zarr(copy, location, new_id, dandiset="000002")
    assert again.reused and again.zarr_id == zarr_id and again.snapshot_id == first.snapshot_id
    assert (again.files_written, again.bytes_written) == (0, 0)
    assert chunk_objects(location, zarr_id) == chunks_before
    assert "dandiset/000002" in ZarrRepository.open(location, zarr_id).icechunk.list_branches()
    with pytest.raises(Exception, match="no repository"):
        ZarrRepository.open(location, new_id)
    fresh = upload_zarr(copy, location, new_id, dedup=False)
    assert not fresh.reused and fresh.files_written == fresh.file_count


def test_checksum_lookup_keeps_the_first_entry_and_ignores_stale_ones(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    result = upload_zarr(src, location, zarr_id)
    register_checksum(location, result.zarr_checksum, str(uuid.uuid4()), "AAAAAAAAAAAAAAAAAAAA", embargoed=False)
    assert find_by_checksum(location, result.zarr_checksum) == (zarr_id, result.snapshot_id)
    stale = "0" * 32 + "-1--1"
    register_checksum(location, stale, zarr_id, result.snapshot_id, embargoed=False)
    assert find_by_checksum(location, stale) is None


def test_embargoed_zarr_cannot_join_a_public_dandiset(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    upload_zarr(make_zarr_v3(tmp_path / "a.zarr"), location, zarr_id, embargoed=True)
    with pytest.raises(ReuseError, match="embargoed Dandiset"):
        attach_zarr_to_dandiset(zarr_id, "000002", location=location)
    assert ZarrRepository.open(location, zarr_id).icechunk.list_branches() == {"main"}
    assert attach_zarr_to_dandiset(zarr_id, "000003", location=location, dandiset_embargoed=True).branch == "dandiset/000003"


def test_public_zarr_in_an_embargoed_dandiset_never_gets_its_new_chunks(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    upload_zarr(src, location, zarr_id)
    attached = attach_zarr_to_dandiset(zarr_id, "000004", location=location, dandiset_embargoed=True)
    assert attached.branch == "embargoed/dandiset/000004"
    zarr.open_group(str(src), mode="r+")["data"][:] = 1
    before = chunk_objects(location, zarr_id)
    with pytest.raises(ReuseError, match="public prefix"):
        upload_zarr(src, location, zarr_id, branch=attached.branch)
    assert chunk_objects(location, zarr_id) == before
    assert ZarrRepository.open(location, zarr_id).resolve(branch=attached.branch) == attached.snapshot_id


def test_unembargo_makes_the_same_snapshots_public_without_uploading_again(
    public_s3_server: S3Server, tmp_path: Path
) -> None:
    admin = public_s3_server.location()
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr", seed=uuid.UUID(zid).int % 1000 + 100)  # content of its own
    first = upload_zarr(src, admin, zid, embargoed=True)
    anonymous = dataclasses.replace(admin, credentials=None, anonymous=True)
    with pytest.raises(AccessDeniedError):
        open_dataset(zid, location=anonymous, snapshot_id=first.snapshot_id, anonymous=True)

    client = public_s3_server.client()
    private = f"{admin.repository_prefix(zid, embargoed=True)}/"
    stored = {o["Key"][len(private):]: o["ETag"] for o in client.list_objects_v2(Bucket=public_s3_server.bucket, Prefix=private)["Contents"]}
    [result] = unembargo_dandiset_zarrs([zid], location=admin)
    assert result.objects_moved == len(stored)
    public = f"{admin.repository_prefix(zid)}/"
    moved = {o["Key"][len(public):]: o["ETag"] for o in client.list_objects_v2(Bucket=public_s3_server.bucket, Prefix=public)["Contents"]}
    assert moved == stored  # the same objects, byte for byte (ETags), nothing re-uploaded
    assert client.list_objects_v2(Bucket=public_s3_server.bucket, Prefix=private)["KeyCount"] == 0

    ds = open_dataset(zid, location=anonymous, snapshot_id=first.snapshot_id, anonymous=True)
    np.testing.assert_array_equal(ds["data"].values, zarr.open_group(str(src), mode="r")["data"][:])
    assert unembargo_dandiset_zarrs([zid], location=admin)[0].objects_moved == 0  # idempotent
    assert find_by_checksum(admin, first.zarr_checksum) == (zid, first.snapshot_id)


def test_unembargo_of_a_local_bucket_is_one_rename(zarr_id: str, tmp_path: Path) -> None:
    location = StorageLocation(kind="file", bucket=str(tmp_path / "bucket"))
    first = upload_zarr(make_zarr_v3(tmp_path / "a.zarr"), location, zarr_id, embargoed=True)
    assert ZarrRepository.open(location, zarr_id).embargoed
    unembargo_dandiset_zarrs([zarr_id], location=location)
    repo = ZarrRepository.open(location, zarr_id)
    assert not repo.embargoed and repo.resolve() == first.snapshot_id


def test_attaching_an_unknown_zarr_or_snapshot_says_so(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    from dandi_icechunk.errors import RefNotFoundError, RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        attach_zarr_to_dandiset(str(uuid.uuid4()), "000002", location=location)
    upload_zarr(make_zarr_v3(tmp_path / "a.zarr"), location, zarr_id)
    with pytest.raises(RefNotFoundError, match="does not exist"):
        attach_zarr_to_dandiset(zarr_id, "000002", location=location, snapshot_id="AAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(RefNotFoundError, match="tag 'nope'"):
        attach_zarr_to_dandiset(zarr_id, "000002", location=location, tag="nope")
    assert ZarrRepository.open(location, zarr_id).icechunk.list_branches() == {"main"}

"""A Zarr shared by two Dandisets: what Dandiset B's uploader can do to Dandiset A's refs with
the credentials vended for the shared zarr_id, and how the archive undoes it before it matters
(issue 11, item 3). Every attack uses B's own vended credentials on the real S3 server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import zarr

from dandi_icechunk.archive.ledger import recorded_drafts
from dandi_icechunk.archive_hooks import (
    attach_zarr_to_dandiset,
    finalize_upload,
    publish_dandiset,
    vend_upload_credentials,
)
from dandi_icechunk.errors import FinalizeError
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.reference import SnapshotReference
from dandi_icechunk.session import ZarrRepository, dandiset_branch
from dandi_icechunk.testing import S3Server, draft_zarr_asset, make_zarr_v3
from dandi_icechunk.upload import upload_zarr

A, B = "000101", "000202"


def _shared(server: S3Server, tmp_path: Path) -> tuple[StorageLocation, str, Path, str, StorageLocation]:
    """Zarr uploaded and finalized for A, attached to B; B's uploader's location."""
    admin = server.location()
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr", chunks=(4, 16, 16), seed=uuid.UUID(zid).int % 991)
    upload_zarr(src, admin, zid, dedup=False)
    a_draft = finalize_upload(zid, location=admin, dandiset_id=A)
    attach_zarr_to_dandiset(zid, B, location=admin)
    vended = vend_upload_credentials(zid, location=admin)
    b_uploader = StorageLocation(
        kind="s3", bucket=server.bucket, endpoint_url=server.endpoint_url, credentials=vended.credentials
    )
    assert recorded_drafts(admin, zid)[A].snapshot_id == ZarrRepository.open(admin, zid).resolve()
    return admin, zid, src, a_draft.zarr_checksum, b_uploader


def _a_edit(src: Path, admin: StorageLocation, zid: str, value: int) -> str:
    zarr.open_group(str(src), mode="r+")["data"][0:4, 0:16, 0:16] = value
    result = upload_zarr(src, admin, zid, dedup=False)
    assert result.snapshot_id is not None
    return result.snapshot_id


def _publish_a(admin: StorageLocation, zid: str, version: str) -> SnapshotReference:
    repo = ZarrRepository.open(admin, zid)
    info = repo.commit_info(recorded_drafts(admin, zid)[A].snapshot_id)
    assert info is not None
    asset = draft_zarr_asset(zid, "a.zarr", info.zarr_checksum, info.size)
    [record] = publish_dandiset(A, version, [asset], location=admin)
    return SnapshotReference.from_asset(record)


def test_b_resetting_a_draft_branch_is_undone_before_a_publishes(iam_s3_server: S3Server, tmp_path: Path) -> None:
    admin, zid, src, _, b_uploader = _shared(iam_s3_server, tmp_path)
    a_tip = _a_edit(src, admin, zid, 3)
    finalize_upload(zid, location=admin, dandiset_id=A)
    first = ZarrRepository.open(b_uploader, zid).icechunk.ancestry(branch="main")
    root = list(first)[-2].id  # A's first upload
    ZarrRepository.open(b_uploader, zid).icechunk.reset_branch("main", root)  # B's attack

    published = _publish_a(admin, zid, "0.260101.1200")
    assert published.snapshot_id == a_tip  # A published its own draft, not what B left
    assert ZarrRepository.open(admin, zid).resolve() == a_tip  # and the branch is back


def test_b_making_a_branch_under_a_s_name_is_deleted_and_never_published(
    iam_s3_server: S3Server, tmp_path: Path
) -> None:
    admin, zid, src, _, b_uploader = _shared(iam_s3_server, tmp_path)
    b_repo = ZarrRepository.open(b_uploader, zid)
    zarr.open_group(str(src), mode="r+")["data"][:] = 5
    rogue = upload_zarr(src, b_uploader, zid, branch=dandiset_branch(B), dandiset=B, dedup=False)
    b_repo.icechunk.create_branch(dandiset_branch(A), rogue.snapshot_id)  # B's attack

    published = _publish_a(admin, zid, "0.260101.1200")
    assert published.snapshot_id == recorded_drafts(admin, zid)[A].snapshot_id != rogue.snapshot_id
    assert dandiset_branch(A) not in ZarrRepository.open(admin, zid).icechunk.list_branches()


def test_b_deleting_a_draft_branch_is_undone_at_b_s_finalize(iam_s3_server: S3Server, tmp_path: Path) -> None:
    admin, zid, src, _, b_uploader = _shared(iam_s3_server, tmp_path)
    a_snapshot = recorded_drafts(admin, zid)[A].snapshot_id
    b_repo = ZarrRepository.open(b_uploader, zid)
    zarr.open_group(str(src), mode="r+")["data"][:] = 6
    upload_zarr(src, b_uploader, zid, branch=dandiset_branch(B), dandiset=B, dedup=False)
    b_repo.icechunk.reset_branch("main", b_repo.resolve(branch=dandiset_branch(B)))  # B's attack
    finalize_upload(zid, location=admin, dandiset_id=B)
    assert ZarrRepository.open(admin, zid).resolve() == a_snapshot


def test_an_upload_built_on_a_branch_someone_else_rewound_is_refused_and_put_back(
    iam_s3_server: S3Server, tmp_path: Path
) -> None:
    admin, zid, src, _, b_uploader = _shared(iam_s3_server, tmp_path)
    a_tip = _a_edit(src, admin, zid, 3)
    finalize_upload(zid, location=admin, dandiset_id=A)
    root = [s.id for s in ZarrRepository.open(admin, zid).icechunk.ancestry(branch="main")][-2]
    ZarrRepository.open(b_uploader, zid).icechunk.reset_branch("main", root)  # B rewinds A
    _a_edit(src, admin, zid, 4)  # A's next upload builds on what B left
    with pytest.raises(FinalizeError, match="another writer moved it"):
        finalize_upload(zid, location=admin, dandiset_id=A)
    assert ZarrRepository.open(admin, zid).resolve() == a_tip

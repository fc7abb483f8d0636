"""Vended upload credentials: one repository prefix, no delete, short-lived, refreshed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

from dandi_icechunk.archive.credentials import CredentialVendor
from dandi_icechunk.archive_hooks import finalize_upload, vend_upload_credentials
from dandi_icechunk.errors import DandiIcechunkError
from dandi_icechunk.location import S3Credentials, StorageLocation
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.reuse import find_by_checksum
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.testing import S3Server, make_zarr_v3, run_seaweedfs
from dandi_icechunk.upload import upload_zarr

from .conftest import tree_bytes


def _client(server: S3Server, creds: S3Credentials):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                        aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key)


def _static(server: S3Server, creds: S3Credentials) -> StorageLocation:
    return StorageLocation(kind="s3", bucket=server.bucket, endpoint_url=server.endpoint_url, credentials=creds)


def test_vended_credentials_upload_their_repository_and_nothing_else(iam_s3_server: S3Server, tmp_path: Path) -> None:
    admin = iam_s3_server.location()
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr", seed=11)
    upload_zarr(make_zarr_v3(tmp_path / "b.zarr", seed=12), admin, other, dedup=False)
    vended = vend_upload_credentials(mine, location=admin)
    assert vended.credentials.expires_at is not None
    uploader = _static(iam_s3_server, vended.credentials)

    result = upload_zarr(src, uploader, mine, dedup=False)
    out = export_snapshot(ZarrRepository.open(admin, mine), tmp_path / "back.zarr")
    assert tree_bytes(Path(out.destination)) == tree_bytes(src)
    info = finalize_upload(mine, location=admin)
    assert info.zarr_checksum == result.zarr_checksum
    assert find_by_checksum(admin, result.zarr_checksum) == (mine, result.snapshot_id)

    client = _client(iam_s3_server, vended.credentials)
    own = f"{admin.repository_prefix(mine)}/repo"
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        client.delete_object(Bucket=iam_s3_server.bucket, Key=own)
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        client.get_object(Bucket=iam_s3_server.bucket, Key=f"{admin.repository_prefix(other)}/repo")
    with pytest.raises(DandiIcechunkError):
        ZarrRepository.open(uploader, other)
    before = ZarrRepository.open(admin, other).resolve()
    with pytest.raises(DandiIcechunkError):
        upload_zarr(src, uploader, other, dedup=False)
    assert ZarrRepository.open(admin, other).resolve() == before


def test_a_long_upload_outlives_its_first_credentials(iam_s3_server: S3Server, tmp_path: Path) -> None:
    """The first key expires and is revoked mid-upload; the provider vends the next one."""
    admin = iam_s3_server.location()
    vendor = CredentialVendor(admin, ttl=timedelta(seconds=6))
    zid = str(uuid.uuid4())
    location = vendor.upload_location(zid)

    class ExpireMidway:
        done = 0

        def start(self, label: str, files: int, nbytes: int) -> None:
            self.writing = label == "uploading"

        def advance(self, files: int, nbytes: int) -> None:
            self.done += files
            if self.writing and self.done == 20:
                time.sleep(6.5)
                assert vendor.revoke_expired() >= 1

        def finish(self) -> None:
            pass

    src = make_zarr_v3(tmp_path / "a.zarr", chunks=(2, 16, 16), seed=13)
    progress = ExpireMidway()
    result = upload_zarr(src, location, zid, dedup=False, progress=progress, jobs=1)
    assert progress.done > 20  # chunks written after the first key was revoked
    out = export_snapshot(ZarrRepository.open(admin, zid), tmp_path / "back.zarr", snapshot_id=result.snapshot_id)
    assert tree_bytes(Path(out.destination)) == tree_bytes(src)


def test_expired_credentials_fail_clearly_and_change_nothing(iam_s3_server: S3Server, tmp_path: Path) -> None:
    admin = iam_s3_server.location()
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr", seed=14)
    first = upload_zarr(src, admin, zid, dedup=False)
    vendor = CredentialVendor(admin, ttl=timedelta(seconds=1))
    vended = vendor.vend(zid)
    assert vendor.revoke_expired(now=datetime.now(UTC) + timedelta(seconds=5)) >= 1
    make_zarr_v3(src, seed=15)
    with pytest.raises(DandiIcechunkError, match="credentials|cannot open"):
        upload_zarr(src, _static(iam_s3_server, vended.credentials), zid, dedup=False)
    assert ZarrRepository.open(admin, zid).resolve() == first.snapshot_id


def test_the_owners_vended_credentials_read_their_embargoed_zarr(iam_s3_server: S3Server, tmp_path: Path) -> None:
    from dandi_icechunk import open_dataset
    from dandi_icechunk.read import AccessDeniedError

    admin = iam_s3_server.location()
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr", seed=16)
    upload_zarr(src, admin, zid, embargoed=True, dedup=False)
    owner = vend_upload_credentials(zid, location=admin, embargoed=True).credentials
    stranger = vend_upload_credentials(str(uuid.uuid4()), location=admin).credentials
    ds = open_dataset(zid, location=_static(iam_s3_server, owner))
    assert ds["data"].shape == (16, 64, 64)
    refreshed = CredentialVendor(admin).upload_location(zid, embargoed=True)  # a reader's refreshable credentials
    assert (open_dataset(zid, location=refreshed)["data"].values == ds["data"].values).all()
    with pytest.raises(AccessDeniedError):
        open_dataset(zid, location=_static(iam_s3_server, stranger))


def _refused_within(seconds: float, request: object) -> bool:
    """Whether ``request()`` is refused within ``seconds``: a deleted IAM key stops working
    after a short propagation delay (on AWS as on SeaweedFS), not at once."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            request()  # type: ignore[operator]
        except botocore.exceptions.ClientError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def test_each_zarr_has_one_upload_user_with_at_most_two_live_keys_and_expiry_removes_it(
    iam_s3_server: S3Server, tmp_path: Path
) -> None:
    admin = iam_s3_server.location(prefix=f"own-{uuid.uuid4().hex[:8]}")  # records no other test vends into
    zid = str(uuid.uuid4())
    ZarrRepository.open(admin, zid, create=True)
    vendor = CredentialVendor(admin, ttl=timedelta(minutes=5))
    first, second, third = (vendor.vend(zid) for _ in range(3))
    assert {first.user, second.user, third.user} == {zid}  # the bucket policy pins it by name
    iam = vendor._iam  # noqa: SLF001
    live = {k["AccessKeyId"] for k in iam.list_access_keys(UserName=zid)["AccessKeyMetadata"]}
    assert live == {second.credentials.access_key_id, third.credentials.access_key_id}
    assert _refused_within(10, lambda: _client(iam_s3_server, first.credentials).put_object(
        Bucket=iam_s3_server.bucket, Key=f"{first.prefix}/x", Body=b"x"))  # the oldest key is gone
    assert vendor.revoke_expired(now=datetime.now(UTC) + timedelta(minutes=10)) == 3
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_user(UserName=zid)


@pytest.fixture(scope="module")
def sts_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS with an STS role the archive identity may assume (as on AWS)."""
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs-sts"), sts_role="zarr-uploads") as server:
        yield server


def test_sts_sessions_upload_their_repository_only_without_delete_for_an_hour_at_most(
    sts_s3_server: S3Server, tmp_path: Path
) -> None:
    admin = sts_s3_server.location()
    vendor = CredentialVendor(admin, ttl=timedelta(hours=12), role_arn=S3Server.role_arn("zarr-uploads"))
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    upload_zarr(make_zarr_v3(tmp_path / "b.zarr", seed=12), admin, other, dedup=False)
    vended = vendor.vend(mine)
    creds = vended.credentials
    assert creds.session_token and creds.expires_at is not None
    assert timedelta(0) < creds.expires_at - datetime.now(UTC) <= timedelta(hours=1, minutes=1)  # 12 h asked
    assert vended.user.endswith(f"/zarr-{mine}")

    src = make_zarr_v3(tmp_path / "a.zarr", seed=11)
    uploader = _static(sts_s3_server, creds)
    result = upload_zarr(src, uploader, mine, dedup=False)
    out = export_snapshot(ZarrRepository.open(admin, mine), tmp_path / "back.zarr", snapshot_id=result.snapshot_id)
    assert tree_bytes(Path(out.destination)) == tree_bytes(src)

    client = boto3.client("s3", endpoint_url=sts_s3_server.endpoint_url, region_name="us-east-1",
                          aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key,
                          aws_session_token=creds.session_token)
    bucket = sts_s3_server.bucket
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        client.delete_object(Bucket=bucket, Key=f"{admin.repository_prefix(mine)}/repo")
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        client.get_object(Bucket=bucket, Key=f"{admin.repository_prefix(other)}/repo")
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        client.put_object(Bucket=bucket, Key=f"{admin.repository_prefix(other)}/chunks/evil", Body=b"x")
    before = ZarrRepository.open(admin, other).resolve()
    with pytest.raises(DandiIcechunkError):
        upload_zarr(src, uploader, other, dedup=False)
    assert ZarrRepository.open(admin, other).resolve() == before
    assert vendor.revoke_expired(datetime.now(UTC) + timedelta(days=1)) == 0  # sessions expire by themselves

"""Published snapshots survive what an uploader can do with its credentials, and GC.

Every attack runs with the uploader's own credentials against a versioned Object-Lock bucket
on the real S3 server; the audit must notice it, and its repair must bring back exactly what
the published version read.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
import zarr

from dandi_icechunk.archive.audit import Publication, audit_publications
from dandi_icechunk.archive.gc import GarbageCollectionError, collect_garbage
from dandi_icechunk.archive_hooks import protect_published, publish_dandiset
from dandi_icechunk.errors import DandiIcechunkError
from dandi_icechunk.location import S3Credentials, StorageLocation
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.snapshot_files import verify_snapshot
from dandi_icechunk.testing import S3Server, draft_zarr_asset, make_zarr_v3
from dandi_icechunk.upload import upload_zarr

from .conftest import UPLOADER, InterruptAfter, tree_bytes


def _publish(location: StorageLocation, zarr_id: str, src: Path) -> Publication:
    upload_zarr(src, location, zarr_id, dedup=False)  # its own repository, whatever other tests uploaded
    repo = ZarrRepository.open(location, zarr_id)
    info = repo.commit_info(repo.resolve())
    assert info is not None
    asset = draft_zarr_asset(zarr_id, src.name, info.zarr_checksum, info.size)
    [published] = publish_dandiset("000123", "0.260101.1200", [asset], location=location)
    return Publication.from_asset(published)


def _uploader(location: StorageLocation) -> StorageLocation:
    creds = UPLOADER["credentials"][0]  # type: ignore[index]
    return dataclasses.replace(location, credentials=S3Credentials(creds["accessKey"], creds["secretKey"]))


def _client(server: S3Server, location: StorageLocation) -> Any:
    assert location.credentials is not None
    return boto3.client(
        "s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
        aws_access_key_id=location.credentials.access_key_id,
        aws_secret_access_key=location.credentials.secret_access_key,
    )


def _keys(client: Any, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def _delete_tag(server: S3Server, loc: StorageLocation, zid: str, pub: Publication) -> None:
    ZarrRepository.open(loc, zid).icechunk.delete_tag(pub.tag)


def _expire_and_gc(server: S3Server, loc: StorageLocation, zid: str, pub: Publication) -> None:
    repo = ZarrRepository.open(loc, zid).icechunk
    later = datetime.now(UTC) + timedelta(days=1)
    repo.expire_snapshots(later, delete_expired_tags=True)
    repo.garbage_collect(later)


def _overwrite_chunks(server: S3Server, loc: StorageLocation, zid: str, pub: Publication) -> None:
    client = _client(server, loc)
    for key in _keys(client, server.bucket, f"{loc.repository_prefix(zid)}/chunks/")[:3]:
        client.put_object(Bucket=server.bucket, Key=key, Body=b"garbage")


def _delete_chunks(server: S3Server, loc: StorageLocation, zid: str, pub: Publication) -> None:
    client = _client(server, loc)
    for key in _keys(client, server.bucket, f"{loc.repository_prefix(zid)}/chunks/")[:3]:
        client.delete_object(Bucket=server.bucket, Key=key)


def _rewrite_repo_object(server: S3Server, loc: StorageLocation, zid: str, pub: Publication) -> None:
    _client(server, loc).put_object(Bucket=server.bucket, Key=f"{loc.repository_prefix(zid)}/repo", Body=b"\0" * 64)


def _delete_everything(server: S3Server, loc: StorageLocation, zid: str, pub: Publication) -> None:
    client = _client(server, loc)
    for key in _keys(client, server.bucket, f"{loc.repository_prefix(zid)}/"):
        client.delete_object(Bucket=server.bucket, Key=key)


def _overwrite_all(kind: str) -> Callable[[S3Server, StorageLocation, str, Publication], None]:
    def attack(server: S3Server, loc: StorageLocation, zid: str, pub: Publication) -> None:
        client = _client(server, loc)
        keys = _keys(client, server.bucket, f"{loc.repository_prefix(zid)}/{kind}")
        assert keys, f"the repository has no {kind} objects to attack"
        for key in keys:
            client.put_object(Bucket=server.bucket, Key=key, Body=b"\0garbage" * 8)

    return attack


def _delete_all(kind: str) -> Callable[[S3Server, StorageLocation, str, Publication], None]:
    def attack(server: S3Server, loc: StorageLocation, zid: str, pub: Publication) -> None:
        client = _client(server, loc)
        for key in _keys(client, server.bucket, f"{loc.repository_prefix(zid)}/{kind}"):
            client.delete_object(Bucket=server.bucket, Key=key)

    return attack


_OBJECT_KINDS = ("snapshots/", "manifests/", "transactions/", "overwritten/", "dandi/index/")

ATTACKS: dict[str, Callable[[S3Server, StorageLocation, str, Publication], None]] = {
    **{f"overwrite every {k.rstrip('/')} object": _overwrite_all(k) for k in _OBJECT_KINDS},
    **{f"delete every {k.rstrip('/')} object": _delete_all(k) for k in _OBJECT_KINDS},
    "delete the tag": _delete_tag,
    "expire snapshots and garbage-collect": _expire_and_gc,
    "overwrite chunk objects": _overwrite_chunks,
    "delete chunk objects": _delete_chunks,
    "rewrite the repo object": _rewrite_repo_object,
    "delete every object": _delete_everything,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_uploader_attack_is_found_by_audit_and_repaired_to_what_was_published(
    locked_s3_server: S3Server, tmp_path: Path, attack: str
) -> None:
    admin = locked_s3_server.location()
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr", shape=(16, 128, 128), chunks=(4, 32, 32))
    published_files = tree_bytes(src)
    pub = _publish(admin, zid, src)
    # the draft goes on after publishing
    zarr.open_group(str(src), mode="r+")["data"][0:4, 0:16, 0:16] = 1
    upload_zarr(src, admin, zid)
    assert audit_publications([pub], admin).ok

    ATTACKS[attack](locked_s3_server, _uploader(admin), zid, pub)

    found = audit_publications([pub], admin)
    assert not found.ok, f"the audit missed: {attack}"
    repaired = audit_publications([pub], admin, repair=True)
    assert repaired.ok, repaired.problems
    assert repaired.repairs
    repo = ZarrRepository.open(admin, zid)
    out = export_snapshot(repo, tmp_path / "published.zarr", snapshot_id=pub.snapshot_id)
    assert tree_bytes(Path(out.destination)) == published_files


def test_uploader_cannot_destroy_object_versions(locked_s3_server: S3Server, tmp_path: Path) -> None:
    admin = locked_s3_server.location()
    zid = str(uuid.uuid4())
    _publish(admin, zid, make_zarr_v3(tmp_path / "a.zarr"))
    client = _client(locked_s3_server, _uploader(admin))
    versions = client.list_object_versions(
        Bucket=locked_s3_server.bucket, Prefix=f"{admin.repository_prefix(zid)}/chunks/"
    )["Versions"]
    with pytest.raises(botocore.exceptions.ClientError):
        client.delete_object(Bucket=locked_s3_server.bucket, Key=versions[0]["Key"], VersionId=versions[0]["VersionId"])


def test_protect_puts_legal_holds_so_not_even_the_admin_can_delete_published_versions(
    locked_s3_server: S3Server, tmp_path: Path
) -> None:
    admin = locked_s3_server.location()
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr")
    _publish(admin, zid, src)
    result = protect_published(location=admin, zarr_ids=[zid])[0]
    assert result.objects_held > 0 and result.bytes_held >= tree_bytes(src).__len__()
    client = locked_s3_server.client()
    prefix = f"{admin.repository_prefix(zid)}/chunks/"
    version = client.list_object_versions(Bucket=locked_s3_server.bucket, Prefix=prefix)["Versions"][0]
    held = client.get_object_legal_hold(Bucket=locked_s3_server.bucket, Key=version["Key"], VersionId=version["VersionId"])
    assert held["LegalHold"]["Status"] == "ON"
    with pytest.raises(botocore.exceptions.ClientError):
        client.delete_object(
            Bucket=locked_s3_server.bucket, Key=version["Key"], VersionId=version["VersionId"],
            BypassGovernanceRetention=True,
        )
    assert protect_published(location=admin, zarr_ids=[zid])[0].objects_held == result.objects_held


def test_protect_needs_a_versioned_bucket(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    upload_zarr(make_zarr_v3(tmp_path / "a.zarr"), location, zarr_id)
    with pytest.raises(DandiIcechunkError, match="keeps no object versions"):
        protect_published(location=location, zarr_ids=[zarr_id])


def test_uploader_credentials_reach_no_other_prefix(locked_s3_server: S3Server) -> None:
    client = _client(locked_s3_server, _uploader(locked_s3_server.location()))
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        client.put_object(Bucket=locked_s3_server.bucket, Key="zarr/abc/0/0", Body=b"x")



    def finish(self) -> None:
        pass


def test_gc_reclaims_drafts_and_abandoned_uploads_and_keeps_published(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr", shape=(16, 128, 128), chunks=(4, 32, 32))
    pub = _publish(location, zarr_id, src)
    for seed in (1, 2):  # two draft snapshots, the first soon unreachable
        make_zarr_v3(src, shape=(16, 128, 128), chunks=(4, 32, 32), seed=seed)
        upload_zarr(src, location, zarr_id)
    tip_files = tree_bytes(src)
    make_zarr_v3(src, shape=(16, 128, 128), chunks=(4, 32, 32), seed=3)
    with pytest.raises(KeyboardInterrupt):  # an abandoned upload: its chunks are written, never committed
        upload_zarr(src, location, zarr_id, progress=InterruptAfter(10))

    later = datetime.now(UTC) + timedelta(days=2)
    before = _count_objects(location, zarr_id)
    dry = collect_garbage(location, zarr_id, restore_window=timedelta(days=1), dry_run=True, now=later)
    assert dry.snapshots_expired == 1  # the first draft
    assert dry.objects_deleted >= 10  # at least the abandoned upload's chunks
    assert _count_objects(location, zarr_id) == before
    real = collect_garbage(location, zarr_id, restore_window=timedelta(days=1), now=later)
    assert real.snapshots_expired == 1
    assert real.objects_deleted > dry.objects_deleted  # also what only the expired draft held
    assert _count_objects(location, zarr_id) == before - real.objects_deleted
    assert real.kept_published == [pub.snapshot_id]

    repo = ZarrRepository.open(location, zarr_id)
    assert verify_snapshot(repo, snapshot_id=pub.snapshot_id).ok
    assert audit_publications([pub], location).ok
    out = export_snapshot(repo, tmp_path / "tip.zarr")
    assert tree_bytes(Path(out.destination)) == tip_files
    again = collect_garbage(location, zarr_id, restore_window=timedelta(days=1), now=later)
    assert again.objects_deleted == 0


def _count_objects(location: StorageLocation, zarr_id: str) -> int:
    return sum(1 for key, *_ in ZarrRepository.open(location, zarr_id).objects.list_with_times("")
               if key.split("/")[0] in ("chunks", "manifests", "snapshots", "transactions", "dandi"))


def test_gc_within_the_restore_window_deletes_nothing(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    upload_zarr(src, location, zarr_id)
    zarr.open_group(str(src), mode="r+")["data"][:] = 1
    upload_zarr(src, location, zarr_id)
    result = collect_garbage(location, zarr_id, restore_window=timedelta(days=1))
    assert (result.snapshots_expired, result.objects_deleted) == (0, 0)


def test_gc_refuses_while_a_published_snapshot_has_lost_its_tag(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    pub = _publish(location, zarr_id, src)
    zarr.open_group(str(src), mode="r+")["data"][:] = 1
    upload_zarr(src, location, zarr_id)
    ZarrRepository.open(location, zarr_id).icechunk.delete_tag(pub.tag)
    with pytest.raises(GarbageCollectionError, match="not named by any tag"):
        collect_garbage(location, zarr_id, published_snapshots=[pub.snapshot_id], restore_window=timedelta(0))
    assert ZarrRepository.open(location, zarr_id).commit_info(pub.snapshot_id) is not None


def test_gc_without_the_published_list_keeps_what_the_archive_recorded_after_the_tag_is_deleted(
    locked_s3_server: S3Server, tmp_path: Path
) -> None:
    admin = locked_s3_server.location()
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr")
    pub = _publish(admin, zid, src)
    zarr.open_group(str(src), mode="r+")["data"][:] = 1
    upload_zarr(src, admin, zid)
    _delete_tag(locked_s3_server, _uploader(admin), zid, pub)  # the uploader's own credentials
    with pytest.raises(GarbageCollectionError, match="not named by any tag"):
        collect_garbage(admin, zid, restore_window=timedelta(0), now=datetime.now(UTC) + timedelta(days=1))
    assert ZarrRepository.open(admin, zid).commit_info(pub.snapshot_id) is not None
    assert audit_publications([pub], admin, repair=True).ok  # the tag comes back
    result = collect_garbage(admin, zid, restore_window=timedelta(0), now=datetime.now(UTC) + timedelta(days=1))
    assert result.kept_published == [pub.snapshot_id]
    assert verify_snapshot(ZarrRepository.open(admin, zid), snapshot_id=pub.snapshot_id).ok


def test_the_publication_record_is_out_of_the_uploaders_reach(locked_s3_server: S3Server, tmp_path: Path) -> None:
    admin = locked_s3_server.location()
    zid = str(uuid.uuid4())
    _publish(admin, zid, make_zarr_v3(tmp_path / "a.zarr"))
    client = _client(locked_s3_server, _uploader(admin))
    [key] = _keys(locked_s3_server.client(), locked_s3_server.bucket, admin.archive_prefix(zid))
    for write in (
        lambda: client.delete_object(Bucket=locked_s3_server.bucket, Key=key),
        lambda: client.put_object(Bucket=locked_s3_server.bucket, Key=key, Body=b"{}"),
    ):
        with pytest.raises(botocore.exceptions.ClientError):
            write()

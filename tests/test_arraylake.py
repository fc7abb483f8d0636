"""Arraylake as the home of the repositories: the real ``arraylake`` client against a local
stand-in for Earthmover's service (:mod:`dandi_icechunk.testing.arraylake_service`, a test
double: only the service calls are stood in), with every repository in the real SeaweedFS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner

from dandi_icechunk.archive.embargo import unembargo_zarr
from dandi_icechunk.archive.gc import collect_garbage
from dandi_icechunk.archive.migrate import migrate_zarr
from dandi_icechunk.archive_hooks import (
    audit_published,
    finalize_upload,
    publish_dandiset,
    vend_upload_credentials,
)
from dandi_icechunk.cli import main
from dandi_icechunk.errors import (
    AccessDeniedError,
    CredentialError,
    RepositoryNotFoundError,
    StorageLocationError,
)
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.read import open_dataset
from dandi_icechunk.reference import SnapshotReference
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.testing import S3Server, draft_zarr_asset, make_ome_zarr_v2, make_zarr_v3
from dandi_icechunk.upload import upload_zarr

from .conftest import reference_checksum
from .test_migrate import _legacy_upload, reference_another_zarrs_object_and_read_it

pytest.importorskip("arraylake", reason="the arraylake extra is not installed")


@pytest.fixture(scope="module")
def _arraylake_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Importing arraylake writes its config file: keep it out of the home directory."""
    before = os.environ.get("ARRAYLAKE_CONFIG")
    os.environ["ARRAYLAKE_CONFIG"] = str(tmp_path_factory.mktemp("arraylake-config"))
    yield
    if before is None:
        os.environ.pop("ARRAYLAKE_CONFIG", None)
    else:
        os.environ["ARRAYLAKE_CONFIG"] = before


@pytest.fixture(params=["hmac", "delegated"])
def service(request: pytest.FixtureRequest, s3_server: S3Server, _arraylake_config: None,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The stand-in service, its bucket config at a prefix of its own in the test bucket, and
    its token in ``$ARRAYLAKE_TOKEN``."""
    from dandi_icechunk.testing.arraylake_service import ArraylakeStandIn

    with ArraylakeStandIn(s3_server, prefix=f"al-{uuid.uuid4().hex[:8]}", auth=request.param) as standin:
        monkeypatch.setenv("ARRAYLAKE_TOKEN", standin.token)
        yield standin


@pytest.fixture
def location(service: Any) -> StorageLocation:
    return StorageLocation.parse(f"arraylake://{service.org}/{service.nickname}?service_uri={service.url}")


def _values(src: Path) -> np.ndarray:
    return zarr.open_group(str(src), mode="r")["data"][:]


def _bucket_storage(s3: S3Server, prefix: str) -> icechunk.Storage:
    return icechunk.s3_storage(
        bucket=s3.bucket, prefix=prefix, endpoint_url=s3.endpoint_url, region="us-east-1", allow_http=True,
        force_path_style=True, access_key_id=s3.access_key_id, secret_access_key=s3.secret_access_key,
    )


def test_upload_publish_and_read_go_through_one_arraylake_repo_per_zarr_at_dandis_prefix(
    service: Any, location: StorageLocation, s3_server: S3Server, zarr_id: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr", chunks=(4, 16, 16))
    first = upload_zarr(src, location, zarr_id)
    record = service.repos[f"zarr-{zarr_id}"]
    assert record.prefix == f"{service.bucket.prefix}/zarr-icechunk/{zarr_id}"
    assert ("POST", f"/orgs/{service.org}") not in service.calls
    assert ("POST", f"/orgs/{service.org}/repos") in service.calls  # created through the client

    repo = ZarrRepository.open(location, zarr_id)
    info = repo.commit_info(repo.resolve())
    assert info is not None and info.zarr_checksum == first.zarr_checksum
    asset = draft_zarr_asset(zarr_id, src.name, info.zarr_checksum, info.size)
    [published] = publish_dandiset("000123", "0.260101.1200", [asset], location=location)
    assert SnapshotReference.from_asset(published).repository.startswith(f"s3://{s3_server.bucket}/{record.prefix}?")
    assert audit_published([published], location=location).ok

    before = _values(src)
    make_zarr_v3(src, chunks=(4, 16, 16), seed=9)
    second = upload_zarr(src, location, zarr_id)
    assert second.snapshot_id != first.snapshot_id and len(service.repos) == 1

    # the published version reads through the xarray engine, with no Arraylake account: the
    # published metadata names the repository's bucket URL
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    monkeypatch.delenv("ARRAYLAKE_TOKEN")
    np.testing.assert_array_equal(xr.open_dataset(published, engine="dandi-icechunk")["data"].values, before)
    # and the repository stays plain Icechunk: opened without Arraylake, the tip is the draft
    plain = icechunk.Repository.open(_bucket_storage(s3_server, record.prefix))
    assert plain.lookup_branch("main") == second.snapshot_id
    assert plain.lookup_tag("dandiset/000123/0.260101.1200") == first.snapshot_id
    if service.bucket.auth_config.method != "hmac":
        assert service.vended > 0  # credentials came from Arraylake, not from the environment


def test_a_repository_already_in_the_bucket_is_imported_with_its_history_not_copied(
    service: Any, location: StorageLocation, s3_server: S3Server, zarr_id: str, tmp_path: Path,
) -> None:
    bucket_location = s3_server.location(prefix=service.bucket.prefix)
    src = make_zarr_v3(tmp_path / "a.zarr")
    before = upload_zarr(src, bucket_location, zarr_id)
    objects_before = len(s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=service.bucket.prefix)["Contents"])

    make_zarr_v3(src, seed=3)
    after = upload_zarr(src, location, zarr_id)
    assert ("POST", f"/orgs/{service.org}/repos/import") in service.calls
    assert ("POST", f"/orgs/{service.org}/repos") not in service.calls
    history = [s.id for s in ZarrRepository.open(location, zarr_id).icechunk.ancestry(branch="main")]
    assert history[:2] == [after.snapshot_id, before.snapshot_id]
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=service.bucket.prefix)["Contents"]
    assert all(o["Key"].startswith(f"{service.bucket.prefix}/zarr-icechunk") for o in listed)
    assert len(listed) > objects_before  # the update, in place


def test_a_bucket_backed_dandi_switches_by_registering_every_repository_in_place(
    service: Any, location: StorageLocation, s3_server: S3Server, tmp_path: Path,
) -> None:
    bucket_location = s3_server.location(prefix=service.bucket.prefix)
    public, private = str(uuid.uuid4()), str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr")
    first = upload_zarr(src, bucket_location, public)
    upload_zarr(src, bucket_location, private, embargoed=True, dedup=False)
    asset = draft_zarr_asset(public, src.name, first.zarr_checksum, first.size)
    publish_dandiset("000123", "0.260101.1200", [asset], location=bucket_location)

    runner = CliRunner()
    storage = ["--storage", location.url]
    done = runner.invoke(main, [*storage, "arraylake-register", "--all", "--json"])
    assert done.exit_code == 0, done.output
    assert {(r["repo"], r["imported"]) for r in json.loads(done.output)} == {
        (f"dandi/zarr-{public}", True), (f"dandi/zarr-embargoed-{private}", True)}
    assert ("POST", f"/orgs/{service.org}/repos") not in service.calls  # imported, not made anew
    assert service.repos[f"zarr-{public}"].optimization_config.gc_config.extra_gc_roots == {first.snapshot_id}
    assert ZarrRepository.open(location, public).resolve() == first.snapshot_id
    assert ZarrRepository.open(location, private).embargoed

    again = runner.invoke(main, [*storage, "arraylake-register", public, private])
    assert again.exit_code == 0 and "0 registered, 2 already registered" in again.output
    missing = runner.invoke(main, [*storage, "arraylake-register", str(uuid.uuid4())])
    assert missing.exit_code != 0 and "no repository for zarr_id" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    plain = runner.invoke(main, ["--storage", bucket_location.url, "arraylake-register", "--all"])
    assert plain.exit_code != 0 and "needs --storage arraylake://" in plain.output


def test_unembargo_moves_the_registration_with_the_objects_and_keeps_every_snapshot(
    service: Any, location: StorageLocation, zarr_id: str, tmp_path: Path,
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    uploaded = upload_zarr(src, location, zarr_id, embargoed=True)
    assert set(service.repos) == {f"zarr-embargoed-{zarr_id}"}
    assert service.repos[f"zarr-embargoed-{zarr_id}"].prefix.endswith(f"zarr-icechunk-embargoed/{zarr_id}")

    result = unembargo_zarr(location, zarr_id)
    assert result.objects_moved > 0
    assert set(service.repos) == {f"zarr-{zarr_id}"}
    repo = ZarrRepository.open(location, zarr_id)
    assert not repo.embargoed and repo.resolve() == uploaded.snapshot_id
    np.testing.assert_array_equal(zarr.open_group(repo.readonly_session().store, mode="r")["data"][:], _values(src))
    assert unembargo_zarr(location, zarr_id).objects_moved == 0  # idempotent


def test_gc_runs_on_a_repository_arraylake_opened(
    location: StorageLocation, zarr_id: str, tmp_path: Path,
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    upload_zarr(src, location, zarr_id)
    make_zarr_v3(src, seed=5)
    tip = upload_zarr(src, location, zarr_id).snapshot_id
    result = collect_garbage(location, zarr_id, restore_window=timedelta(0))
    assert result.snapshots_expired > 0 and result.objects_deleted > 0
    repo = ZarrRepository.open(location, zarr_id)
    assert repo.resolve() == tip
    np.testing.assert_array_equal(zarr.open_group(repo.readonly_session().store, mode="r")["data"][:], _values(src))


def test_arraylakes_scheduled_gc_keeps_every_recorded_publication_even_with_its_tag_deleted(
    service: Any, location: StorageLocation, zarr_id: str, tmp_path: Path,
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    first = upload_zarr(src, location, zarr_id)
    published_values = _values(src)
    asset = draft_zarr_asset(zarr_id, src.name, first.zarr_checksum, first.size)
    [published] = publish_dandiset("000123", "0.260101.1200", [asset], location=location)
    for seed in (4, 5):  # two drafts after it; the first of them only a draft
        make_zarr_v3(src, seed=seed)
        upload_zarr(src, location, zarr_id)
    config = service.repos[f"zarr-{zarr_id}"].optimization_config
    assert config.gc_config.extra_gc_roots == {first.snapshot_id}
    assert config.expiration_config.expire_versions_older_than == timedelta(days=30)

    repo = ZarrRepository.open(location, zarr_id)
    repo.icechunk.delete_tag(SnapshotReference.from_asset(published).tag)  # as an uploader could
    assert not audit_published([published], location=location).ok  # the audit sees it
    summary = service.run_scheduled_gc(f"zarr-{zarr_id}", now=datetime.now(UTC) + timedelta(days=31))
    assert summary.chunks_deleted > 0  # the draft in between went
    kept = ZarrRepository.open(location, zarr_id).readonly_session(snapshot_id=first.snapshot_id)
    np.testing.assert_array_equal(zarr.open_group(kept.store, mode="r")["data"][:], published_values)


def test_delegated_credentials_that_expire_are_vended_again_by_arraylake(
    s3_server: S3Server, _arraylake_config: None, monkeypatch: pytest.MonkeyPatch, zarr_id: str,
    tmp_path: Path,
) -> None:
    from dandi_icechunk.testing.arraylake_service import ArraylakeStandIn

    with ArraylakeStandIn(s3_server, prefix=f"al-{uuid.uuid4().hex[:8]}", auth="delegated",
                          credential_seconds=2) as service:
        monkeypatch.setenv("ARRAYLAKE_TOKEN", service.token)
        location = StorageLocation.parse(f"arraylake://{service.org}/{service.nickname}?service_uri={service.url}")
        src = make_zarr_v3(tmp_path / "a.zarr")
        upload_zarr(src, location, zarr_id)
        repo = ZarrRepository.open(location, zarr_id)
        before = service.vended
        time.sleep(3)  # every credential handed out so far has expired
        make_zarr_v3(src, seed=2)
        session = repo.writable_session()  # the repository opened before they expired
        zarr.open_group(session.store)["data"][0, 0, 0] = 7
        session.commit("written with renewed credentials")
        assert service.vended > before
        assert upload_zarr(src, location, zarr_id).snapshot_id is not None


def test_a_legacy_zarr_migrates_into_an_arraylake_repo_and_reads_its_own_objects_only(
    service: Any, location: StorageLocation, s3_server: S3Server, zarr_id: str, tmp_path: Path,
) -> None:
    src = make_ome_zarr_v2(tmp_path / "legacy.ome.zarr")
    _legacy_upload(s3_server, location, zarr_id, src)
    result = migrate_zarr(location, zarr_id, expected_checksum=reference_checksum(src))
    assert result.virtual_chunks > 0 and set(service.repos) == {f"zarr-{zarr_id}"}
    level0 = np.asarray(zarr.open_array(str(src / "0"), mode="r")[:])
    np.testing.assert_array_equal(open_dataset(zarr_id, location=location, group="0")["image"].values, level0)
    # Arraylake's own readers too: its legacy objects were authorized for the repo
    import arraylake

    plain = arraylake.Client(service_uri=service.url, token=service.token).get_repo(f"{service.org}/zarr-{zarr_id}")
    np.testing.assert_array_equal(zarr.open_group(plain.readonly_session("main").store, mode="r")["0"][:], level0)

    # an uploader, as a repo writer, has Arraylake authorize the whole bucket for its repository:
    # our readers still fetch no other Zarr's object through it
    attacker = str(uuid.uuid4())
    client = arraylake.Client(service_uri=service.url, token=service.token)
    reference_another_zarrs_object_and_read_it(
        s3_server, location, attacker, tmp_path,
        before_read=lambda: client.update_virtual_chunk_containers(
            f"{service.org}/zarr-{attacker}", add={f"s3://{s3_server.bucket}/": service.nickname}),
    )
    assert service.containers[f"zarr-{attacker}"] == {f"s3://{s3_server.bucket}/": service.nickname}


def test_the_archive_hands_uploaders_arraylake_vended_credentials_for_a_delegated_role_never_hmac_keys(
    service: Any, location: StorageLocation, zarr_id: str, tmp_path: Path,
) -> None:
    if service.bucket.auth_config.method == "hmac":
        with pytest.raises(CredentialError, match="HMAC keys, which are the bucket's own"):
            vend_upload_credentials(zarr_id, location=location)
        assert not service.repos
        return
    vended = vend_upload_credentials(zarr_id, location=location)
    name = f"zarr-{zarr_id}"
    assert vended.user == f"arraylake:{service.org}/{name}" and vended.credentials.expires_at is not None
    assert ("GET", f"/repos/{service.org}/{name}/bucket-credentials") in service.calls
    # the uploader has no Arraylake account: it writes to the bucket with what it was handed
    uploader = StorageLocation(kind="s3", bucket=location.bucket, prefix=location.prefix,
                               endpoint_url=location.endpoint_url, credentials=vended.credentials)
    src = make_zarr_v3(tmp_path / "a.zarr")
    uploaded = upload_zarr(src, uploader, zarr_id)
    info = finalize_upload(zarr_id, location=location, dandiset_id="000123")
    assert info.zarr_checksum == uploaded.zarr_checksum
    assert ZarrRepository.open(location, zarr_id).resolve() == uploaded.snapshot_id


def test_the_cli_uploads_and_logs_through_an_arraylake_storage_url(
    service: Any, location: StorageLocation, zarr_id: str, tmp_path: Path,
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    storage = location.url
    assert storage.startswith("arraylake://") and service.token not in storage
    runner = CliRunner()
    result = runner.invoke(main, ["--storage", storage, "upload", str(src), "--zarr-id", zarr_id, "--json"])
    assert result.exit_code == 0, result.output
    snapshot = json.loads(result.output)["snapshot_id"]
    logged = runner.invoke(main, ["--storage", storage, "log", zarr_id, "--json"])
    assert logged.exit_code == 0, logged.output
    assert snapshot in logged.output


def test_a_registration_left_by_a_crash_before_the_repository_was_made_is_completed(
    service: Any, location: StorageLocation, zarr_id: str, tmp_path: Path,
) -> None:
    service.register_only(f"zarr-{zarr_id}", location.repository_prefix(zarr_id))
    src = make_zarr_v3(tmp_path / "a.zarr")
    uploaded = upload_zarr(src, location, zarr_id)
    assert set(service.repos) == {f"zarr-{zarr_id}"}
    assert ZarrRepository.open(location, zarr_id).resolve() == uploaded.snapshot_id


def test_a_foreign_repo_under_our_name_is_refused_and_nothing_is_written(
    s3_server: S3Server, _arraylake_config: None, monkeypatch: pytest.MonkeyPatch, zarr_id: str,
    tmp_path: Path,
) -> None:
    import arraylake

    from dandi_icechunk.testing.arraylake_service import ArraylakeStandIn

    with ArraylakeStandIn(s3_server, prefix=f"al-{uuid.uuid4().hex[:8]}", auth="hmac") as service:
        monkeypatch.setenv("ARRAYLAKE_TOKEN", service.token)
        client = arraylake.Client(service_uri=service.url, token=service.token)
        client.create_repo(f"{service.org}/zarr-{zarr_id}", bucket_config_nickname=service.nickname,
                           prefix=f"{service.bucket.prefix}/elsewhere")
        location = StorageLocation.parse(f"arraylake://{service.org}/{service.nickname}?service_uri={service.url}")
        with pytest.raises(StorageLocationError, match="not registered by dandi-icechunk"):
            upload_zarr(make_zarr_v3(tmp_path / "a.zarr"), location, zarr_id)
        listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{service.bucket.prefix}/zarr-icechunk")
        assert listed.get("KeyCount", 0) == 0


def test_bad_arraylake_locations_fail_in_one_line(
    service: Any, monkeypatch: pytest.MonkeyPatch, zarr_id: str,
) -> None:
    base = f"arraylake://{service.org}/{service.nickname}"
    for url in ("arraylake://dandi", f"{base}/extra", f"{base}?service_uri=ftp://x", f"{base}?region=x"):
        with pytest.raises(StorageLocationError, match="arraylake://ORG/BUCKET_NICKNAME|http"):
            StorageLocation.parse(url)
    with pytest.raises(StorageLocationError, match="no bucket config 'nope'"):
        StorageLocation.parse(f"arraylake://{service.org}/nope?service_uri={service.url}")
    with pytest.raises(StorageLocationError, match="does not answer"):
        StorageLocation.parse(f"{base}?service_uri=http://127.0.0.1:9")
    location = StorageLocation.parse(f"{base}?service_uri={service.url}")
    with pytest.raises(RepositoryNotFoundError):
        ZarrRepository.open(location, zarr_id)
    monkeypatch.setenv("ARRAYLAKE_TOKEN", "ema_wrong")
    with pytest.raises(AccessDeniedError, match="refused"):
        ZarrRepository.open(location, zarr_id)
    monkeypatch.delenv("ARRAYLAKE_TOKEN")
    with pytest.raises(AccessDeniedError, match="ARRAYLAKE_TOKEN"):
        StorageLocation.parse(f"{base}?service_uri={service.url}")
    assert not service.repos


def test_nothing_imports_arraylake_unless_an_arraylake_location_is_used(tmp_path: Path) -> None:
    code = (
        "import sys, dandi_icechunk, dandi_icechunk.cli, dandi_icechunk.archive_hooks, dandi_icechunk.read\n"
        "from dandi_icechunk.location import StorageLocation\n"
        "from dandi_icechunk.upload import upload_zarr\n"
        "from dandi_icechunk.testing import make_zarr_v3\n"
        f"upload_zarr(make_zarr_v3({str(tmp_path / 'a.zarr')!r}), StorageLocation.parse("
        f"{(tmp_path / 'bucket').as_uri()!r}), '{uuid.uuid4()}')\n"
        "assert 'arraylake' not in sys.modules, 'arraylake was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

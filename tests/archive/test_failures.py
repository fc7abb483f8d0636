"""Every refusal leaves the archive where a user can carry on: a finalize with nothing uploaded,
a draft that no longer matches the bucket, the bucket down in the middle of a publish, uploads
that would bypass the repository, and callers without the right."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Archive, api_key, bucket_keys, validate
from dandiapi.api.models import Asset, Version
from dandiapi.api.tests.factories import DraftVersionFactory, UserFactory
from dandiapi.zarr.models import ZarrArchive

from dandi_icechunk.archive.django import services
from dandi_icechunk.archive.django.models import IcechunkDraft
from dandi_icechunk.errors import AccessDeniedError
from dandi_icechunk.objects import repository_objects
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.testing import free_port, make_zarr_v3
from dandi_icechunk.upload.archive import (
    archive_zarr_state,
    begin_archive_upload,
    finalize_archive_upload,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def owner_archive(live_server: Any) -> tuple[Archive, str]:
    """An archive client for the owner of a fresh Dandiset, and that Dandiset's identifier."""
    owner = UserFactory.create()
    draft = DraftVersionFactory.create(dandiset__owners=[owner])
    return Archive(live_server.url, api_key(owner)), draft.dandiset.identifier


def _zarr_asset(archive: Archive, dandiset: str, tmp_path: Path) -> tuple[str, Any]:
    """A Zarr uploaded through the archive and its draft asset, validated."""
    zarr_id = archive.call("POST", "zarr/", json={"name": "a.zarr", "dandiset": dandiset})["zarr_id"]
    _, result = archive.upload(zarr_id, make_zarr_v3(tmp_path / "a.zarr"))
    archive.add_zarr_asset(dandiset, zarr_id, "a.zarr")
    validate()
    return zarr_id, result


def test_finalize_with_nothing_uploaded_leaves_the_zarr_pending_with_the_reason_then_succeeds(
    owner_archive: tuple[Archive, str], tmp_path: Path
) -> None:
    archive, dandiset = owner_archive
    zarr_id = archive.call("POST", "zarr/", json={"name": "a.zarr", "dandiset": dandiset})["zarr_id"]
    begin_archive_upload(archive.api, zarr_id, api_key=archive.api_key)
    finalize_archive_upload(archive.api, zarr_id, api_key=archive.api_key)
    state = archive_zarr_state(archive.api, zarr_id, api_key=archive.api_key)
    assert state["status"] == "Pending"
    assert "no repository" in state["finalize_error"] or "no uploaded snapshot" in state["finalize_error"]
    _, result = archive.upload(zarr_id, make_zarr_v3(tmp_path / "a.zarr"))  # the user carries on
    state = archive_zarr_state(archive.api, zarr_id, api_key=archive.api_key)
    assert (state["status"], state["finalize_error"], state["drafts"][0]["snapshot_id"]) == ("Complete", "", result.snapshot_id)


def test_presigned_uploads_and_deletions_of_an_icechunk_zarr_are_refused(
    owner_archive: tuple[Archive, str], tmp_path: Path
) -> None:
    archive, dandiset = owner_archive
    zarr_id, _ = _zarr_asset(archive, dandiset, tmp_path)
    for method in ("POST", "DELETE"):
        body = [{"path": "zarr.json", "base64md5": "AAAAAAAAAAAAAAAAAAAAAA=="}] if method == "POST" else [{"path": "zarr.json"}]
        refused = archive.call(method, f"zarr/{zarr_id}/files/", expect=400, json=body)
        assert "is an Icechunk repository" in str(refused)


def test_a_plain_zarr_with_files_stays_plain_and_keeps_its_presigned_uploads(
    owner_archive: tuple[Archive, str]
) -> None:
    archive, dandiset = owner_archive
    zarr_id = archive.call("POST", "zarr/", json={"name": "plain.zarr", "dandiset": dandiset})["zarr_id"]
    archive.presigned_upload(zarr_id, {"zarr.json": b"{}"}, finalize=False)
    refused = archive.call("POST", f"zarr/{zarr_id}/icechunk/upload/", expect=409)
    assert "stays a plain Zarr" in str(refused)
    archive.call("POST", f"zarr/{zarr_id}/finalize/", expect=204)  # as today
    assert ZarrArchive.objects.get(zarr_id=zarr_id).status == "Complete"
    assert archive_zarr_state(archive.api, zarr_id, api_key=archive.api_key)["icechunk"] is False


def test_only_the_owner_may_begin_an_upload_or_renew_its_credentials(
    owner_archive: tuple[Archive, str], live_server: Any
) -> None:
    archive, dandiset = owner_archive
    zarr_id = archive.call("POST", "zarr/", json={"name": "a.zarr", "dandiset": dandiset})["zarr_id"]
    stranger = Archive(live_server.url, api_key(UserFactory.create()))
    for path in ("upload/", "credentials/"):
        stranger.call("POST", f"zarr/{zarr_id}/icechunk/{path}", expect=403)
        response = requests.post(f"{archive.api}/zarr/{zarr_id}/icechunk/{path}", timeout=30)
        assert response.status_code in (401, 403)
    assert ZarrArchive.objects.get(zarr_id=zarr_id).status == "Pending"
    assert not IcechunkDraft.objects.exists()


def test_a_draft_that_no_longer_matches_the_bucket_is_a_validation_error_and_publish_is_refused_before_the_lock(
    owner_archive: tuple[Archive, str], tmp_path: Path
) -> None:
    archive, dandiset = owner_archive
    zarr_id, result = _zarr_asset(archive, dandiset, tmp_path)
    # the archive's record drifts from the bucket (a restore of an old database, a bad migration)
    drifted = "f" * 32 + result.zarr_checksum[32:]  # same file count and size, other content
    IcechunkDraft.objects.filter(zarr__zarr_archive__zarr_id=zarr_id).update(checksum=drifted)
    refused = archive.call("POST", f"dandisets/{dandiset}/versions/draft/publish/", expect=400)
    assert "the draft says checksum" in str(refused)
    assert archive.versions(dandiset)["draft"]["status"] != "Publishing"
    Asset.objects.filter(zarr__zarr_id=zarr_id).update(status=Asset.Status.PENDING)
    validate()
    asset = Asset.objects.get(zarr__zarr_id=zarr_id)
    assert asset.status == Asset.Status.INVALID
    assert "the draft says checksum" in asset.validation_errors[0]["message"]
    assert ZarrRepository.open(services.AdapterSettings.load().location, zarr_id).icechunk.list_tags() == set()


def test_bucket_down_mid_publish_reopens_the_draft_tags_nothing_and_a_retry_publishes(
    owner_archive: tuple[Archive, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, dandiset = owner_archive
    zarr_id, result = _zarr_asset(archive, dandiset, tmp_path)
    location = services.AdapterSettings.load().location
    real_prepare = services._prepare_assets

    def bucket_down(*args: Any, **kwargs: Any) -> Any:  # after the check, before the tags
        down = dataclasses.replace(location, endpoint_url=f"http://127.0.0.1:{free_port()}")
        return real_prepare(*args, **{**kwargs, "location": down})

    monkeypatch.setattr(services, "_prepare_assets", bucket_down)
    archive.call("POST", f"dandisets/{dandiset}/versions/draft/publish/", expect=202)
    assert set(archive.versions(dandiset)) == {"draft"}
    assert Version.objects.get(dandiset__id=int(dandiset), version="draft").status == Version.Status.PENDING
    assert ZarrRepository.open(location, zarr_id).icechunk.list_tags() == set()

    monkeypatch.setattr(services, "_prepare_assets", real_prepare)
    validate()
    version = archive.publish(dandiset)
    assert ZarrRepository.open(location, zarr_id).icechunk.list_tags() == {f"dandiset/{dandiset}/{version}"}
    assert archive.published_asset(dandiset, version)["digest"]["dandi:dandi-zarr-checksum"] == result.zarr_checksum


def test_credentials_vended_for_one_zarr_cannot_touch_another(
    owner_archive: tuple[Archive, str], tmp_path: Path
) -> None:
    archive, dandiset = owner_archive
    victim, result = _zarr_asset(archive, dandiset, tmp_path)
    other = archive.call("POST", "zarr/", json={"name": "b.zarr", "dandiset": dandiset})["zarr_id"]
    upload = begin_archive_upload(archive.api, other, api_key=archive.api_key)
    prefix = upload.location.repository_prefix(victim)
    before = bucket_keys(prefix)
    victim_objects = repository_objects(upload.location, victim)
    with pytest.raises(AccessDeniedError):
        victim_objects.put("repo", b"overwritten")
    with pytest.raises(AccessDeniedError):
        victim_objects.delete(before[0].removeprefix(prefix + "/"))
    assert bucket_keys(prefix) == before
    admin = services.AdapterSettings.load().location
    assert ZarrRepository.open(admin, victim).resolve() == result.snapshot_id

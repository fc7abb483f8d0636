"""The adapter's scheduled work inside the archive: the audit finishes a publish whose tagging
the bucket interrupted and finds tampering; Zarr GC never takes what a published version reads;
the archive's Celery beat runs each task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import icechunk
import pytest
import zarr
from conftest import Archive, api_key, local_tree, validate
from dandiapi.api.tests.factories import DraftVersionFactory, UserFactory
from dandiapi.celery import app
from django.core.files.storage import default_storage

from dandi_icechunk.archive.django import services, tasks
from dandi_icechunk.archive.publish import PreparedPublish
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.reference import SnapshotReference
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.testing import make_zarr_v3

pytestmark = pytest.mark.django_db(transaction=True)


def _published(live_server: Any, tmp_path: Path) -> tuple[Archive, str, str, dict[str, Any], Path]:
    owner = UserFactory.create()
    dandiset = DraftVersionFactory.create(dandiset__owners=[owner]).dandiset.identifier
    archive = Archive(live_server.url, api_key(owner))
    zarr_id = archive.call("POST", "zarr/", json={"name": "a.zarr", "dandiset": dandiset})["zarr_id"]
    source = make_zarr_v3(tmp_path / "a.zarr")
    archive.upload(zarr_id, source)
    archive.add_zarr_asset(dandiset, zarr_id, "a.zarr")
    validate()
    version = archive.publish(dandiset)
    return archive, dandiset, zarr_id, archive.published_asset(dandiset, version), source


def test_the_audit_makes_the_tag_a_publish_could_not_and_then_finds_nothing_wrong(
    live_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bucket_down(*args: Any, **kwargs: Any) -> None:
        raise icechunk.IcechunkError("connection refused")

    monkeypatch.setattr(PreparedPublish, "commit", bucket_down)
    _, _, zarr_id, metadata, _ = _published(live_server, tmp_path)
    ref = SnapshotReference.from_asset(metadata)
    location = services.AdapterSettings.load().location
    assert ref.tag not in ZarrRepository.open(location, zarr_id).icechunk.list_tags()
    monkeypatch.undo()
    report = tasks.audit_published_zarrs()
    assert (report["checked"], report["problems"]) == (1, [])
    assert ZarrRepository.open(location, zarr_id).resolve(tag=ref.tag) == ref.snapshot_id


def test_the_audit_reports_an_overwritten_object_of_a_published_zarr(live_server: Any, tmp_path: Path) -> None:
    _, _, zarr_id, _, _ = _published(live_server, tmp_path)
    prefix = services.AdapterSettings.load().location.repository_prefix(zarr_id)
    listing = default_storage.s3_client.list_objects_v2(Bucket=default_storage.bucket_name, Prefix=f"{prefix}/chunks/")
    key = listing["Contents"][0]["Key"]
    default_storage.s3_client.put_object(Bucket=default_storage.bucket_name, Key=key, Body=b"tampered")
    report = tasks.audit_published_zarrs()
    assert report["problems"] and zarr_id in report["problems"][0]


def test_zarr_gc_with_no_restore_window_keeps_every_published_snapshot(
    live_server: Any, tmp_path: Path, settings: Any
) -> None:
    archive, _, zarr_id, metadata, source = _published(live_server, tmp_path)
    v1_files = local_tree(source)
    for value in (3, 4):  # two later drafts, never published: the first is garbage
        zarr.open_array(str(source / "data"), mode="r+")[0:4, 0:4, 0:4] = value
        archive.upload(zarr_id, source)
    settings.DANDI_ICECHUNK_GC_RESTORE_WINDOW = 0
    [result] = tasks.collect_zarr_garbage()
    assert result["zarr_id"] == zarr_id and result["snapshots_expired"] >= 1 and result["objects_deleted"] >= 1
    location = services.AdapterSettings.load().location
    ref = SnapshotReference.from_asset(metadata)
    out = export_snapshot(ZarrRepository.open(location, zarr_id), tmp_path / "v1", snapshot_id=ref.snapshot_id)
    assert local_tree(Path(out.destination)) == v1_files
    assert tasks.audit_published_zarrs()["problems"] == []


def test_the_archive_beat_schedule_runs_each_adapter_task() -> None:
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert {f"{tasks.__name__}.{name}" for name in
            ("audit_published_zarrs", "audit_embargoed_zarrs", "revoke_expired_credentials")} <= scheduled
    assert scheduled <= set(app.tasks)

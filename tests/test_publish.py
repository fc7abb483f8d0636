"""The archive publish hook: tags, published metadata, refusals, idempotence under crashes."""

from __future__ import annotations

import itertools
import json
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
import zarr
from click.testing import CliRunner
from dandischema.consts import DANDI_SCHEMA_VERSION
from dandischema.metadata import validate
from dandischema.models import PublishedAsset

from dandi_icechunk.archive import publish as publish_module
from dandi_icechunk.archive.publish import complete_publication
from dandi_icechunk.archive_hooks import (
    PublishError,
    check_publishable,
    prepare_publish,
    publish_dandiset,
    publish_tag,
)
from dandi_icechunk.cli import main
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.reference import SnapshotReference
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.testing import draft_zarr_asset, make_ome_zarr_v2, make_zarr_v3
from dandi_icechunk.upload import upload_zarr

from .conftest import tree_bytes

NWB_ASSET = {
    "schemaKey": "Asset", "id": "dandiasset:8d1c3b2e-5a6f-4e7d-9c0b-1a2b3c4d5e6f",
    "path": "sub-1/sub-1.nwb", "encodingFormat": "application/x-nwb", "contentSize": 10,
}


def _draft(location: StorageLocation, zarr_id: str, path: str) -> dict[str, Any]:
    """The draft asset metadata the archive would hold after the Zarr's last upload."""
    repo = ZarrRepository.open(location, zarr_id)
    info = repo.commit_info(repo.resolve())
    assert info is not None
    return draft_zarr_asset(zarr_id, path, info.zarr_checksum, info.size)


@pytest.fixture
def two_zarrs(location: StorageLocation, tmp_path: Path) -> dict[str, Path]:
    """Two uploaded Zarrs (v2 OME-NGFF and v3), by zarr_id."""
    zarrs = {
        str(uuid.uuid4()): make_ome_zarr_v2(tmp_path / "a.ome.zarr"),
        str(uuid.uuid4()): make_zarr_v3(tmp_path / "b.zarr"),
    }
    for zid, path in zarrs.items():
        upload_zarr(path, location, zid)
    return zarrs


def _assets(location: StorageLocation, zarrs: dict[str, Path]) -> list[dict[str, Any]]:
    return [NWB_ASSET] + [_draft(location, zid, f"sub-1/{p.name}") for zid, p in zarrs.items()]


def test_publish_edit_publish_keeps_every_version_reading_what_it_had(
    location: StorageLocation, two_zarrs: dict[str, Path], tmp_path: Path
) -> None:
    v1 = publish_dandiset("000123", "0.260101.1200", _assets(location, two_zarrs), location=location)
    assert v1[0] == NWB_ASSET
    v1_files = {zid: tree_bytes(p) for zid, p in two_zarrs.items()}

    edited_id, edited = next(iter(two_zarrs.items()))
    zarr.open_array(str(edited / "0"), mode="r+")[0:8, 0:32, 0:32] = 1
    upload_zarr(edited, location, edited_id)
    v2 = publish_dandiset("000123", "0.260201.1200", _assets(location, two_zarrs), location=location)

    refs1 = [SnapshotReference.from_asset(a) for a in v1[1:]]
    refs2 = [SnapshotReference.from_asset(a) for a in v2[1:]]
    assert [r.tag for r in refs1] == [publish_tag("000123", "0.260101.1200")] * 2
    assert refs1[0].snapshot_id != refs2[0].snapshot_id  # edited Zarr: new snapshot
    assert refs1[1].snapshot_id == refs2[1].snapshot_id  # untouched Zarr: same snapshot, new tag
    for ref in refs1:
        repo = ZarrRepository.open(location, ref.zarr_id)
        assert repo.resolve(tag=ref.tag) == ref.snapshot_id
        out = export_snapshot(repo, tmp_path / f"v1-{ref.zarr_id}", snapshot_id=ref.snapshot_id)
        assert tree_bytes(Path(out.destination)) == v1_files[ref.zarr_id]
        assert ref.repository == repo.url

    for asset in v1[1:] + v2[1:]:
        validate(asset, schema_key="PublishedAsset", json_validation=True)
        round_trip = PublishedAsset(**asset).model_dump(mode="json", exclude_none=True)
        assert SnapshotReference.from_asset(round_trip) == SnapshotReference.from_asset(asset)
        assert round_trip["digest"] == asset["digest"]
        assert round_trip["contentSize"] == asset["contentSize"]

    history = ZarrRepository.open(location, edited_id).history()
    assert history[0].tags == (publish_tag("000123", "0.260201.1200"),)
    assert history[1].tags == (publish_tag("000123", "0.260101.1200"),)


def _tags(location: StorageLocation, zarrs: dict[str, Path]) -> dict[str, set[str]]:
    return {zid: ZarrRepository.open(location, zid).icechunk.list_tags() for zid in zarrs}


@pytest.mark.parametrize(
    "breaker, message",
    [
        (lambda a: a.update(digest={"dandi:dandi-zarr-checksum": "0" * 32 + "-1--1"}), "the draft says checksum"),
        (lambda a: a.update(contentSize=a["contentSize"] + 1), "the draft says checksum"),
        (lambda a: a.update(contentUrl=[f"https://dandiarchive.s3.amazonaws.com/zarr/{uuid.uuid4()}/"]), "no repository for zarr_id"),
        (lambda a: a.update(contentUrl=["https://api.dandiarchive.org/api/assets/x/download/"]), "zarr_id is unknown"),
    ],
    ids=["wrong checksum", "wrong size", "repository missing", "no S3 contentUrl"],
)
def test_refused_publish_names_the_problem_and_tags_nothing(
    location: StorageLocation, two_zarrs: dict[str, Path], breaker: Any, message: str
) -> None:
    assets = _assets(location, two_zarrs)
    breaker(assets[2])
    with pytest.raises(PublishError, match=message):
        publish_dandiset("000123", "0.260101.1200", assets, location=location)
    assert _tags(location, two_zarrs) == {zid: set() for zid in two_zarrs}


def test_zarr_with_no_uploaded_snapshot_is_refused(location: StorageLocation, zarr_id: str) -> None:
    ZarrRepository.open(location, zarr_id, create=True)
    asset = draft_zarr_asset(zarr_id, "x.zarr", "481a2f77ab786a0f45aafd5db0971caa-0--0", 0)
    with pytest.raises(PublishError, match="has no uploaded snapshot"):
        publish_dandiset("000123", "0.260101.1200", [asset], location=location)


@pytest.mark.parametrize("dandiset, version", [("123", "0.260101.1200"), ("000123", "draft")])
def test_bad_dandiset_or_version_is_refused(location: StorageLocation, dandiset: str, version: str) -> None:
    with pytest.raises(PublishError, match="is not a"):
        publish_dandiset(dandiset, version, [], location=location)


@pytest.mark.parametrize("crash_after_tags", [0, 1])
def test_crash_between_steps_then_retry_gives_the_same_result_and_no_second_tag(
    location: StorageLocation, two_zarrs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    crash_after_tags: int,
) -> None:
    assets = _assets(location, two_zarrs)
    real_create_tag = publish_module._create_tag
    calls = itertools.count()  # the Zarrs are tagged in parallel: count calls atomically

    def crashing(repository: Any, snapshot_id: str, tag: str) -> None:
        if next(calls) == crash_after_tags:
            raise RuntimeError("worker died")
        real_create_tag(repository, snapshot_id, tag)

    monkeypatch.setattr(publish_module, "_create_tag", crashing)
    with pytest.raises(RuntimeError):
        publish_dandiset("000123", "0.260101.1200", assets, location=location)
    monkeypatch.setattr(publish_module, "_create_tag", real_create_tag)

    retried = publish_dandiset("000123", "0.260101.1200", assets, location=location)
    again = publish_dandiset("000123", "0.260101.1200", assets, location=location)
    assert retried == again
    tag = publish_tag("000123", "0.260101.1200")
    assert _tags(location, two_zarrs) == {zid: {tag} for zid in two_zarrs}


def test_crash_after_all_tags_before_metadata_is_stored_then_retry(
    location: StorageLocation, two_zarrs: dict[str, Path]
) -> None:
    """The archive's transaction rolls back after the hook returned: a retry, with the draft
    moved on by a new upload meanwhile, still publishes the tagged snapshots."""
    assets = _assets(location, two_zarrs)
    first = publish_dandiset("000123", "0.260101.1200", assets, location=location)
    zid, path = next(iter(two_zarrs.items()))
    zarr.open_array(str(path / "0"), mode="r+")[0:8, 0:32, 0:32] = 1
    upload_zarr(path, location, zid)
    assert publish_dandiset("000123", "0.260101.1200", assets, location=location) == first


def test_cli_publish_prints_published_metadata(location: StorageLocation, two_zarrs: dict[str, Path], tmp_path: Path) -> None:
    assets_file = tmp_path / "assets.json"
    assets_file.write_text(json.dumps(_assets(location, two_zarrs)))
    env = {"DANDI_ICECHUNK_STORAGE": location.url}
    if location.credentials:
        env |= {"AWS_ACCESS_KEY_ID": location.credentials.access_key_id,
                "AWS_SECRET_ACCESS_KEY": location.credentials.secret_access_key}
    result = CliRunner().invoke(main, ["publish", "--dandiset", "000123", "--version", "0.260101.1200",
                                       str(assets_file), "--json"], env=env)
    assert result.exit_code == 0, result.output
    published = json.loads(result.output)
    assert len(published) == 3
    assert SnapshotReference.from_asset(published[1]).tag == "dandiset/000123/0.260101.1200"
    published_file = tmp_path / "published.json"
    published_file.write_text(result.output)
    audit = CliRunner().invoke(main, ["audit", str(published_file), "--json"], env=env)
    assert audit.exit_code == 0 and json.loads(audit.output)["checked"] == 2
    gc = CliRunner().invoke(main, ["gc", SnapshotReference.from_asset(published[1]).zarr_id,
                                   "--published", str(published_file), "--dry-run", "--json"], env=env)
    assert gc.exit_code == 0, gc.output
    assert json.loads(gc.output)["kept_published"] == [SnapshotReference.from_asset(published[1]).snapshot_id]

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(main, ["publish", "--dandiset", "000123", "--version", "0.260101.1200", str(bad)], env=env)
    assert result.exit_code == 1 and "is not valid JSON" in result.output


def test_publish_takes_the_zarr_id_the_archive_has_in_hand_whatever_the_contenturl(
    location: StorageLocation, tmp_path: Path
) -> None:
    zarr_id = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr")
    result = upload_zarr(src, location, zarr_id, dedup=False)
    asset = draft_zarr_asset(zarr_id, "a.zarr", result.zarr_checksum, result.size)
    # the archive's Zarr prefix is a setting (its tests use test-zarr/): nothing to parse there
    asset["contentUrl"] = [u.replace("/zarr/", "/test-zarr/") for u in asset["contentUrl"]]
    with pytest.raises(PublishError, match="zarr_id"):
        publish_dandiset("000123", "0.260101.1200", [asset], location=location)
    with pytest.raises(PublishError, match="gave no zarr_id"):
        publish_dandiset("000123", "0.260101.1200", [asset], location=location, zarr_ids={})
    [record] = publish_dandiset("000123", "0.260101.1200", [asset], location=location, zarr_ids={"a.zarr": zarr_id})
    assert SnapshotReference.from_asset(record).zarr_id == zarr_id


def _bucket_listing(location: StorageLocation, s3_server: Any) -> list[tuple[str, str]]:
    """Every object (key, ETag or mtime) under the location: what a side effect would change."""
    if location.kind == "file":
        root = Path(location.bucket)
        return sorted((str(p.relative_to(root)), str(p.stat().st_mtime_ns)) for p in root.rglob("*") if p.is_file())
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=location.prefix)
    return sorted((o["Key"], o["ETag"]) for page in pages for o in page.get("Contents", []))


def test_check_publishable_reports_each_problem_and_writes_nothing(
    location: StorageLocation, two_zarrs: dict[str, Path], request: pytest.FixtureRequest
) -> None:
    s3 = request.getfixturevalue("s3_server") if location.kind == "s3" else None
    assets = _assets(location, two_zarrs)
    before = _bucket_listing(location, s3)
    assert check_publishable("000123", assets, location=location) == []
    assets[2]["contentSize"] += 1
    [problem] = check_publishable("000123", assets, location=location)
    assert problem.startswith(f"{assets[2]['path']}: the draft says checksum")
    assert _bucket_listing(location, s3) == before


def test_prepared_publish_tags_nothing_until_commit(location: StorageLocation, two_zarrs: dict[str, Path]) -> None:
    prepared = prepare_publish("000123", "0.260101.1200", _assets(location, two_zarrs), location=location)
    assert [SnapshotReference.from_asset(a).tag for a in prepared.published[1:]] == [prepared.tag] * 2
    assert _tags(location, two_zarrs) == {zid: set() for zid in two_zarrs}  # a rolled-back version: no tag
    prepared.commit()
    prepared.commit()  # the archive's on_commit may run twice after a retry: no error, no second tag
    assert _tags(location, two_zarrs) == {zid: {prepared.tag} for zid in two_zarrs}


@pytest.fixture
def no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Name resolution of anything but loopback fails, as on an archive worker without egress."""
    real = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", "::1", None):
            raise OSError(f"test without internet: {host} not reachable")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


@pytest.mark.parametrize("schema_version", [DANDI_SCHEMA_VERSION, "0.7.0", "0.6.10", "0.6.4"])
def test_publish_validates_every_schema_version_the_archive_accepts_offline(
    location: StorageLocation, tmp_path: Path, schema_version: str, no_internet: None
) -> None:
    zarr_id = str(uuid.uuid4())
    result = upload_zarr(make_zarr_v3(tmp_path / "a.zarr"), location, zarr_id, dedup=False)
    asset = draft_zarr_asset(zarr_id, "a.zarr", result.zarr_checksum, result.size)
    asset["schemaVersion"] = schema_version
    assert check_publishable("000123", [asset], location=location) == []
    [record] = publish_dandiset("000123", "0.260101.1200", [asset], location=location, zarr_ids={"a.zarr": zarr_id})
    assert SnapshotReference.from_asset(record).snapshot_id == result.snapshot_id


def test_complete_publication_makes_a_missing_tag_once_and_refuses_a_tag_naming_another_snapshot(
    location: StorageLocation, two_zarrs: dict[str, Path]
) -> None:
    prepared = prepare_publish("000123", "0.260101.1200", _assets(location, two_zarrs), location=location)
    ref = SnapshotReference.from_asset(prepared.published[1])  # committed by the archive, never tagged
    assert complete_publication(location, ref.zarr_id, prepared.tag, ref.snapshot_id) is True
    assert complete_publication(location, ref.zarr_id, prepared.tag, ref.snapshot_id) is False
    assert ZarrRepository.open(location, ref.zarr_id).resolve(tag=prepared.tag) == ref.snapshot_id
    with pytest.raises(PublishError, match="names another snapshot"):
        complete_publication(location, ref.zarr_id, prepared.tag, "0" * 20)

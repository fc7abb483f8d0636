"""The whole life of a Zarr asset through the real archive's HTTP API (served on 127.0.0.1 by
pytest-django's live server, its PostgreSQL, SeaweedFS): create, begin upload, upload with the
vended credentials, finalize, the archive's own validation, publish, change, publish again, read
both versions by the snapshot IDs the archive serves; then an embargoed Dandiset and its unembargo."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Any

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import Archive, api_key, local_tree, validate
from dandiapi.api.models import Dandiset
from dandiapi.api.tests.factories import DraftVersionFactory, UserFactory
from dandi_icechunk.archive.django.tasks import audit_embargoed_zarrs
from dandi_icechunk.errors import AccessDeniedError, DandiIcechunkError
from dandi_icechunk.location import S3Credentials, StorageLocation
from dandi_icechunk.objects import repository_objects
from dandi_icechunk.read import open_dataset
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.reference import SnapshotReference
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.testing import make_ome_zarr_v2
from dandi_icechunk.upload.archive import archive_zarr_state, begin_archive_upload

pytestmark = pytest.mark.django_db(transaction=True)
ZARR_PATH = "sub-1/sub-1_sample.ome.zarr"


def _plain_icechunk_read(metadata: dict[str, Any], creds: S3Credentials, endpoint: str) -> np.ndarray:
    """Level 0 read with icechunk + xarray only, from what the served metadata says."""
    ref = SnapshotReference.from_asset(metadata)
    location, zarr_id, embargoed = StorageLocation.from_repository_url(ref.repository)
    storage = icechunk.s3_storage(
        bucket=location.bucket, prefix=location.repository_prefix(zarr_id, embargoed=embargoed),
        endpoint_url=endpoint, allow_http=True, force_path_style=True, region="us-east-1",
        access_key_id=creds.access_key_id, secret_access_key=creds.secret_access_key,
    )
    session = icechunk.Repository.open(storage).readonly_session(snapshot_id=ref.snapshot_id)
    group = zarr.open_group(session.store, mode="r")
    return np.asarray(group["0"][:])


def test_zarr_asset_upload_publish_change_publish_reads_each_version_over_http(
    live_server: Any, tmp_path: Path, reader_env: S3Credentials, adapter_location: StorageLocation
) -> None:
    owner = UserFactory.create()
    draft = DraftVersionFactory.create(dandiset__owners=[owner])
    dandiset = draft.dandiset.identifier
    key = api_key(owner)
    archive = Archive(live_server.url, key)

    zarr_id = archive.call("POST", "zarr/", json={"name": ZARR_PATH, "dandiset": dandiset})["zarr_id"]
    source = make_ome_zarr_v2(tmp_path / "sample.ome.zarr", levels=2)
    upload, first = archive.upload(zarr_id, source)
    assert (upload.branch, upload.embargoed, upload.dandiset) == ("main", False, dandiset)
    state = archive_zarr_state(archive.api, zarr_id, api_key=key)
    assert state["status"] == "Complete" and state["finalize_error"] == ""
    assert state["drafts"] == [{"dandiset": dandiset, "branch": "main", "snapshot_id": first.snapshot_id,
                                "checksum": first.zarr_checksum, "size": first.size}]
    served = archive.call("GET", f"zarr/{zarr_id}/")
    assert (served["checksum"], served["size"], served["file_count"]) == (first.zarr_checksum, first.size, first.file_count)

    archive.add_zarr_asset(dandiset, zarr_id, ZARR_PATH)
    validate()
    v1 = archive.publish(dandiset)
    v1_files = local_tree(source)

    # change one region and publish again: the published v1 asset is not touched
    zarr.open_array(str(source / "0"), mode="r+")[0, 0:8, 0:16] = 7
    _, second = archive.upload(zarr_id, source)
    assert second.snapshot_id != first.snapshot_id
    validate()
    v2 = archive.publish(dandiset)

    published = {v: archive.published_asset(dandiset, v) for v in (v1, v2)}
    for version, result in ((v1, first), (v2, second)):
        metadata = published[version]
        ref = SnapshotReference.from_asset(metadata)
        assert (ref.zarr_id, ref.snapshot_id, ref.tag) == (zarr_id, result.snapshot_id, f"dandiset/{dandiset}/{version}")
        assert metadata["digest"]["dandi:dandi-zarr-checksum"] == result.zarr_checksum
        assert metadata["contentSize"] == result.size
        assert ZarrRepository.open(adapter_location, zarr_id).resolve(tag=ref.tag) == result.snapshot_id
    assert published[v1]["identifier"] != published[v2]["identifier"]  # a new asset for the change

    # both versions read what they had: the project's reader, plain icechunk + xarray, export
    expected = {v1: np.asarray(zarr.open_array(str(tmp_path / "sample.ome.zarr" / "0"))[:]), v2: None}
    level0_v2 = np.asarray(zarr.open_array(str(source / "0"), mode="r")[:])
    for version in (v1, v2):
        via_reader = open_dataset(published[version], group="0")["image"].values
        via_icechunk = _plain_icechunk_read(published[version], reader_env, adapter_location.endpoint_url or "")
        np.testing.assert_array_equal(via_reader, via_icechunk)
        expected[version] = via_reader
    np.testing.assert_array_equal(expected[v2], level0_v2)
    assert not np.array_equal(expected[v1], expected[v2])
    out = export_snapshot(ZarrRepository.open(adapter_location, zarr_id), tmp_path / "v1",
                          snapshot_id=SnapshotReference.from_asset(published[v1]).snapshot_id)
    assert local_tree(Path(out.destination)) == v1_files
    assert isinstance(xr.open_dataset(published[v2], engine="dandi-icechunk", group="0"), xr.Dataset)


def test_embargoed_zarr_is_private_under_the_archive_policy_until_unembargo_then_publishes(
    live_server: Any, tmp_path: Path, adapter_location: StorageLocation,
    deny_embargoed_reads: Callable[[], None],
) -> None:
    owner = UserFactory.create()
    draft = DraftVersionFactory.create(dandiset__owners=[owner], dandiset__embargo_status=Dandiset.EmbargoStatus.EMBARGOED)
    dandiset = draft.dandiset.identifier
    key = api_key(owner)
    archive = Archive(live_server.url, key)
    zarr_id = archive.call("POST", "zarr/", json={"name": ZARR_PATH, "dandiset": dandiset})["zarr_id"]
    source = make_ome_zarr_v2(tmp_path / "e.ome.zarr")
    upload, result = archive.upload(zarr_id, source)
    assert upload.embargoed
    anonymous = StorageLocation(kind="s3", bucket=adapter_location.bucket, endpoint_url=adapter_location.endpoint_url,
                                anonymous=True)

    # the archive's bucket is public: without the embargo statements anyone reads the Zarr,
    # and the audit says so
    assert ZarrRepository.open(anonymous, zarr_id).resolve() == result.snapshot_id
    [problem] = audit_embargoed_zarrs()
    assert zarr_id in problem and "add the embargo statements" in problem
    deny_embargoed_reads()
    with pytest.raises(DandiIcechunkError):
        ZarrRepository.open(anonymous, zarr_id).resolve()
    assert audit_embargoed_zarrs() == []
    # another lab's upload credentials (for a Zarr of its own) do not reach it either
    other_lab = UserFactory.create()
    other = Archive(live_server.url, api_key(other_lab))
    theirs = DraftVersionFactory.create(dandiset__owners=[other_lab]).dandiset.identifier
    own_zarr = other.call("POST", "zarr/", json={"name": "o.zarr", "dandiset": theirs})["zarr_id"]
    with pytest.raises(AccessDeniedError):
        repository_objects(begin_archive_upload(other.api, own_zarr, api_key=other.api_key).location,
                           zarr_id, embargoed=True).get("repo")
    # and the owner goes on uploading under that policy: the Zarr's own upload user reads its repository
    zarr.open_array(str(source / "0"), mode="r+")[0, 0:2, 0:2] = 3
    _, result = archive.upload(zarr_id, source)
    with pytest.raises(DandiIcechunkError):
        ZarrRepository.open(anonymous, zarr_id).resolve()

    archive.add_zarr_asset(dandiset, zarr_id, ZARR_PATH)
    archive.call("POST", f"dandisets/{dandiset}/unembargo/")
    assert Dandiset.objects.get(pk=draft.dandiset.pk).embargo_status == Dandiset.EmbargoStatus.OPEN
    assert ZarrRepository.open(anonymous, zarr_id).resolve() == result.snapshot_id  # public now
    validate()
    version = archive.publish(dandiset)
    assert SnapshotReference.from_asset(archive.published_asset(dandiset, version)).snapshot_id == result.snapshot_id

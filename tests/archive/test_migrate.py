"""A Zarr uploaded the old way through the real archive (presigned PUTs with Content-MD5, as
dandi-cli does), finalized by the archive, then migrated in place by the adapter's task: it is an
Icechunk Zarr from then on, read, published and refusing presigned uploads, its objects untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import Archive, api_key, bucket_keys, local_tree, validate
from dandiapi.api.tests.factories import DraftVersionFactory, UserFactory
from dandiapi.zarr.models import ZarrArchive

from dandi_icechunk.archive.django.tasks import migrate_zarr_archive
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.read import open_dataset
from dandi_icechunk.reference import SnapshotReference
from dandi_icechunk.testing import make_ome_zarr_v2
from dandi_icechunk.upload.archive import archive_zarr_state

pytestmark = pytest.mark.django_db(transaction=True)
ZARR_PATH = "sub-1/sub-1_legacy.ome.zarr"


def test_a_zarr_uploaded_the_old_way_migrates_in_place_and_then_publishes(
    live_server: Any, tmp_path: Path, adapter_location: StorageLocation
) -> None:
    owner = UserFactory.create()
    dandiset = DraftVersionFactory.create(dandiset__owners=[owner]).dandiset.identifier
    archive = Archive(live_server.url, api_key(owner))
    zarr_id = archive.call("POST", "zarr/", json={"name": ZARR_PATH, "dandiset": dandiset})["zarr_id"]
    source = make_ome_zarr_v2(tmp_path / "legacy.ome.zarr")
    files = local_tree(source)
    archive.presigned_upload(zarr_id, files)
    assert ZarrArchive.objects.get(zarr_id=zarr_id).status == "Complete"
    legacy = sorted(bucket_keys(adapter_location.legacy_prefix(zarr_id) + "/"))
    created = archive.add_zarr_asset(dandiset, zarr_id, ZARR_PATH)

    outcome = migrate_zarr_archive(zarr_id)
    assert outcome["migrated"], outcome
    state = archive_zarr_state(archive.api, zarr_id, api_key=archive.api_key)
    assert state["icechunk"] and state["drafts"][0]["snapshot_id"] == outcome["snapshot_id"]
    assert sorted(bucket_keys(adapter_location.legacy_prefix(zarr_id) + "/")) == legacy  # untouched
    assert not [k for k in bucket_keys(adapter_location.repository_prefix(zarr_id) + "/") if "/chunks/" in k]
    assert migrate_zarr_archive(zarr_id)["migrated"] is False  # once

    asset = archive.draft_asset(dandiset, created["identifier"])
    assert SnapshotReference.from_asset(asset).snapshot_id == outcome["snapshot_id"]
    level0 = np.asarray(zarr.open_array(str(source / "0"), mode="r")[:])
    np.testing.assert_array_equal(open_dataset(asset, group="0")["image"].values, level0)
    # presigned uploads would bypass the repository now
    refused = archive.call("POST", f"zarr/{zarr_id}/files/", expect=400,
                           json=[{"path": "0/.zattrs", "base64md5": "mZFLkyvTelC5g8XnyQrpOw=="}])
    assert "is an Icechunk repository" in str(refused)

    validate()
    version = archive.publish(dandiset)
    published = archive.published_asset(dandiset, version)
    assert SnapshotReference.from_asset(published).snapshot_id == outcome["snapshot_id"]
    assert published["digest"]["dandi:dandi-zarr-checksum"] == outcome["checksum"]
    np.testing.assert_array_equal(open_dataset(published, group="0")["image"].values, level0)


def test_an_embargoed_zarr_migrates_under_the_private_prefix_and_stays_private(
    live_server: Any, tmp_path: Path, adapter_location: StorageLocation, deny_embargoed_reads: Any
) -> None:
    from dandiapi.api.models import Dandiset

    from dandi_icechunk.errors import DandiIcechunkError
    from dandi_icechunk.session import ZarrRepository

    owner = UserFactory.create()
    dandiset = DraftVersionFactory.create(
        dandiset__owners=[owner], dandiset__embargo_status=Dandiset.EmbargoStatus.EMBARGOED).dandiset.identifier
    archive = Archive(live_server.url, api_key(owner))
    zarr_id = archive.call("POST", "zarr/", json={"name": ZARR_PATH, "dandiset": dandiset})["zarr_id"]
    source = make_ome_zarr_v2(tmp_path / "legacy.ome.zarr")
    archive.presigned_upload(zarr_id, local_tree(source))
    created = archive.add_zarr_asset(dandiset, zarr_id, ZARR_PATH)
    deny_embargoed_reads()

    assert migrate_zarr_archive(zarr_id)["migrated"]
    assert ZarrRepository.open(adapter_location, zarr_id).embargoed  # under zarr-icechunk-embargoed/
    anonymous = StorageLocation(kind="s3", bucket=adapter_location.bucket, endpoint_url=adapter_location.endpoint_url,
                                anonymous=True, legacy_root=adapter_location.legacy_root)
    with pytest.raises(DandiIcechunkError):
        ZarrRepository.open(anonymous, zarr_id).resolve()
    asset = archive.draft_asset(dandiset, created["identifier"])
    level0 = np.asarray(zarr.open_array(str(source / "0"), mode="r")[:])
    owned = archive.read(asset)
    np.testing.assert_array_equal(owned["image"].values, level0)

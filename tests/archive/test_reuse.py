"""A Zarr reused in a second Dandiset through the archive: no upload, that Dandiset's own draft
state, each Dandiset publishes its own snapshot; embargoed Zarrs are not reusable by others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import Archive, api_key, validate, zarr_asset_metadata
from dandiapi.api.models import Dandiset
from dandiapi.api.tests.factories import DraftVersionFactory, UserFactory

from dandi_icechunk.read import open_dataset
from dandi_icechunk.reference import SnapshotReference
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.testing import make_ome_zarr_v2
from dandi_icechunk.upload.archive import archive_zarr_state

pytestmark = pytest.mark.django_db(transaction=True)


def _lab(live_server: Any, **dandiset: Any) -> tuple[Archive, str]:
    owner = UserFactory.create()
    draft = DraftVersionFactory.create(dandiset__owners=[owner], **{f"dandiset__{k}": v for k, v in dandiset.items()})
    return Archive(live_server.url, api_key(owner)), draft.dandiset.identifier


def test_a_zarr_reused_in_a_second_dandiset_keeps_its_own_draft_and_publishes_its_own_snapshot(
    live_server: Any, tmp_path: Path, reader_env: Any, adapter_location: Any
) -> None:
    lab_a, dandiset_a = _lab(live_server)
    lab_b, dandiset_b = _lab(live_server)
    zarr_id = lab_a.call("POST", "zarr/", json={"name": "x.ome.zarr", "dandiset": dandiset_a})["zarr_id"]
    source = make_ome_zarr_v2(tmp_path / "x.ome.zarr")
    _, first = lab_a.upload(zarr_id, source)
    lab_a.add_zarr_asset(dandiset_a, zarr_id, "x.ome.zarr")

    # lab B adds the same Zarr: no upload, its own branch and draft
    lab_b.add_zarr_asset(dandiset_b, zarr_id, "derived/x.ome.zarr")
    drafts = {d["dandiset"]: d for d in archive_zarr_state(lab_a.api, zarr_id, api_key=lab_a.api_key)["drafts"]}
    assert drafts[dandiset_b]["snapshot_id"] == first.snapshot_id
    assert drafts[dandiset_b]["branch"] == f"dandiset/{dandiset_b}"

    # lab A changes its Zarr: B's draft stays where it was
    zarr.open_array(str(source / "0"), mode="r+")[0, 0:4, 0:4] = 9
    _, second = lab_a.upload(zarr_id, source)
    drafts = {d["dandiset"]: d for d in archive_zarr_state(lab_a.api, zarr_id, api_key=lab_a.api_key)["drafts"]}
    assert (drafts[dandiset_a]["snapshot_id"], drafts[dandiset_b]["snapshot_id"]) == (second.snapshot_id, first.snapshot_id)

    validate()
    version_a, version_b = lab_a.publish(dandiset_a), lab_b.publish(dandiset_b)
    published_a = lab_a.published_asset(dandiset_a, version_a)
    published_b = lab_b.published_asset(dandiset_b, version_b)
    assert SnapshotReference.from_asset(published_a).snapshot_id == second.snapshot_id
    assert SnapshotReference.from_asset(published_b).snapshot_id == first.snapshot_id
    assert published_b["digest"]["dandi:dandi-zarr-checksum"] == first.zarr_checksum
    assert ZarrRepository.open(adapter_location, zarr_id).icechunk.list_tags() == {
        f"dandiset/{dandiset_a}/{version_a}", f"dandiset/{dandiset_b}/{version_b}"}
    assert not np.array_equal(open_dataset(published_a, group="0")["image"].values,
                              open_dataset(published_b, group="0")["image"].values)


def test_an_embargoed_zarr_cannot_be_reused_by_someone_else(live_server: Any, tmp_path: Path) -> None:
    lab_a, dandiset_a = _lab(live_server, embargo_status=Dandiset.EmbargoStatus.EMBARGOED)
    lab_b, dandiset_b = _lab(live_server, embargo_status=Dandiset.EmbargoStatus.EMBARGOED)
    zarr_id = lab_a.call("POST", "zarr/", json={"name": "x.ome.zarr", "dandiset": dandiset_a})["zarr_id"]
    lab_a.upload(zarr_id, make_ome_zarr_v2(tmp_path / "x.ome.zarr"))
    refused = lab_b.call("POST", f"dandisets/{dandiset_b}/versions/draft/assets/", expect=400,
                         json={"metadata": zarr_asset_metadata("x.ome.zarr"), "zarr_id": zarr_id})
    assert refused == "The zarr archive belongs to a different dandiset"
    drafts = archive_zarr_state(lab_a.api, zarr_id, api_key=lab_a.api_key)["drafts"]
    assert [d["dandiset"] for d in drafts] == [dandiset_a]

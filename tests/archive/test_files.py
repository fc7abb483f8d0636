"""The archive's own files endpoint (``/api/zarr/{zarr_id}/files/``, what ``dandi download`` and
``dandi ls`` call) on an Icechunk Zarr: the files of the draft or of a published snapshot, as
uploaded, paged, downloadable with ranges, and nothing of a snapshot or Zarr the caller may not see."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import zarr
from conftest import Archive, api_key, local_tree, validate
from dandiapi.api.models import Dandiset
from dandiapi.api.tests.factories import DraftVersionFactory, UserFactory

from dandi_icechunk.errors import AccessDeniedError
from dandi_icechunk.reference import SnapshotReference
from dandi_icechunk.testing import make_ome_zarr_v2

pytestmark = pytest.mark.django_db(transaction=True)
ZARR_PATH = "sub-1/sub-1_sample.ome.zarr"


def _listing(archive: Archive, zarr_id: str, **params: Any) -> list[dict[str, Any]]:
    """Every entry, following ``next`` as dandi-cli's paginate does."""
    page = archive.call("GET", f"zarr/{zarr_id}/files/", params=params)
    entries = list(page["results"])
    while page["next"]:
        page = requests.get(page["next"], headers=archive.headers, timeout=60).json()
        entries += page["results"]
    return entries


def _download(archive: Archive, zarr_id: str, key: str, headers: dict[str, str] | None = None, **params: Any) -> requests.Response:
    return requests.get(f"{archive.api}/zarr/{zarr_id}/files/", params={"prefix": key, "download": "true", **params},
                        headers={**archive.headers, **(headers or {})}, timeout=60)


def test_files_endpoint_serves_the_draft_and_each_published_snapshot_as_uploaded(
    live_server: Any, tmp_path: Path
) -> None:
    owner = UserFactory.create()
    dandiset = DraftVersionFactory.create(dandiset__owners=[owner]).dandiset.identifier
    archive = Archive(live_server.url, api_key(owner))
    zarr_id = archive.call("POST", "zarr/", json={"name": ZARR_PATH, "dandiset": dandiset})["zarr_id"]
    assert _listing(archive, zarr_id) == []  # nothing finalized yet
    source = make_ome_zarr_v2(tmp_path / "sample.ome.zarr", levels=2)
    archive.upload(zarr_id, source)
    archive.add_zarr_asset(dandiset, zarr_id, ZARR_PATH)
    validate()
    version = archive.publish(dandiset)
    published_asset = archive.published_asset(dandiset, version)
    published = SnapshotReference.from_asset(published_asset).snapshot_id
    v1 = local_tree(source)
    v1_level0 = np.asarray(zarr.open_array(str(source / "0"), mode="r")[:])
    zarr.open_array(str(source / "0"), mode="r+")[0, 0:8, 0:16] = 7  # the draft moves on
    archive.upload(zarr_id, source)
    draft = local_tree(source)
    assert draft != v1

    for files, params in ((draft, {}), (v1, {"snapshot": published})):
        entries = _listing(archive, zarr_id, limit=3, **params)  # paged three at a time
        assert [e["Key"] for e in entries] == sorted(files)
        assert {e["Key"]: (e["ETag"], e["Size"]) for e in entries} == {
            k: (hashlib.md5(v).hexdigest(), len(v)) for k, v in files.items()}
        for key, data in files.items():
            got = _download(archive, zarr_id, key, **params)
            etag = got.headers["ETag"].removeprefix("W/")  # weak when the archive gzips the response
            assert (got.status_code, got.content, etag) == (200, data, f'"{hashlib.md5(data).hexdigest()}"')
    assert [e["Key"] for e in _listing(archive, zarr_id, prefix="1/")] == sorted(k for k in draft if k.startswith("1/"))
    # the archive's URL of the published asset is a reference too; read through the archive
    asset_url = f"{archive.api}/dandisets/{dandiset}/versions/{version}/assets/{published_asset['identifier']}/"
    via_archive = archive.read(asset_url)
    np.testing.assert_array_equal(via_archive["image"].values, v1_level0)

    chunk = sorted(k for k in draft if k.startswith("0/0"))[0]
    resumed = _download(archive, zarr_id, chunk, headers={"Range": "bytes=5-"})
    assert (resumed.status_code, resumed.content) == (206, draft[chunk][5:])
    head = requests.head(f"{archive.api}/zarr/{zarr_id}/files/", params={"prefix": chunk}, headers=archive.headers, timeout=60)
    assert (head.status_code, head.headers["Content-Length"]) == (200, str(len(draft[chunk])))
    assert _download(archive, zarr_id, "0/nothing").status_code == 404
    # a snapshot that is neither a draft nor published (here: a made-up ID) is not served
    refused = archive.call("GET", f"zarr/{zarr_id}/files/", expect=404, params={"snapshot": "0" * 20})
    assert "not a draft or published snapshot" in refused["detail"]


def test_an_embargoed_zarrs_files_reach_its_owner_by_api_key_and_nobody_else(live_server: Any, tmp_path: Path) -> None:
    owner = UserFactory.create()
    dandiset = DraftVersionFactory.create(
        dandiset__owners=[owner], dandiset__embargo_status=Dandiset.EmbargoStatus.EMBARGOED).dandiset.identifier
    archive = Archive(live_server.url, api_key(owner))
    zarr_id = archive.call("POST", "zarr/", json={"name": ZARR_PATH, "dandiset": dandiset})["zarr_id"]
    source = make_ome_zarr_v2(tmp_path / "e.ome.zarr")
    _, result = archive.upload(zarr_id, source)
    files = local_tree(source)
    assert {e["Key"] for e in _listing(archive, zarr_id)} == set(files)
    key = sorted(files)[-1]
    assert _download(archive, zarr_id, key).content == files[key]

    # the owner reads it with xarray and a DANDI API key, through the archive
    asset = archive.add_zarr_asset(dandiset, zarr_id, ZARR_PATH)
    level0 = np.asarray(zarr.open_array(str(source / "0"), mode="r")[:])
    read = archive.read(asset)
    np.testing.assert_array_equal(read["image"].values, level0)

    stranger = Archive(live_server.url, api_key(UserFactory.create()))
    anonymous = Archive(live_server.url, "")
    anonymous.headers = {}
    for outsider in (stranger, anonymous):
        outsider.call("GET", f"zarr/{zarr_id}/files/", expect=404)
        outsider.call("GET", f"zarr/{zarr_id}/files/", expect=404, params={"snapshot": result.snapshot_id})
        assert _download(outsider, zarr_id, key, snapshot=result.snapshot_id).status_code == 404
        with pytest.raises(AccessDeniedError, match="private"):
            outsider.read(asset)  # "": no key


def test_a_plain_embargoed_zarrs_files_are_neither_listed_nor_signed_for_outsiders(live_server: Any) -> None:
    """A Zarr uploaded the old way (presigned PUTs, no repository) in an embargoed Dandiset: the
    files endpoint lists it and signs download URLs for its owner only. The archive's own view
    looked the Zarr up without the visibility filter its other routes apply."""
    owner = UserFactory.create()
    dandiset = DraftVersionFactory.create(
        dandiset__owners=[owner], dandiset__embargo_status=Dandiset.EmbargoStatus.EMBARGOED).dandiset.identifier
    archive = Archive(live_server.url, api_key(owner))
    zarr_id = archive.call("POST", "zarr/", json={"name": ZARR_PATH, "dandiset": dandiset})["zarr_id"]
    archive.presigned_upload(zarr_id, {".zgroup": b'{"zarr_format": 2}', "0/0": b"secret"}, finalize=False)
    assert {e["Key"] for e in _listing(archive, zarr_id)} == {".zgroup", "0/0"}
    assert _download(archive, zarr_id, "0/0").content == b"secret"

    stranger = Archive(live_server.url, api_key(UserFactory.create()))
    anonymous = Archive(live_server.url, "")
    anonymous.headers = {}
    for outsider in (stranger, anonymous):
        outsider.call("GET", f"zarr/{zarr_id}/files/", expect=404)
        response = _download(outsider, zarr_id, "0/0")
        assert response.status_code == 404, (response.status_code, response.url)
        head = requests.head(f"{outsider.api}/zarr/{zarr_id}/files/", params={"prefix": "0/0"},
                             headers=outsider.headers, timeout=60, allow_redirects=False)
        assert head.status_code == 404, head.headers.get("Location")

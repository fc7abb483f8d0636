"""Reading any version: by published metadata, snapshot ID, tag; anonymous and over HTTP."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from dandi_icechunk import open_dataset, open_session, open_zarr
from dandi_icechunk.archive_hooks import publish_dandiset
from dandi_icechunk.errors import DandiIcechunkError, RefNotFoundError, RepositoryNotFoundError
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.read import AccessDeniedError
from dandi_icechunk.reference import NotAZarrAssetError, SnapshotReference
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.testing import S3Server, draft_zarr_asset, make_ome_zarr_v2, make_zarr_v3
from dandi_icechunk.upload import upload_zarr


def _publish(location: StorageLocation, zarr_id: str, src: Path, version: str = "0.260101.1200") -> dict[str, Any]:
    upload_zarr(src, location, zarr_id, dedup=False)  # its own repository, whatever other tests uploaded
    repo = ZarrRepository.open(location, zarr_id)
    info = repo.commit_info(repo.resolve())
    assert info is not None
    asset = draft_zarr_asset(zarr_id, src.name, info.zarr_checksum, info.size)
    return publish_dandiset("000123", version, [asset], location=location)[0]


def _values(src: Path, name: str = "data") -> np.ndarray:
    return zarr.open_group(str(src), mode="r")[name][:]


def test_published_metadata_reads_its_exact_snapshot_while_the_draft_moves_on(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr", chunks=(4, 16, 16))
    published = _publish(location, zarr_id, src)
    before = _values(src)
    ds = open_dataset(published, credentials=location.credentials)
    np.testing.assert_array_equal(ds["data"].values, before)

    make_zarr_v3(src, chunks=(4, 16, 16), seed=9)  # a new draft upload commits meanwhile
    upload_zarr(src, location, zarr_id)
    np.testing.assert_array_equal(ds["data"].values, before)  # the open dataset: unchanged
    np.testing.assert_array_equal(open_dataset(published, credentials=location.credentials)["data"].values, before)
    tip = open_dataset(zarr_id, location=location)
    np.testing.assert_array_equal(tip["data"].values, _values(src))


def test_xarray_engine_opens_published_metadata_and_zarr_id_with_tag(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    published = _publish(location, zarr_id, src)
    if location.credentials:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", location.credentials.access_key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", location.credentials.secret_access_key)
    ds = xr.open_dataset(published, engine="dandi-icechunk")
    np.testing.assert_array_equal(ds["data"].values, _values(src))
    monkeypatch.setenv("DANDI_ICECHUNK_STORAGE", location.url)
    tagged = xr.open_dataset(zarr_id, engine="dandi-icechunk", tag=SnapshotReference.from_asset(published).tag)
    np.testing.assert_array_equal(tagged["data"].values, _values(src))


def test_ome_ngff_multiscales_open_as_a_zarr_group(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    published = _publish(location, zarr_id, src)
    group = open_zarr(published, credentials=location.credentials)
    assert isinstance(group, zarr.Group)
    assert group.attrs["multiscales"][0]["datasets"][1]["path"] == "1"
    for level in ("0", "1"):
        np.testing.assert_array_equal(group[level][:], _values(src, level))
    assert open_zarr(published, path="1", credentials=location.credentials).shape == (16, 32, 32)


def test_metadata_from_a_json_file_and_from_a_url(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    published = _publish(location, zarr_id, src)
    path = tmp_path / "asset.json"
    path.write_text(json.dumps(published))
    np.testing.assert_array_equal(open_dataset(str(path), credentials=location.credentials)["data"].values, _values(src))

    handler = type("H", (http.server.BaseHTTPRequestHandler,), {
        "do_GET": lambda self: (self.send_response(200), self.send_header("Content-Type", "application/json"),
                                self.end_headers(), self.wfile.write(json.dumps(published).encode())),
        "log_message": lambda self, *a: None,
    })
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/api/dandisets/000123/versions/0.260101.1200/assets/x/"
    np.testing.assert_array_equal(open_dataset(url, credentials=location.credentials)["data"].values, _values(src))
    server.server_close()


def test_reads_are_read_only(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    published = _publish(location, zarr_id, make_zarr_v3(tmp_path / "a.zarr"))
    array = open_zarr(published, credentials=location.credentials)["data"]
    with pytest.raises(Exception):
        array[0, 0, 0] = 1
    assert open_session(published, credentials=location.credentials).read_only


def test_bad_sources_say_what_is_wrong(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    published = _publish(location, zarr_id, make_zarr_v3(tmp_path / "a.zarr"))
    nwb = {"encodingFormat": "application/x-nwb", "path": "sub-1/sub-1.nwb"}
    with pytest.raises(NotAZarrAssetError, match="is not a Zarr asset"):
        open_dataset(nwb)
    draft = {k: v for k, v in published.items() if k != "relatedResource"}
    with pytest.raises(NotAZarrAssetError, match="names no Icechunk snapshot"):
        open_dataset(draft)
    with pytest.raises(RefNotFoundError, match="does not exist"):
        open_dataset(zarr_id, location=location, snapshot_id="AAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(RefNotFoundError, match="tag 'nope'"):
        open_dataset(zarr_id, location=location, tag="nope")
    with pytest.raises(RepositoryNotFoundError):
        open_dataset(str(uuid.uuid4()), location=location)


def test_anonymous_reads_of_public_zarrs_over_s3_and_https(public_s3_server: S3Server, tmp_path: Path) -> None:
    admin = public_s3_server.location()
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr")
    published = _publish(admin, zid, src)
    ref = SnapshotReference.from_asset(published)
    assert ref.url and ref.url.startswith("http://127.0.0.1")

    anonymous = dataclasses.replace(admin, credentials=None)
    ds = open_dataset(zid, location=anonymous, snapshot_id=ref.snapshot_id, anonymous=True)
    np.testing.assert_array_equal(ds["data"].values, _values(src))
    over_http = open_dataset(ref.url, snapshot_id=ref.snapshot_id)
    np.testing.assert_array_equal(over_http["data"].values, _values(src))
    with pytest.raises(RefNotFoundError):
        open_dataset(ref.url, snapshot_id="AAAAAAAAAAAAAAAAAAAA")


def test_embargoed_zarrs_refuse_anonymous_reads_and_serve_their_owners(public_s3_server: S3Server, tmp_path: Path) -> None:
    admin = public_s3_server.location()
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr")
    upload_zarr(src, admin, zid, embargoed=True, dedup=False)
    anonymous = dataclasses.replace(admin, credentials=None)
    with pytest.raises(AccessDeniedError, match="private"):
        open_dataset(zid, location=anonymous, anonymous=True)
    np.testing.assert_array_equal(open_dataset(zid, location=admin)["data"].values, _values(src))
    http_url = f"{public_s3_server.endpoint_url}/{public_s3_server.bucket}/zarr-icechunk-embargoed/{zid}/"
    with pytest.raises(AccessDeniedError, match="private"):
        open_dataset(http_url)


def test_the_cli_reads_a_public_bucket_with_no_aws_credentials_at_all(
    public_s3_server: S3Server, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from dandi_icechunk.cli import main

    admin = public_s3_server.location()
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr", seed=uuid.UUID(zid).int % 1000)
    result = upload_zarr(src, admin, zid, dedup=False)
    storage = dataclasses.replace(admin, credentials=None).url
    env = {"HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
           "AWS_PROFILE": None, "AWS_SHARED_CREDENTIALS_FILE": None, "AWS_EC2_METADATA_DISABLED": "true"}
    out = CliRunner().invoke(main, ["--storage", storage, "log", zid, "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert result.snapshot_id in out.output
    exported = CliRunner().invoke(main, ["--storage", storage, "export", zid, str(tmp_path / "out.zarr")], env=env)
    assert exported.exit_code == 0, exported.output


def test_configured_aws_credentials_serve_only_what_the_bucket_does_not_show_anyone(
    public_s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Public Zarrs are read as anyone reads them, so stale keys in the environment do not get
    in the way (API and CLI); the keys still open what only they may read."""
    from click.testing import CliRunner

    from dandi_icechunk.cli import main

    admin = public_s3_server.location()
    public, embargoed = str(uuid.uuid4()), str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr")
    shown = upload_zarr(src, admin, public, dedup=False)
    upload_zarr(src, admin, embargoed, embargoed=True, dedup=False)
    from_env = dataclasses.replace(admin, credentials=None)

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "stale-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "stale-secret")
    np.testing.assert_array_equal(open_dataset(public, location=from_env)["data"].values, _values(src))
    out = CliRunner().invoke(main, ["--storage", from_env.url, "log", public, "--json"])
    assert out.exit_code == 0 and shown.snapshot_id in out.output, out.output
    with pytest.raises(DandiIcechunkError):
        open_dataset(embargoed, location=from_env)

    assert admin.credentials is not None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", admin.credentials.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", admin.credentials.secret_access_key)
    np.testing.assert_array_equal(open_dataset(embargoed, location=from_env)["data"].values, _values(src))


def test_snapshot_files_list_pages_by_prefix_and_read_files_as_uploaded(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    import asyncio

    from dandi_icechunk.snapshot_files import SnapshotFiles

    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    upload_zarr(src, location, zarr_id, dedup=False)
    repo = ZarrRepository.open(location, zarr_id)
    files = SnapshotFiles.open(repo, repo.resolve())
    on_disk = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    assert files.list() == on_disk
    level0 = [k for k in on_disk if k.startswith("0")]  # a string prefix, as S3's: "0/..." and "0/.zarray"
    assert files.list(prefix="0") == level0
    pages, after = [], ""
    while page := files.list(prefix="0", after=after, limit=3):
        pages.append(page)
        after = page[-1]
    assert [k for p in pages for k in p] == level0 and all(len(p) <= 3 for p in pages)
    assert files.list(prefix="nothing/") == []
    for key in (on_disk[0], level0[-1], ".zattrs"):
        assert asyncio.run(files.read(key)) == (src / key).read_bytes()

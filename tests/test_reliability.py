"""Defects found by fault, race, attack and bad-input testing (issue 11), each fixed and kept fixed."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from dandi_icechunk.errors import (
    AccessDeniedError,
    InvalidArgumentError,
    InvalidZarrError,
    RepositoryNotFoundError,
)
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.objects import EMBARGO_TAG
from dandi_icechunk.read import open_dataset
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.snapshot_files import SnapshotFiles, verify_snapshot
from dandi_icechunk.testing import S3Server, make_ome_zarr_v2, make_zarr_v3
from dandi_icechunk.upload import upload_zarr

from .conftest import edit_after_hashing, reference_checksum, tree_bytes
from .test_serve import server, serving  # noqa: F401  (the HTTP view fixture)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_answers_an_embargoed_zarr_exactly_as_a_missing_one(
    location: StorageLocation, server: str, tmp_path: Path  # noqa: F811
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    embargoed, public = str(uuid.uuid4()), str(uuid.uuid4())
    hidden = upload_zarr(src, location, embargoed, embargoed=True, dedup=False)
    shown = upload_zarr(src, location, public, dedup=False)
    assert _get(f"{server}/{public}/{shown.snapshot_id}/zarr.json")[0] == 200
    status, body = _get(f"{server}/{embargoed}/{hidden.snapshot_id}/zarr.json")
    missing_status, missing_body = _get(f"{server}/{uuid.uuid4()}/{hidden.snapshot_id}/zarr.json")
    assert (status, missing_status) == (404, 404)
    assert b"zarr_format" not in body
    assert _get(f"{server}/{embargoed}/{hidden.snapshot_id}/")[0] == 404  # nor its listing


def test_the_view_serves_no_byte_the_bucket_hides_from_anyone_even_with_its_own_credentials_exempt(
    dandi_s3_server: S3Server, tmp_path: Path
) -> None:
    """An object the bucket hides from anyone (tagged ``embargoed=true``, DANDI's way of hiding
    one object) stays hidden through the view, though the view's own credentials may read it:
    the view reads public repositories as anyone would."""
    admin = dandi_s3_server.location()  # the archive's identity, which the policy exempts
    zarr_id = str(uuid.uuid4())
    sid = upload_zarr(make_zarr_v3(tmp_path / "a.zarr"), admin, zarr_id, dedup=False).snapshot_id
    files = SnapshotFiles.open(ZarrRepository.open(admin, zarr_id), sid)
    chunk = next(k for k in files.list() if k not in files.index.documents)
    client, prefix = dandi_s3_server.client(), f"{admin.repository_prefix(zarr_id)}/chunks/"
    tagged = [o["Key"] for o in client.list_objects_v2(Bucket=admin.bucket, Prefix=prefix)["Contents"]]
    for key in tagged:
        client.put_object_tagging(Bucket=admin.bucket, Key=key, Tagging={"TagSet": [EMBARGO_TAG]})
    assert client.get_object(Bucket=admin.bucket, Key=tagged[0])["Body"].read()  # the exempt identity still reads it
    with serving(admin) as view:
        assert _get(f"{view}/{zarr_id}/{sid}/zarr.json")[0] == 200  # what is not hidden is served
        status, body = _get(f"{view}/{zarr_id}/{sid}/{chunk}")
    assert status != 200
    assert len(body) < 200  # a one-line error, not the chunk


def test_a_missing_zarr_is_not_found_even_when_its_id_contains_403(public_s3_server: S3Server) -> None:
    zarr_id = "4030f403-4030-4403-8403-403403403403"
    with pytest.raises(RepositoryNotFoundError):
        open_dataset(zarr_id, location=public_s3_server.location())


def test_an_embargoed_zarr_is_refused_by_s3_error_code_not_by_message(
    public_s3_server: S3Server, tmp_path: Path
) -> None:
    admin = public_s3_server.location()
    zarr_id = str(uuid.uuid4())
    upload_zarr(make_zarr_v3(tmp_path / "a.zarr"), admin, zarr_id, embargoed=True, dedup=False)
    anonymous = StorageLocation(kind="s3", bucket=admin.bucket, endpoint_url=admin.endpoint_url, anonymous=True)
    with pytest.raises(AccessDeniedError, match="private"):
        ZarrRepository.open(anonymous, zarr_id)


def test_zero_byte_chunk_files_round_trip_with_the_same_checksum(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    (src / "0" / "0" / "0" / "1").write_bytes(b"")  # an existing chunk emptied
    (src / "0" / "1").mkdir(exist_ok=True)
    result = upload_zarr(src, location, zarr_id)
    assert result.zarr_checksum == reference_checksum(src)
    repo = ZarrRepository.open(location, zarr_id)
    assert verify_snapshot(repo).ok
    export_snapshot(repo, tmp_path / "out.zarr")
    assert tree_bytes(tmp_path / "out.zarr") == tree_bytes(src)


def test_a_chunk_emptied_by_an_update_leaves_icechunk(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    upload_zarr(src, location, zarr_id)
    (src / "0" / "0" / "0" / "0").write_bytes(b"")
    result = upload_zarr(src, location, zarr_id)
    assert result.zarr_checksum == reference_checksum(src)
    repo = ZarrRepository.open(location, zarr_id)
    assert verify_snapshot(repo).ok
    import zarr

    group = zarr.open_group(repo.readonly_session().store, mode="r")
    level = group["0"]
    fill = level.fill_value
    assert (level[: level.chunks[0], : level.chunks[1], : level.chunks[2]] == fill).all()


def test_bioformats2raw_layout_and_stray_files_are_uploaded_and_warned_about(
    location: StorageLocation, zarr_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "b2r.zarr"
    make_ome_zarr_v2(root / "0")
    (root / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (root / ".zattrs").write_text(json.dumps({"bioformats2raw.layout": 3}))
    (root / "OME").mkdir()
    (root / "OME" / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (root / "OME" / ".zattrs").write_text(json.dumps({"series": ["0"]}))
    (root / "OME" / "METADATA.ome.xml").write_text("<OME xmlns='http://www.openmicroscopy.org/Schemas/OME/2016-06'/>")
    (root / "0" / ".DS_Store").write_bytes(b"\0\1\2\xff")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    with caplog.at_level(logging.WARNING, logger="dandi_icechunk"):
        result = upload_zarr(root, location, zarr_id)
    assert "METADATA.ome.xml" in caplog.text and ".DS_Store" in caplog.text
    assert "left out as dandi-cli does: .git" in caplog.text
    expected = tree_bytes(root)
    del expected[".git/HEAD"]
    assert result.file_count == len(expected)
    export_snapshot(ZarrRepository.open(location, zarr_id), tmp_path / "out.zarr")
    assert tree_bytes(tmp_path / "out.zarr") == expected


def test_a_same_size_in_place_edit_during_upload_commits_nothing(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    edit_after_hashing(monkeypatch, src / "0" / "0" / "0" / "0")
    with pytest.raises(InvalidZarrError, match="changed while it was being uploaded"):
        upload_zarr(src, location, zarr_id, digest_cache=None)
    repo = ZarrRepository.open(location, zarr_id)
    assert repo.commit_info(repo.resolve()) is None  # no snapshot with a wrong checksum


def test_jobs_below_one_is_refused_before_anything_is_written(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    with pytest.raises(InvalidArgumentError, match="jobs must be at least 1"):
        upload_zarr(src, location, zarr_id, jobs=0)
    with pytest.raises(RepositoryNotFoundError):
        ZarrRepository.open(location, zarr_id)

"""Migrating a Zarr the archive stored the old way (objects under zarr/<zarr_id>/, one PUT with
Content-MD5 each, as dandi-cli uploads) into a repository that references them in place."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path

import icechunk
import numpy as np
import pytest
import zarr

from dandi_icechunk.archive.migrate import MigrationError, migrate_zarr
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.objects import prefix_objects, repository_objects
from dandi_icechunk.read import open_dataset
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.reuse import find_by_checksum
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.snapshot_files import verify_snapshot
from dandi_icechunk.testing import S3Server, make_ome_zarr_v2
from dandi_icechunk.upload import upload_zarr

from .conftest import reference_checksum, tree_bytes
from .test_serve import _get, serving


def _legacy_upload(server: S3Server, location: StorageLocation, zarr_id: str, src: Path) -> dict[str, str]:
    """PUT every file under zarr/<zarr_id>/ with Content-MD5, as dandi-cli's presigned uploads do."""
    client = server.client()
    etags = {}
    for key, data in tree_bytes(src).items():
        md5 = hashlib.md5(data)
        client.put_object(Bucket=server.bucket, Key=f"{location.legacy_prefix(zarr_id)}/{key}", Body=data,
                          ContentMD5=base64.b64encode(md5.digest()).decode())
        etags[key] = md5.hexdigest()
    return etags


def test_a_legacy_zarr_becomes_a_repository_of_references_without_copying_a_chunk(
    s3_server: S3Server, s3_location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_ome_zarr_v2(tmp_path / "legacy.ome.zarr")
    files = tree_bytes(src)
    _legacy_upload(s3_server, s3_location, zarr_id, src)
    legacy_before = prefix_objects(s3_location, s3_location.legacy_prefix(zarr_id)).listing()  # type: ignore[attr-defined]

    result = migrate_zarr(s3_location, zarr_id, expected_checksum=reference_checksum(src), dandiset="000123")
    assert result.zarr_checksum == reference_checksum(src) and result.file_count == len(files)
    assert result.virtual_chunks + result.stored_files == len(files) and result.virtual_chunks > 0
    repo_keys = [k for k, _, _ in repository_objects(s3_location, zarr_id).list_with_times("chunks/")]
    assert repo_keys == []  # zero chunk bytes copied
    assert prefix_objects(s3_location, s3_location.legacy_prefix(zarr_id)).listing() == legacy_before  # type: ignore[attr-defined]

    repo = ZarrRepository.open(s3_location, zarr_id)
    out = export_snapshot(repo, tmp_path / "out.zarr")
    assert tree_bytes(Path(out.destination)) == files  # v2 stays v2, byte for byte
    assert verify_snapshot(repo).ok
    level0 = np.asarray(zarr.open_array(str(src / "0"), mode="r")[:])
    np.testing.assert_array_equal(open_dataset(zarr_id, location=s3_location, group="0")["image"].values, level0)
    assert find_by_checksum(s3_location, result.zarr_checksum) == (zarr_id, result.snapshot_id)

    # plain Icechunk reads it too, once the legacy container is authorized
    storage = s3_location.icechunk_storage(zarr_id)
    access = s3_location.virtual_chunk_access([s3_location.legacy_container(zarr_id)], zarr_id)
    plain = icechunk.Repository.open(storage, authorize_virtual_chunk_access=access)
    group = zarr.open_group(plain.readonly_session(snapshot_id=result.snapshot_id).store, mode="r")
    np.testing.assert_array_equal(group["0"][:], level0)

    # an upload on top writes native chunks for what changed and keeps the rest referenced
    zarr.open_array(str(src / "0"), mode="r+")[0, 0:4, 0:4] = 1
    changed = upload_zarr(src, s3_location, zarr_id, dedup=False)
    assert changed.files_written == 1
    again = export_snapshot(ZarrRepository.open(s3_location, zarr_id), tmp_path / "again.zarr")
    assert tree_bytes(Path(again.destination)) == tree_bytes(src)


def test_the_http_view_serves_a_migrated_zarr_from_its_legacy_objects_on_dandis_public_bucket(
    dandi_s3_server: S3Server, zarr_id: str, tmp_path: Path
) -> None:
    """The view reads public repositories unsigned: the chunks a migrated repository references
    in ``zarr/<zarr_id>/`` are read that way too, byte for byte."""
    location = dandi_s3_server.location()
    src = make_ome_zarr_v2(tmp_path / "legacy.ome.zarr")
    _legacy_upload(dandi_s3_server, location, zarr_id, src)
    result = migrate_zarr(location, zarr_id, expected_checksum=reference_checksum(src), dandiset="000123")
    assert result.virtual_chunks > 0
    with serving(location) as view:
        served = {key: _get(f"{view}/{zarr_id}/{result.snapshot_id}/{key}") for key in tree_bytes(src)}
    assert {k: (status, body) for k, (status, _, body) in served.items()} == {k: (200, d) for k, d in tree_bytes(src).items()}


def test_an_overwritten_legacy_object_is_caught_by_verify_not_read_silently(
    s3_server: S3Server, s3_location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_ome_zarr_v2(tmp_path / "legacy.ome.zarr")
    _legacy_upload(s3_server, s3_location, zarr_id, src)
    migrate_zarr(s3_location, zarr_id, expected_checksum=reference_checksum(src))
    chunk = next(k for k in tree_bytes(src) if k.startswith("0/0"))
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=f"{s3_location.legacy_prefix(zarr_id)}/{chunk}",
                                  Body=b"overwritten")
    problems = verify_snapshot(ZarrRepository.open(s3_location, zarr_id)).problems
    assert any(chunk in p for p in problems)


@pytest.mark.parametrize(("fault", "said"), [("wrong checksum", "the archive recorded"),
                                            ("multipart etag", "no MD5 ETag"), ("empty", "nothing to migrate")])
def test_a_zarr_that_cannot_be_checked_is_refused_and_nothing_is_committed(
    s3_server: S3Server, s3_location: StorageLocation, zarr_id: str, tmp_path: Path, fault: str, said: str
) -> None:
    src = make_ome_zarr_v2(tmp_path / "legacy.ome.zarr")
    expected = reference_checksum(src)
    if fault != "empty":
        _legacy_upload(s3_server, s3_location, zarr_id, src)
    if fault == "wrong checksum":
        expected = "0" * 32 + "-1--1"
    if fault == "multipart etag":
        client = s3_server.client()
        key = f"{s3_location.legacy_prefix(zarr_id)}/0/.zarray"
        upload = client.create_multipart_upload(Bucket=s3_server.bucket, Key=key)
        part = client.upload_part(Bucket=s3_server.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1,
                                  Body=(src / "0" / ".zarray").read_bytes())
        client.complete_multipart_upload(Bucket=s3_server.bucket, Key=key, UploadId=upload["UploadId"],
                                         MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    with pytest.raises(MigrationError, match=said) as refused:
        migrate_zarr(s3_location, zarr_id, expected_checksum=expected)
    assert "\n" not in str(refused.value)
    try:
        repo = ZarrRepository.open(s3_location, zarr_id)
    except Exception:
        return  # no repository at all
    assert repo.commit_info(repo.resolve()) is None


def test_the_migrate_command_says_what_it_did_or_why_not_in_one_line(
    s3_server: S3Server, s3_location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from dandi_icechunk.cli import main

    src = make_ome_zarr_v2(tmp_path / "legacy.ome.zarr")
    _legacy_upload(s3_server, s3_location, zarr_id, src)
    storage = f"s3://{s3_server.bucket}/{s3_location.prefix}?endpoint_url={s3_server.endpoint_url}"
    env = {"AWS_ACCESS_KEY_ID": s3_server.access_key_id, "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key}
    refused = CliRunner().invoke(main, ["--storage", storage, "migrate", zarr_id, "--checksum", "x"], env=env)
    assert refused.exit_code != 0 and "the archive recorded x" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    done = CliRunner().invoke(main, ["--storage", storage, "migrate", zarr_id, "--checksum", reference_checksum(src),
                                     "--json"], env=env)
    assert done.exit_code == 0, done.output
    assert '"virtual_chunks"' in done.output


def test_publishing_a_migrated_zarr_holds_its_legacy_objects_and_the_audit_restores_an_overwritten_one(
    locked_s3_server: S3Server, zarr_id: str, tmp_path: Path
) -> None:
    from dandi_icechunk.archive.audit import Publication, audit_publications, protect_published_objects
    from dandi_icechunk.archive_hooks import publish_dandiset
    from dandi_icechunk.testing import draft_zarr_asset

    location = locked_s3_server.location(prefix=f"t-{zarr_id[:8]}")
    src = make_ome_zarr_v2(tmp_path / "legacy.ome.zarr")
    etags = _legacy_upload(locked_s3_server, location, zarr_id, src)
    result = migrate_zarr(location, zarr_id, expected_checksum=reference_checksum(src))
    published = publish_dandiset(
        "000123", "0.260101.1200", [draft_zarr_asset(zarr_id, src.name, result.zarr_checksum, result.size)],
        location=location,
    )[0]
    held = protect_published_objects(location, zarr_id)
    client = locked_s3_server.client()
    chunk = next(k for k in etags if k.startswith("0/0"))
    legacy_key = f"{location.legacy_prefix(zarr_id)}/{chunk}"
    [version] = client.list_object_versions(Bucket=locked_s3_server.bucket, Prefix=legacy_key)["Versions"]
    hold = client.get_object_legal_hold(Bucket=locked_s3_server.bucket, Key=legacy_key, VersionId=version["VersionId"])
    assert hold["LegalHold"]["Status"] == "ON" and held.objects_held >= result.virtual_chunks

    client.put_object(Bucket=locked_s3_server.bucket, Key=legacy_key, Body=b"tampered")
    publication = Publication.from_asset(published)
    report = audit_publications([publication], location)
    assert any(f"legacy object {chunk} overwritten" in p for p in report.problems)
    repaired = audit_publications([publication], location, repair=True)
    assert repaired.ok and any(f"restored overwritten legacy object {chunk}" in r for r in repaired.repairs)
    level0 = np.asarray(zarr.open_array(str(src / "0"), mode="r")[:])
    np.testing.assert_array_equal(open_dataset(published, credentials=location.credentials, group="0")["image"].values, level0)


def test_many_zarrs_migrate_from_an_s3_inventory_resumably_with_one_result_file_each(
    locked_s3_server: S3Server, tmp_path: Path
) -> None:
    import csv
    import gzip
    import json
    import uuid
    from urllib.parse import quote

    from click.testing import CliRunner

    from dandi_icechunk.cli import main

    server = locked_s3_server
    location = server.location(prefix=f"t-{uuid.uuid4().hex[:8]}")
    good, wrong, deleted = (str(uuid.uuid4()) for _ in range(3))
    checksums = {}
    for n, zarr_id in enumerate((good, wrong, deleted)):
        src = make_ome_zarr_v2(tmp_path / f"{n}.ome.zarr")
        _legacy_upload(server, location, zarr_id, src)
        checksums[zarr_id] = reference_checksum(src)
    client = server.client()
    client.delete_object(Bucket=server.bucket, Key=f"{location.legacy_prefix(deleted)}/0/.zarray")  # a delete marker
    inventory = tmp_path / "inventory.csv.gz"
    with gzip.open(inventory, "wt", newline="") as f:  # what S3 Inventory writes: no header, keys URL-encoded
        out = csv.writer(f)
        for zarr_id in (good, wrong, deleted):
            listed = client.list_object_versions(Bucket=server.bucket, Prefix=location.legacy_prefix(zarr_id) + "/")
            for v in listed.get("Versions", []):
                out.writerow([server.bucket, quote(v["Key"]), v["VersionId"], str(v["IsLatest"]).lower(), "false",
                              v["Size"], v["LastModified"].isoformat(), v["ETag"].strip('"')])
            for m in listed.get("DeleteMarkers", []):
                out.writerow([server.bucket, quote(m["Key"]), m["VersionId"], str(m["IsLatest"]).lower(), "true",
                              "", m["LastModified"].isoformat(), ""])

    def plan(wrong_checksum: str) -> Path:
        path = tmp_path / "zarrs.csv"
        rows = [(good, checksums[good]), (wrong, wrong_checksum), (deleted, checksums[deleted])]
        path.write_text("zarr_id,checksum\n" + "".join(f"{z},{c}\n" for z, c in rows))
        return path

    storage = f"s3://{server.bucket}/{location.prefix}?endpoint_url={server.endpoint_url}"
    env = {"AWS_ACCESS_KEY_ID": server.access_key_id, "AWS_SECRET_ACCESS_KEY": server.secret_access_key}
    results = tmp_path / "results"
    command = ["--storage", storage, "migrate-many", "--results", str(results), "--inventory", str(inventory), "--json"]
    first = CliRunner().invoke(main, [*command, str(plan("0" * 32 + "-1--1"))], env=env)
    assert first.exit_code == 1
    assert json.loads(first.output) == {"migrated": 1, "refused": 2, "skipped": 0}
    outcome = {z: json.loads((results / f"{z}.json").read_text()) for z in (good, wrong, deleted)}
    assert outcome[good]["migrated"] and outcome[good]["virtual_chunks"] > 0
    assert "the archive recorded" in outcome[wrong]["error"]
    assert "delete markers" in outcome[deleted]["error"]

    again = CliRunner().invoke(main, [*command, str(plan(checksums[wrong]))], env=env)
    assert json.loads(again.output) == {"migrated": 1, "refused": 1, "skipped": 1}
    assert json.loads((results / f"{wrong}.json").read_text())["migrated"]
    repo = ZarrRepository.open(location, wrong)
    assert verify_snapshot(repo).ok


def test_a_zarr_changed_since_its_inventory_is_refused_at_the_recheck(
    s3_server: S3Server, s3_location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    from dandi_icechunk.archive.migrate import legacy_listing

    src = make_ome_zarr_v2(tmp_path / "legacy.ome.zarr")
    _legacy_upload(s3_server, s3_location, zarr_id, src)
    inventory = legacy_listing(s3_location, zarr_id)  # as yesterday's inventory saw it
    chunk = next(k for k in inventory if k.startswith("0/0"))
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=f"{s3_location.legacy_prefix(zarr_id)}/{chunk}",
                                  Body=b"changed since")
    with pytest.raises(MigrationError, match="changed while it was being migrated"):
        migrate_zarr(s3_location, zarr_id, expected_checksum=reference_checksum(src), listing=inventory)
    repo = ZarrRepository.open(s3_location, zarr_id)
    assert repo.commit_info(repo.resolve()) is None  # nothing committed; a rerun takes the repository over


def test_a_repository_cannot_make_its_readers_fetch_another_zarrs_objects(
    s3_server: S3Server, s3_location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    """An uploader controls its repository's config: it declares the whole bucket as a virtual
    chunk container and references another (embargoed) Zarr's legacy object. Readers of its
    repository, holding the archive's credentials, must not fetch it."""
    reference_another_zarrs_object_and_read_it(s3_server, s3_location, zarr_id, tmp_path)


def reference_another_zarrs_object_and_read_it(
    s3_server: S3Server, s3_location: StorageLocation, zarr_id: str, tmp_path: Path,
    before_read: Callable[[], None] = lambda: None,
) -> None:
    """The attack of the test above, on ``s3_location`` (bucket- or Arraylake-backed), with
    ``before_read`` run once the attacker's repository references the object."""
    import uuid

    victim = str(uuid.uuid4())
    secret = make_ome_zarr_v2(tmp_path / "secret.ome.zarr")
    _legacy_upload(s3_server, s3_location, victim, secret)
    upload_zarr(make_ome_zarr_v2(tmp_path / "mine.ome.zarr", seed=3), s3_location, zarr_id, dedup=False)
    attacker = ZarrRepository.open(s3_location, zarr_id)
    config = attacker.icechunk.config
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(
        f"s3://{s3_server.bucket}/", icechunk.s3_store(region="us-east-1", endpoint_url=s3_server.endpoint_url,
                                                      allow_http=True, s3_compatible=True, force_path_style=True)))
    icechunk.Repository.open(s3_location.icechunk_storage(zarr_id), config=config).save_config()
    stolen = next(k for k in tree_bytes(secret) if k.startswith("0/0"))
    session = icechunk.Repository.open(s3_location.icechunk_storage(zarr_id)).writable_session("main")
    target = "0/c/0/0/0"  # the attacker's own level-0 chunk, as Icechunk keys it
    session.store.set_virtual_ref(target, f"s3://{s3_server.bucket}/{s3_location.legacy_prefix(victim)}/{stolen}",
                                  offset=0, length=len(tree_bytes(secret)[stolen]))
    session.commit("reference another Zarr's object")
    before_read()

    reader = ZarrRepository.open(s3_location, zarr_id)  # the archive's credentials
    store = reader.icechunk.readonly_session(branch="main").store
    from zarr.buffer import default_buffer_prototype

    with pytest.raises(icechunk.IcechunkError, match="authorize"):
        store._sync(store.get(target, default_buffer_prototype()))

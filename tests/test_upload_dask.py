"""Uploads on a Dask cluster (``upload_zarr(dask=...)``): a ``LocalCluster`` of two worker
processes hashes and sends the files into forked Icechunk sessions, and the result is the same
one commit an upload in one process makes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import icechunk
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from dandi_icechunk.archive.credentials import CredentialVendor
from dandi_icechunk.archive.gc import collect_garbage
from dandi_icechunk.archive_hooks import finalize_upload
from dandi_icechunk.cli import main
from dandi_icechunk.errors import InvalidArgumentError, InvalidZarrError
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.session import SCRATCH_BRANCH_PREFIX, ZarrRepository
from dandi_icechunk.snapshot_files import verify_snapshot
from dandi_icechunk.testing import S3Server, make_ome_zarr_v2
from dandi_icechunk.upload import commit, distributed, upload_zarr

from .conftest import (
    chunk_objects,
    edit_after_hashing,
    reference_checksum,
    tiny_chunk_zarr,
    tree_bytes,
)

distributed_ = pytest.importorskip("distributed", reason="the dask extra is not installed")


@pytest.fixture(scope="module")
def client() -> Iterator[distributed_.Client]:
    with distributed_.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None) as cluster, distributed_.Client(cluster) as c:
        yield c


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few chunks per task, so that even a small Zarr is spread over both workers."""
    monkeypatch.setattr(distributed, "_PART_FILES", 3)


def _exported(repo: ZarrRepository, snapshot_id: str, out: Path) -> dict[str, bytes]:
    export_snapshot(repo, out, snapshot_id=snapshot_id)
    return tree_bytes(out)


def test_a_first_upload_on_two_workers_is_one_commit_with_the_checksum_and_bytes_of_the_zarr(
    s3_location: StorageLocation, zarr_id: str, client: distributed_.Client, tmp_path: Path
) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr", shape=(16, 128, 128))
    with distributed_.get_task_stream(client) as stream:
        result = upload_zarr(src, s3_location, zarr_id, dedup=False, dask=client)
    assert len({t["worker"] for t in stream.data if t["key"].startswith("_write_part")}) == 2
    repo = ZarrRepository.open(s3_location, zarr_id)
    assert result.zarr_checksum == reference_checksum(src)
    assert result.files_written == result.file_count == len(tree_bytes(src))
    assert [s.snapshot_id for s in repo.history()][:1] == [result.snapshot_id]
    assert len(repo.history()) == 2  # the initial snapshot and the upload
    assert repo.icechunk.list_branches() == {"main"}
    assert _exported(repo, result.snapshot_id, tmp_path / "out.zarr") == tree_bytes(src)
    assert verify_snapshot(repo, snapshot_id=result.snapshot_id).ok


def test_an_update_that_adds_and_changes_arrays_on_two_workers_matches_the_local_zarr(
    s3_location: StorageLocation, zarr_id: str, client: distributed_.Client, tmp_path: Path
) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    first = upload_zarr(src, s3_location, zarr_id, digest_cache=None)
    root = zarr.open_group(str(src), mode="a")
    root["0"][0, :4, :4] = 7  # a changed chunk
    root.create_array("labels", shape=(16, 64), chunks=(8, 8), dtype="<u1")[:] = 3  # a new array
    with distributed_.get_task_stream(client) as stream:
        second = upload_zarr(src, s3_location, zarr_id, digest_cache=None, dask=client)
    names = {t["key"].split("-")[0] for t in stream.data}
    assert {"_run_batches", "_write_part"} <= names  # hashed and sent on the workers
    repo = ZarrRepository.open(s3_location, zarr_id)
    assert second.parent_snapshot_id == first.snapshot_id
    assert [s.snapshot_id for s in repo.history()] == [second.snapshot_id, first.snapshot_id, repo.history()[-1].snapshot_id]
    assert repo.icechunk.list_branches() == {"main"}  # the scratch branch is gone
    assert second.zarr_checksum == reference_checksum(src)
    assert _exported(repo, second.snapshot_id, tmp_path / "out.zarr") == tree_bytes(src)
    np.testing.assert_array_equal(
        zarr.open_array(repo.readonly_session(snapshot_id=second.snapshot_id).store, path="labels", mode="r")[:],
        np.full((16, 64), 3, dtype="u1"),
    )


def test_a_file_edited_after_hashing_fails_the_dask_upload_with_nothing_committed_and_a_rerun_lands(
    s3_location: StorageLocation, zarr_id: str, client: distributed_.Client, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    first = upload_zarr(src, s3_location, zarr_id, digest_cache=None)
    root = zarr.open_group(str(src), mode="a")
    root.create_array("labels", shape=(8, 8), chunks=(4, 4), dtype="<u1")[:] = 1  # nodes change: scratch branch
    root["0"][:] = 9
    with monkeypatch.context() as patch:
        edit_after_hashing(patch, src / "0" / "0" / "0" / "0")
        with pytest.raises(InvalidZarrError, match="changed while it was being uploaded"):
            upload_zarr(src, s3_location, zarr_id, digest_cache=None, dask=client)
    repo = ZarrRepository.open(s3_location, zarr_id)
    assert repo.resolve() == first.snapshot_id
    assert repo.icechunk.list_branches() == {"main"}

    again = upload_zarr(src, s3_location, zarr_id, digest_cache=None, dask=client)
    assert again.parent_snapshot_id == first.snapshot_id
    assert again.zarr_checksum == reference_checksum(src)
    assert _exported(repo, again.snapshot_id, tmp_path / "out.zarr") == tree_bytes(src)


def test_a_file_removed_after_the_scan_fails_a_first_dask_upload_with_one_line_and_no_commit(
    s3_location: StorageLocation, zarr_id: str, client: distributed_.Client, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    victim = src / "0" / "0" / "0" / "0"
    real_scan = commit.scan_local_zarr

    def scan_then_remove(path, **options):  # type: ignore[no-untyped-def]
        local = real_scan(path, **options)
        victim.unlink()
        return local

    monkeypatch.setattr(commit, "scan_local_zarr", scan_then_remove)
    with pytest.raises(InvalidZarrError, match="cannot read 0/0/0/0"):
        upload_zarr(src, s3_location, zarr_id, dedup=False, dask=client)
    repo = ZarrRepository.open(s3_location, zarr_id)
    assert len(repo.history()) == 1


def test_gc_deletes_the_scratch_branch_of_a_crashed_dask_upload_once_the_restore_window_is_over(
    s3_location: StorageLocation, zarr_id: str, client: distributed_.Client, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    first = upload_zarr(src, s3_location, zarr_id, digest_cache=None)
    zarr.open_group(str(src), mode="a").create_array("labels", shape=(8, 8), chunks=(4, 4), dtype="<u1")[:] = 1

    def killed(self, branch):  # type: ignore[no-untyped-def]
        raise SystemExit("the uploading process died")

    with monkeypatch.context() as patch:
        patch.setattr(icechunk.Repository, "delete_branch", killed)
        with pytest.raises(SystemExit):
            upload_zarr(src, s3_location, zarr_id, digest_cache=None, dask=client)
    repo = ZarrRepository.open(s3_location, zarr_id)
    [scratch] = repo.icechunk.list_branches() - {"main"}
    assert scratch.startswith(SCRATCH_BRANCH_PREFIX)
    assert repo.resolve() == first.snapshot_id

    window = timedelta(days=1)
    assert collect_garbage(s3_location, zarr_id, restore_window=window).objects_deleted == 0
    assert scratch in repo.icechunk.list_branches()  # an upload may still be running
    later = datetime.now(UTC) + timedelta(days=2)
    assert collect_garbage(s3_location, zarr_id, restore_window=window, dry_run=True,
                           now=later).scratch_branches_deleted == [scratch]
    assert scratch in repo.icechunk.list_branches()
    collected = collect_garbage(s3_location, zarr_id, restore_window=window, now=later)
    assert collected.scratch_branches_deleted == [scratch]
    assert collected.objects_deleted > 0  # the staging snapshot and the chunks only it reached
    assert repo.icechunk.list_branches() == {"main"}
    assert verify_snapshot(repo, snapshot_id=first.snapshot_id).ok


def test_the_upload_command_hashes_and_sends_on_the_dask_scheduler_it_is_given(
    client: distributed_.Client, zarr_id: str, tmp_path: Path
) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    env = {"DANDI_ICECHUNK_STORAGE": (tmp_path / "bucket").as_uri()}
    with distributed_.get_task_stream(client) as stream:
        out = CliRunner().invoke(main, ["upload", str(src), "--zarr-id", zarr_id, "--no-cache", "--json",
                                        "--dask-scheduler", client.scheduler.address], env=env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["zarr_checksum"] == reference_checksum(src)
    assert {"_run_batches", "_write_part"} <= {t["key"].split("-")[0] for t in stream.data}


def test_an_unreachable_dask_scheduler_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:9 \("):
        distributed.connect("tcp://127.0.0.1:9", timeout=1)


def test_a_dask_upload_with_credentials_vended_for_its_repository_only_lands(
    iam_s3_server: S3Server, client: distributed_.Client, tmp_path: Path
) -> None:
    """The archive's route: the forks carry the uploader's vended credentials to the workers,
    and the scratch branch needs nothing beyond the one-repository, no-delete policy."""
    admin = iam_s3_server.location()
    zarr_id = str(uuid.uuid4())
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr")
    upload_zarr(src, admin, zarr_id, dedup=False)
    zarr.open_group(str(src), mode="a").create_array("labels", shape=(8, 8), chunks=(4, 4), dtype="<u1")[:] = 1
    vended = CredentialVendor(admin, ttl=timedelta(minutes=5)).vend(zarr_id).credentials
    uploader = StorageLocation(kind="s3", bucket=admin.bucket, prefix=admin.prefix,
                               endpoint_url=admin.endpoint_url, credentials=vended)

    result = upload_zarr(src, uploader, zarr_id, dedup=False, digest_cache=None, dask=client)
    assert finalize_upload(zarr_id, location=admin).zarr_checksum == result.zarr_checksum == reference_checksum(src)
    assert ZarrRepository.open(admin, zarr_id).icechunk.list_branches() == {"main"}


def test_tiny_chunks_sent_by_workers_get_objects_of_their_own(
    s3_location: StorageLocation, zarr_id: str, client: distributed_.Client, tmp_path: Path
) -> None:
    """Workers' sessions travel back to the uploader whole: chunks kept in manifests would too,
    so an upload on Dask keeps Icechunk's own inline limit (512 bytes)."""
    src = tiny_chunk_zarr(tmp_path / "tiny.zarr", 24)
    result = upload_zarr(src, s3_location, zarr_id, dedup=False, dask=client)
    assert len(chunk_objects(s3_location, zarr_id)) == 24
    assert result.zarr_checksum == reference_checksum(src) and verify_snapshot(ZarrRepository.open(s3_location, zarr_id)).ok

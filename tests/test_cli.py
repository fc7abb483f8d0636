"""The dandi-icechunk command line, in process (click) and as a real process (kill -9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner

from dandi_icechunk.cli import main
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.testing import S3Server, make_ome_zarr_v2, make_zarr_v3

from .conftest import reference_checksum, tree_bytes


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run the CLI on a local bucket given through $DANDI_ICECHUNK_STORAGE."""
    env = {"DANDI_ICECHUNK_STORAGE": (tmp_path / "bucket").as_uri()}

    def invoke(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(main, list(args), env=env)
        assert result.exit_code == code, result.output + str(result.exception)
        return result.output

    return invoke


def test_upload_log_diff_info_export_verify(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    zid = str(uuid.uuid4())
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr", chunks=(4, 16, 16))
    first = json.loads(run("upload", str(src), "--zarr-id", zid, "--dandiset", "000123", "--json"))
    assert {"zarr_id", "snapshot_id", "zarr_checksum", "files_written", "bytes_written", "files_deleted"} <= first.keys()
    assert first["zarr_checksum"] == reference_checksum(src)

    zarr.open_array(str(src / "0"), mode="r+")[0:4, 0:16, 0:16] = 3
    (src / "1" / "0" / "0" / "0").unlink()
    second = json.loads(run("upload", str(src), "--zarr-id", zid, "-m", "fix a chunk", "--json"))
    assert (second["files_written"], second["files_deleted"]) == (1, 1)

    again = run("upload", str(src), "--zarr-id", zid)
    assert "no change" in again and "nothing committed" in again
    assert json.loads(run("upload", str(src), "--zarr-id", zid, "--json"))["snapshot_id"] is None

    log = json.loads(run("log", zid, "--json"))
    ids = [s["snapshot_id"] for s in log["snapshots"]]
    assert ids[:2] == [second["snapshot_id"], first["snapshot_id"]]
    assert log["snapshots"][0]["message"] == "fix a chunk"
    assert log["snapshots"][1]["metadata"]["dandi:dandiset"] == "000123"
    assert "fix a chunk" in run("log", zid)

    diff = run("diff", zid, first["snapshot_id"], "main")
    assert "M 0/0/0/0" in diff and "D 1/0/0/0" in diff and "1 modified, 1 removed" in diff

    info = json.loads(run("info", zid, "--json"))
    assert info["snapshot_id"] == second["snapshot_id"] and info["zarr_format"] == 2

    out = tmp_path / "first.ome.zarr"
    run("export", zid, str(out), "--snapshot", first["snapshot_id"])
    assert reference_checksum(out) == first["zarr_checksum"]
    manifest = json.loads(run("manifest", zid, "--snapshot", second["snapshot_id"]))
    assert manifest["statistics"]["zarrChecksum"] == second["zarr_checksum"]
    verified = json.loads(run("verify", zid, "--json"))
    assert verified["ok"] and verified["actual_checksum"] == second["zarr_checksum"]


def test_verify_fails_with_exit_1_when_stored_bytes_are_corrupted(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr", chunks=(8, 32, 32))
    run("upload", str(src), "--zarr-id", zid)
    chunks = Path(StorageLocation.parse((tmp_path / "bucket").as_uri()).bucket) / "zarr-icechunk" / zid / "chunks"
    victim = sorted(chunks.iterdir())[0]
    victim.write_bytes(b"garbage" + victim.read_bytes()[7:])
    output = run("verify", zid, code=1)
    assert "PROBLEM" in output and "FAILED" in output


def test_errors_are_one_line_with_exit_1(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_zarr_v3(tmp_path / "a.zarr")
    assert "is not a zarr_id" in run("upload", str(src), "--zarr-id", "nope", code=1)
    assert "no repository for zarr_id" in run("log", str(uuid.uuid4()), code=1)
    assert "--zarr-id is required" in run("upload", str(src), code=2)
    (src / "zarr.json").write_text("{")
    assert "zarr.json is not valid JSON" in run("upload", str(src), "--zarr-id", str(uuid.uuid4()), code=1)
    assert "--jobs" in run("upload", str(src), "--zarr-id", str(uuid.uuid4()), "--jobs", "0", code=2)


def test_dandiset_directory_uploads_each_zarr_found_like_dandi_upload(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds = tmp_path / "000123"
    ds.mkdir()
    (ds / "dandiset.yaml").write_text("identifier: DANDI:000123\nname: test\n")
    make_ome_zarr_v2(ds / "sub-1" / "sub-1_sample-1.ome.zarr")
    make_zarr_v3(ds / "sub-2" / "sub-2_sample-1.zarr")
    (ds / "sub-2" / "notes.txt").write_text("not an asset we upload")
    result = json.loads(run("upload", str(ds), "--json"))
    assert result["dandiset"] == "000123"
    assert len(result["zarrs"]) == 2
    for z in result["zarrs"]:
        assert z["snapshot_id"] is not None
        uuid.UUID(z["zarr_id"])
    again = json.loads(run("upload", str(ds), "--json"))
    assert [z["zarr_id"] for z in again["zarrs"]] == [z["zarr_id"] for z in result["zarrs"]]
    assert all(z["snapshot_id"] is None for z in again["zarrs"])


_KILL_MID_UPLOAD = """
import os, signal, sys
import dandi_icechunk.cli.upload as upload_cli
from dandi_icechunk.cli import main

class KillAfter:
    done = 0
    def start(self, label, files, nbytes):
        self.writing = label == "uploading"
    def advance(self, files, nbytes):
        if self.writing:
            self.done += files
            if self.done >= 50:
                os.kill(os.getpid(), signal.SIGKILL)
    def finish(self):
        pass

upload_cli.progress_for = lambda as_json: KillAfter()
sys.argv[0] = "dandi-icechunk"
main()
"""


def test_upload_killed_with_sigkill_leaves_previous_snapshot_and_rerun_completes(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """The child is the real CLI; its progress hook SIGKILLs it after 50 chunks were written."""
    location = s3_server.location(prefix=f"t-{uuid.uuid4().hex[:8]}")
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr", shape=(32, 256, 256), chunks=(4, 32, 32))  # 512 chunks
    env = {
        **os.environ,
        "DANDI_ICECHUNK_STORAGE": location.url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key,
    }
    args = ["upload", str(src), "--zarr-id", zid, "--json"]
    cli = [sys.executable, "-m", "dandi_icechunk"]
    first = json.loads(subprocess.run([*cli, *args], env=env, capture_output=True, check=True).stdout)

    zarr.open_group(str(src), mode="r+")["data"][:] = 1
    killed = subprocess.run([sys.executable, "-c", _KILL_MID_UPLOAD, *args], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL

    repo = ZarrRepository.open(location, zid)
    assert repo.resolve() == first["snapshot_id"]
    assert len(repo.history()) == 2
    second = json.loads(subprocess.run([*cli, *args], env=env, capture_output=True, check=True).stdout)
    assert second["parent_snapshot_id"] == first["snapshot_id"]
    assert second["zarr_checksum"] == reference_checksum(src)
    out = tmp_path / "back.zarr"
    subprocess.run([*cli, "export", zid, str(out)], env=env, check=True, capture_output=True)
    assert tree_bytes(out) == tree_bytes(src)


def test_audit_exits_1_and_names_the_problem_when_a_published_chunk_is_corrupted(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dandi_icechunk.testing import draft_zarr_asset

    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr", shape=(16, 128, 128), chunks=(4, 32, 32))
    up = json.loads(run("upload", str(src), "--zarr-id", zid, "--json"))
    assets = tmp_path / "draft.json"
    assets.write_text(json.dumps([draft_zarr_asset(zid, "a.zarr", up["zarr_checksum"], up["size"])]))
    published = tmp_path / "published.json"
    published.write_text(run("publish", "--dandiset", "000123", "--version", "0.260101.1200", str(assets), "--json"))
    assert "OK: 1 published snapshot(s) checked" in run("audit", str(published))

    chunks = tmp_path / "bucket" / "zarr-icechunk" / zid / "chunks"
    victim = sorted(chunks.iterdir())[0]
    victim.write_bytes(b"garbage")
    output = run("audit", str(published), code=1)
    assert "PROBLEM" in output and "FAILED" in output
    assert "cannot repair: the bucket keeps no object versions" in run("audit", str(published), "--repair", code=1)


def test_attach_and_unembargo_commands(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr")
    up = json.loads(run("upload", str(src), "--zarr-id", zid, "--embargoed", "--json"))
    assert "cannot be attached to the public Dandiset" in run("attach", zid, "--dandiset", "000002", code=1)
    attached = json.loads(run("attach", zid, "--dandiset", "000002", "--embargoed-dandiset", "--json"))
    assert attached["snapshot_id"] == up["snapshot_id"] and attached["branch"] == "dandiset/000002"
    moved = json.loads(run("unembargo", zid, "--json"))
    assert moved[0]["objects_moved"] > 0
    assert json.loads(run("info", zid, "--json"))["embargoed"] is False
    assert json.loads(run("attach", zid, "--dandiset", "000005", "--json"))["snapshot_id"] == up["snapshot_id"]


def test_upload_of_content_already_there_attaches_it_unless_no_dedup(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_zarr_v3(tmp_path / "a.zarr")
    first = json.loads(run("upload", str(src), "--zarr-id", str(uuid.uuid4()), "--json"))
    again = run("upload", str(src), "--zarr-id", str(uuid.uuid4()), "--dandiset", "000009")
    assert "already holds this content" in again and first["zarr_id"] in again
    forced = json.loads(run("upload", str(src), "--zarr-id", str(uuid.uuid4()), "--no-dedup", "--json"))
    assert not forced["reused"] and forced["files_written"] == forced["file_count"]

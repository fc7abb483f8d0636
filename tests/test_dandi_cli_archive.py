"""The real dandi-cli against the real dandi-archive, patched, served on 127.0.0.1 by
``scripts/test-archive.sh``, two ways: the released dandi-cli through ``dandi-icechunk dandi``,
and dandi-cli with ``integrations/dandi-cli/dandi-cli.patch`` applied, run as plain ``dandi``.
Upload: NWB files as today, each Zarr asset one Icechunk commit through begin-upload, finalize
and the checksum comparison; a re-upload after a change commits on top; ``--zarr-mode patch``
keeps what is gone locally; a bad API key changes nothing. Download: each version's own
snapshot, verified by dandi-cli's checksum; ``dandi digest`` agrees with the archive."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from dandi_icechunk.read import open_dataset
from dandi_icechunk.reference import SnapshotReference
from dandi_icechunk.testing import free_port, make_ome_zarr_v2
from dandi_icechunk.testing.served_archive import ServedArchive

ARCHIVE = os.environ.get("DANDI_ICECHUNK_TEST_ARCHIVE")
pytestmark = pytest.mark.skipif(
    not ARCHIVE, reason="needs the archive served by scripts/test-archive.sh (DANDI_ICECHUNK_TEST_ARCHIVE)"
)
ZARR = "sub-1/sub-1_sample.ome.zarr"


@pytest.fixture(scope="module")
def archive() -> ServedArchive:
    assert ARCHIVE
    return ServedArchive.load(ARCHIVE)


ROUTES = ["released", "patched"]


@pytest.fixture(scope="module")
def patched_dandi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed dandi-cli with the project's patch applied, as a directory for PYTHONPATH."""
    import dandi

    root = tmp_path_factory.mktemp("dandi-cli")
    shutil.copytree(Path(dandi.__file__).parent, root / "dandi", ignore=shutil.ignore_patterns("__pycache__"))
    patch = Path(__file__).parents[1] / "integrations" / "dandi-cli" / "dandi-cli.patch"
    applied = subprocess.run(["git", "apply", str(patch)], cwd=root, capture_output=True, text=True, check=False)
    assert applied.returncode == 0, f"the dandi-cli patch does not apply to dandi {dandi.__version__}: {applied.stderr}"
    return root


def _dandi(archive: ServedArchive, route: str, patched: Path, cwd: Path, *args: str,
           api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    """``dandi ARGS`` as a lab runs it, with the API key in the instance's variable: through
    ``dandi-icechunk dandi`` ("released"), the patched dandi-cli ("patched"), or dandi-cli alone
    ("plain", today's presigned route)."""
    env = archive.env(api_key)
    if route == "released":
        command = [str(Path(sys.executable).with_name("dandi-icechunk")), "dandi", *args]
    elif route == "patched":
        command = [sys.executable, "-c", "from dandi.cli.command import main; main()", *args]
        env["PYTHONPATH"] = os.pathsep.join([str(patched), env.get("PYTHONPATH", "")])
    else:
        command = [str(Path(sys.executable).with_name("dandi")), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def _upload(archive: ServedArchive, route: str, patched: Path, dandiset_dir: Path, *args: str,
            api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    return _dandi(archive, route, patched, dandiset_dir, "upload", "-i", archive.api_url, "--validation", "skip",
                  *args, api_key=api_key)


def _nwb(path: Path) -> None:
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject

    path.parent.mkdir(parents=True, exist_ok=True)
    nwbfile = NWBFile(
        session_description="test", identifier="sub-1-session", session_start_time=datetime(2026, 1, 1, tzinfo=UTC),
        subject=Subject(subject_id="1", species="Mus musculus", sex="F", age="P30D"),
    )
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)


@pytest.fixture
def dandiset_dir(archive: ServedArchive, tmp_path: Path) -> Path:
    return archive.new_dandiset(tmp_path)


def _assets(archive: ServedArchive, dandiset: str) -> dict[str, dict[str, Any]]:
    listed = archive.call("GET", f"dandisets/{dandiset}/versions/draft/assets/")["results"]
    return {a["path"]: archive.call("GET", f"dandisets/{dandiset}/versions/draft/assets/{a['asset_id']}/")
            for a in listed}


@pytest.mark.parametrize("route", ROUTES)
def test_dandi_upload_of_a_dandiset_commits_each_zarr_to_icechunk_and_nwb_as_today(
    archive: ServedArchive, dandiset_dir: Path, route: str, patched_dandi: Path
) -> None:
    dandiset = dandiset_dir.name
    _nwb(dandiset_dir / "sub-1" / "sub-1_ecephys.nwb")
    source = make_ome_zarr_v2(dandiset_dir / ZARR)
    done = _upload(archive, route, patched_dandi, dandiset_dir)
    assert done.returncode == 0, done.stderr[-2000:]

    assets = _assets(archive, dandiset)
    assert set(assets) == {"sub-1/sub-1_ecephys.nwb", ZARR}
    assert "dandi:dandi-etag" in assets["sub-1/sub-1_ecephys.nwb"]["digest"]  # a blob, as today
    zarr_asset = assets[ZARR]
    ref = SnapshotReference.from_asset(zarr_asset)
    state = archive.call("GET", f"zarr/{ref.zarr_id}/icechunk/")
    assert (state["icechunk"], state["status"]) == (True, "Complete")
    assert state["drafts"][0]["snapshot_id"] == ref.snapshot_id
    assert zarr_asset["digest"]["dandi:dandi-zarr-checksum"] == state["drafts"][0]["checksum"]
    level0 = np.asarray(zarr.open_array(str(source / "0"), mode="r")[:])
    np.testing.assert_array_equal(open_dataset(zarr_asset, group="0", anonymous=True)["image"].values, level0)

    # a change, uploaded again: one more commit on top of the first, read back
    zarr.open_array(str(source / "0"), mode="r+")[0, 0:4, 0:4] = 5
    again = _upload(archive, route, patched_dandi, dandiset_dir, "--existing", "refresh")
    assert again.returncode == 0, again.stderr[-2000:]
    changed = SnapshotReference.from_asset(_assets(archive, dandiset)[ZARR])
    assert changed.zarr_id == ref.zarr_id and changed.snapshot_id != ref.snapshot_id
    np.testing.assert_array_equal(
        open_dataset(_assets(archive, dandiset)[ZARR], group="0", anonymous=True)["image"].values,
        np.asarray(zarr.open_array(str(source / "0"), mode="r")[:]),
    )


def test_a_bad_api_key_is_one_error_and_changes_nothing(
    archive: ServedArchive, dandiset_dir: Path, patched_dandi: Path
) -> None:
    make_ome_zarr_v2(dandiset_dir / ZARR)
    refused = _upload(archive, "released", patched_dandi, dandiset_dir, api_key="0" * 40)
    assert refused.returncode != 0
    assert "401" in refused.stderr or "Invalid token" in refused.stderr or "API key" in refused.stderr
    assert archive.call("GET", "zarr/", params={"dandiset": dandiset_dir.name})["count"] == 0


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _publish(archive: ServedArchive, dandiset: str) -> str:
    """Publish the draft once the archive's validation passed it and each of its assets (an asset
    changed by a migration is validated again after the version may already say Valid); the new
    version's name."""
    deadline = time.monotonic() + 120
    while ((info := archive.call("GET", f"dandisets/{dandiset}/versions/draft/info/"))["status"] != "Valid"
           or info["asset_validation_errors"]):
        assert time.monotonic() < deadline, f"the draft did not validate: {info.get('version_validation_errors')} {info.get('asset_validation_errors')}"
        time.sleep(1)
    archive.call("POST", f"dandisets/{dandiset}/versions/draft/publish/")
    while True:
        versions = [v["version"] for v in archive.call("GET", f"dandisets/{dandiset}/versions/")["results"]]
        if len(versions) > 1:
            return next(v for v in versions if v != "draft")
        assert time.monotonic() < deadline, "the publish did not finish"
        time.sleep(1)


@pytest.mark.parametrize("route", ROUTES)
def test_dandi_download_gets_each_versions_own_snapshot_verified_and_digest_agrees(
    archive: ServedArchive, dandiset_dir: Path, route: str, patched_dandi: Path, tmp_path: Path
) -> None:
    dandiset = dandiset_dir.name
    source = make_ome_zarr_v2(dandiset_dir / ZARR)
    assert _upload(archive, route, patched_dandi, dandiset_dir).returncode == 0
    v1_files = _tree(source)
    version = _publish(archive, dandiset)
    zarr.open_array(str(source / "0"), mode="r+")[0, 0:4, 0:4] = 9  # the draft moves on
    again = _upload(archive, route, patched_dandi, dandiset_dir, "--existing", "refresh")
    assert again.returncode == 0, again.stderr[-2000:]
    draft_files = _tree(source)
    assert draft_files != v1_files

    api = archive.api_url
    for name, files in ((version, v1_files), ("draft", draft_files)):
        out = tmp_path / name
        out.mkdir()
        got = _dandi(archive, route, patched_dandi, out, "download", "-i", api, "--download", "assets",
                     f"{api}/dandisets/{dandiset}/versions/{name}/")
        assert got.returncode == 0, got.stderr[-3000:]
        assert "differs" not in got.stdout + got.stderr  # dandi-cli checked each file and the Zarr checksum
        assert _tree(out / dandiset / ZARR if (out / dandiset).exists() else out / ZARR) == files, name

    # --zarr filters: only level 0's own files (a glob's * stops at /)
    partial = tmp_path / "partial"
    partial.mkdir()
    got = _dandi(archive, route, patched_dandi, partial, "download", "-i", api, "--download", "assets",
                 "--zarr", "glob:0/*", f"{api}/dandisets/{dandiset}/versions/{version}/")
    assert got.returncode == 0, got.stderr[-3000:]
    downloaded = _tree(partial / dandiset / ZARR if (partial / dandiset).exists() else partial / ZARR)
    assert downloaded and downloaded == {k: v for k, v in v1_files.items() if k.startswith("0/") and k.count("/") == 1}

    # dandi ls shows the published Zarr asset with its published checksum
    listed = _dandi(archive, route, patched_dandi, tmp_path, "ls", "-f", "json", "-r",
                    f"{api}/dandisets/{dandiset}/versions/{version}/")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert ZARR in listed.stdout
    # dandi digest of the local Zarr is what the archive recorded for the draft
    digest = _dandi(archive, route, patched_dandi, dandiset_dir, "digest", "-d", "zarr-checksum", ZARR)
    assert digest.returncode == 0, digest.stderr[-2000:]
    recorded = _assets(archive, dandiset)[ZARR]["digest"]["dandi:dandi-zarr-checksum"]
    assert recorded in digest.stdout


def test_zarr_mode_patch_keeps_what_is_gone_locally(
    archive: ServedArchive, dandiset_dir: Path, patched_dandi: Path
) -> None:
    source = make_ome_zarr_v2(dandiset_dir / ZARR)
    assert _upload(archive, "released", patched_dandi, dandiset_dir).returncode == 0
    full = _tree(source)
    shutil.rmtree(source / "1")  # level 1 removed locally to save space; level 0 edited
    zarr.open_array(str(source / "0"), mode="r+")[0, 0:4, 0:4] = 2
    expected = {**full, **_tree(source)}
    done = _upload(archive, "released", patched_dandi, dandiset_dir, "--existing", "refresh", "--zarr-mode", "patch")
    assert done.returncode == 0, done.stderr[-2000:]
    asset = _assets(archive, dandiset_dir.name)[ZARR]
    out = open_dataset(asset, group="1", anonymous=True)  # level 1 is still there
    assert out["image"].size > 0
    from dandi.support.digests import get_zarr_checksum

    rebuilt = dandiset_dir.parent / "expected.zarr"
    for key, data in expected.items():
        (rebuilt / key).parent.mkdir(parents=True, exist_ok=True)
        (rebuilt / key).write_bytes(data)
    assert asset["digest"]["dandi:dandi-zarr-checksum"] == get_zarr_checksum(rebuilt)


def test_a_plain_zarr_stays_plain_and_uploads_as_before(
    archive: ServedArchive, dandiset_dir: Path, patched_dandi: Path
) -> None:
    """A Zarr first uploaded by dandi-cli alone (presigned PUTs) keeps that route."""
    source = make_ome_zarr_v2(dandiset_dir / ZARR)
    first = _upload(archive, "plain", patched_dandi, dandiset_dir)
    assert first.returncode == 0, first.stderr[-2000:]
    zarr.open_array(str(source / "0"), mode="r+")[0, 0:4, 0:4] = 6
    again = _upload(archive, "released", patched_dandi, dandiset_dir, "--existing", "refresh")
    assert again.returncode == 0, again.stderr[-2000:]
    asset = _assets(archive, dandiset_dir.name)[ZARR]
    state = archive.call("GET", f"zarr/{_zarr_id(archive, dandiset_dir.name)}/icechunk/")
    assert (state["icechunk"], state["status"]) == (False, "Complete")
    from dandi.support.digests import get_zarr_checksum

    assert asset["digest"]["dandi:dandi-zarr-checksum"] == get_zarr_checksum(source)


def _zarr_id(archive: ServedArchive, dandiset: str) -> str:
    [found] = archive.call("GET", "zarr/", params={"dandiset": dandiset})["results"]
    return str(found["zarr_id"])


@pytest.mark.parametrize(("case", "said"), [("wrong instance", "Could not retrieve server info"),
                                           ("not an owner", "403")])
def test_bad_uploads_end_in_one_clear_error_and_create_nothing(
    archive: ServedArchive, dandiset_dir: Path, patched_dandi: Path, case: str, said: str
) -> None:
    make_ome_zarr_v2(dandiset_dir / ZARR)
    if case == "wrong instance":
        dead = f"http://127.0.0.1:{free_port()}/api"
        refused = _dandi(archive, "released", patched_dandi, dandiset_dir, "upload", "-i", dead, "--validation", "skip")
    else:
        refused = _upload(archive, "released", patched_dandi, dandiset_dir, api_key=archive.other_api_key)
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:") and said in last, refused.stderr[-2000:]
    assert archive.call("GET", "zarr/", params={"dandiset": dandiset_dir.name})["count"] == 0


def test_a_zarr_uploaded_by_plain_dandi_cli_migrates_in_place_then_publishes_and_downloads(
    archive: ServedArchive, dandiset_dir: Path, patched_dandi: Path, tmp_path: Path
) -> None:
    """The legacy route end to end: dandi-cli's own presigned upload, the archive's migration
    (no byte copied), publish, and dandi download of the published version."""
    source = make_ome_zarr_v2(dandiset_dir / ZARR)
    uploaded = _upload(archive, "plain", patched_dandi, dandiset_dir)
    assert uploaded.returncode == 0, uploaded.stderr[-2000:]
    zarr_id = _zarr_id(archive, dandiset_dir.name)
    migrated = archive.call("POST", f"zarr/{zarr_id}/icechunk/migrate/")
    from dandi.support.digests import get_zarr_checksum

    assert migrated["checksum"] == get_zarr_checksum(source)
    assert archive.call("GET", f"zarr/{zarr_id}/icechunk/")["icechunk"] is True
    version = _publish(archive, dandiset_dir.name)
    out = tmp_path / "download"
    out.mkdir()
    got = _dandi(archive, "patched", patched_dandi, out, "download", "-i", archive.api_url, "--download", "assets",
                 f"{archive.api_url}/dandisets/{dandiset_dir.name}/versions/{version}/")
    assert got.returncode == 0, got.stderr[-3000:]
    assert _tree(out / dandiset_dir.name / ZARR if (out / dandiset_dir.name).exists() else out / ZARR) == _tree(source)


def test_an_upload_interrupted_after_begin_runs_again_to_completion(
    archive: ServedArchive, dandiset_dir: Path, patched_dandi: Path
) -> None:
    """What a killed `dandi upload` leaves: a Zarr made, its upload begun (Pending), part of the
    chunks written but not committed, no asset. Running the same command again finishes."""
    from dandi_icechunk.upload.archive import begin_archive_upload

    source = make_ome_zarr_v2(dandiset_dir / ZARR)
    zarr_id = archive.call("POST", "zarr/", json={"name": ZARR, "dandiset": dandiset_dir.name})["zarr_id"]
    begun = begin_archive_upload(archive.api_url, zarr_id, api_key=archive.api_key)
    assert archive.call("GET", f"zarr/{zarr_id}/icechunk/")["status"] == "Pending"
    from dandi_icechunk.session import ZarrRepository

    repo = ZarrRepository.open(begun.location, zarr_id, create=True)  # a session written to, never committed
    session = repo.writable_session(begun.branch)
    zarr.open_group(session.store, mode="w")
    done = _upload(archive, "released", patched_dandi, dandiset_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    asset = _assets(archive, dandiset_dir.name)[ZARR]
    assert SnapshotReference.from_asset(asset).zarr_id == zarr_id
    assert archive.call("GET", f"zarr/{zarr_id}/icechunk/")["status"] == "Complete"
    np.testing.assert_array_equal(open_dataset(asset, group="0", anonymous=True)["image"].values,
                                  np.asarray(zarr.open_array(str(source / "0"), mode="r")[:]))

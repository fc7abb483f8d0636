"""The real dandi-cli (``dandi upload``, through ``dandi-icechunk dandi-upload``) against the
real dandi-archive, patched, served on 127.0.0.1 by ``scripts/test-archive.sh``: NWB files as
today, each Zarr asset one Icechunk commit through begin-upload, finalize and the checksum
comparison; a re-upload after a change commits on top; a bad API key changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import zarr

from dandi_icechunk.read import open_dataset
from dandi_icechunk.reference import SnapshotReference
from dandi_icechunk.testing import make_ome_zarr_v2

ARCHIVE = os.environ.get("DANDI_ICECHUNK_TEST_ARCHIVE")
pytestmark = pytest.mark.skipif(
    not ARCHIVE, reason="needs the archive served by scripts/test-archive.sh (DANDI_ICECHUNK_TEST_ARCHIVE)"
)
ZARR = "sub-1/sub-1_sample.ome.zarr"


@pytest.fixture(scope="module")
def archive() -> dict[str, str]:
    assert ARCHIVE
    return json.loads(Path(ARCHIVE).read_text())


def _call(archive: dict[str, str], method: str, path: str, **kwargs: Any) -> Any:
    response = requests.request(method, f"{archive['api_url']}/{path}", timeout=60,
                                headers={"Authorization": f"token {archive['api_key']}"}, **kwargs)
    response.raise_for_status()
    return response.json()


def _dandi_upload(archive: dict[str, str], dandiset_dir: Path, *args: str, api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    from dandi.utils import get_instance

    variable = get_instance(archive["api_url"]).name.upper().replace("-", "_") + "_API_KEY"
    env = {**os.environ, variable: api_key or archive["api_key"]}
    command = [str(Path(sys.executable).with_name("dandi-icechunk")), "dandi-upload", "-i", archive["api_url"],
               "--validation", "skip", *args]
    return subprocess.run(command, cwd=dandiset_dir, env=env, capture_output=True, text=True, timeout=600)


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
def dandiset_dir(archive: dict[str, str], tmp_path: Path) -> Path:
    """A new Dandiset in the archive and its local directory, as `dandi download` lays it out."""
    created = _call(archive, "POST", "dandisets/", json={"name": "Icechunk upload", "metadata": {
        "name": "Icechunk upload", "description": "dandi-cli against the archive"}})
    root = tmp_path / created["identifier"]
    root.mkdir()
    (root / "dandiset.yaml").write_text(f"identifier: DANDI:{created['identifier']}\n")
    return root


def _assets(archive: dict[str, str], dandiset: str) -> dict[str, dict[str, Any]]:
    listed = _call(archive, "GET", f"dandisets/{dandiset}/versions/draft/assets/")["results"]
    return {a["path"]: _call(archive, "GET", f"dandisets/{dandiset}/versions/draft/assets/{a['asset_id']}/")
            for a in listed}


def test_dandi_upload_of_a_dandiset_commits_each_zarr_to_icechunk_and_nwb_as_today(
    archive: dict[str, str], dandiset_dir: Path
) -> None:
    dandiset = dandiset_dir.name
    _nwb(dandiset_dir / "sub-1" / "sub-1_ecephys.nwb")
    source = make_ome_zarr_v2(dandiset_dir / ZARR)
    done = _dandi_upload(archive, dandiset_dir)
    assert done.returncode == 0, done.stderr[-2000:]

    assets = _assets(archive, dandiset)
    assert set(assets) == {"sub-1/sub-1_ecephys.nwb", ZARR}
    assert "dandi:dandi-etag" in assets["sub-1/sub-1_ecephys.nwb"]["digest"]  # a blob, as today
    zarr_asset = assets[ZARR]
    ref = SnapshotReference.from_asset(zarr_asset)
    state = _call(archive, "GET", f"zarr/{ref.zarr_id}/icechunk/")
    assert (state["icechunk"], state["status"]) == (True, "Complete")
    assert state["drafts"][0]["snapshot_id"] == ref.snapshot_id
    assert zarr_asset["digest"]["dandi:dandi-zarr-checksum"] == state["drafts"][0]["checksum"]
    level0 = np.asarray(zarr.open_array(str(source / "0"), mode="r")[:])
    np.testing.assert_array_equal(open_dataset(zarr_asset, group="0", anonymous=True)["image"].values, level0)

    # a change, uploaded again: one more commit on top of the first, read back
    zarr.open_array(str(source / "0"), mode="r+")[0, 0:4, 0:4] = 5
    again = _dandi_upload(archive, dandiset_dir, "--existing", "refresh")
    assert again.returncode == 0, again.stderr[-2000:]
    changed = SnapshotReference.from_asset(_assets(archive, dandiset)[ZARR])
    assert changed.zarr_id == ref.zarr_id and changed.snapshot_id != ref.snapshot_id
    np.testing.assert_array_equal(
        open_dataset(_assets(archive, dandiset)[ZARR], group="0", anonymous=True)["image"].values,
        np.asarray(zarr.open_array(str(source / "0"), mode="r")[:]),
    )


def test_a_bad_api_key_is_one_error_and_changes_nothing(archive: dict[str, str], dandiset_dir: Path) -> None:
    make_ome_zarr_v2(dandiset_dir / ZARR)
    refused = _dandi_upload(archive, dandiset_dir, api_key="0" * 40)
    assert refused.returncode != 0
    assert "401" in refused.stderr or "Invalid token" in refused.stderr or "API key" in refused.stderr
    assert _call(archive, "GET", "zarr/", params={"dandiset": dandiset_dir.name})["count"] == 0

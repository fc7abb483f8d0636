"""Uploads of more chunks than one session holds: batches on a scratch branch, one snapshot on
the upload's branch, nothing on it after a failure or a concurrent upload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from dandi_icechunk.errors import ConflictError
from dandi_icechunk.hierarchy import Hierarchy
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.snapshot_files import verify_snapshot
from dandi_icechunk.testing import make_ome_zarr_v2, make_zarr_v3
from dandi_icechunk.upload import staged as staging
from dandi_icechunk.upload import upload_zarr
from dandi_icechunk.upload.staged import StagedUpload

from .conftest import InterruptAfter, reference_checksum, tree_bytes

BATCH = 7


def _chunk_files(src: Path) -> int:
    return sum(1 for p in src.rglob("*") if p.is_file() and not p.name.startswith(".z") and p.name != "zarr.json")


@pytest.fixture
def staged_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Uploads stage every :data:`BATCH` chunks; the list counts the batches staged."""
    staged: list[int] = []
    stage = StagedUpload.stage

    def counted(self: StagedUpload) -> None:
        staged.append(1)
        stage(self)

    monkeypatch.setattr(staging, "STAGE_CHUNKS", BATCH)
    monkeypatch.setattr(StagedUpload, "stage", counted)
    return staged


@pytest.mark.parametrize("dedup", [True, False], ids=["hashed first", "hashed as sent"])
def test_an_upload_written_in_staged_batches_is_one_snapshot_on_its_branch(
    location: StorageLocation, zarr_id: str, tmp_path: Path, staged_batches: list[int], dedup: bool
) -> None:
    src = make_ome_zarr_v2(tmp_path / "a.ome.zarr", chunks=(4, 16, 16))
    first = upload_zarr(src, location, zarr_id, dedup=dedup)
    assert len(staged_batches) == -(-_chunk_files(src) // BATCH) - 1  # all staged but the last, published
    repo = ZarrRepository.open(location, zarr_id)
    assert [s.snapshot_id for s in repo.history()][:2] == [first.snapshot_id, first.parent_snapshot_id]
    assert len(repo.history()) == 2 and repo.icechunk.list_branches() == {"main"}
    assert first.zarr_checksum == reference_checksum(src)
    exported = export_snapshot(repo, tmp_path / "out.zarr")
    assert tree_bytes(Path(exported.destination)) == tree_bytes(src)
    assert verify_snapshot(repo).ok

    staged_batches.clear()
    zarr.open_group(str(src), mode="r+")["0"][:] = 9  # a change of 64 chunks
    second = upload_zarr(src, location, zarr_id, dedup=dedup)
    assert len(staged_batches) == 64 // BATCH and second.parent_snapshot_id == first.snapshot_id
    repo = ZarrRepository.open(location, zarr_id)
    assert len(repo.history()) == 3 and repo.icechunk.list_branches() == {"main"}
    assert tree_bytes(Path(export_snapshot(repo, tmp_path / "out2.zarr").destination)) == tree_bytes(src)


def test_a_staged_upload_whose_branch_moved_commits_nothing_and_the_rerun_carries_on(
    location: StorageLocation, zarr_id: str, tmp_path: Path, staged_batches: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = make_zarr_v3(tmp_path / "ours.zarr", seed=1), make_zarr_v3(tmp_path / "theirs.zarr", seed=2)
    base = upload_zarr(make_zarr_v3(tmp_path / "base.zarr", seed=0), location, zarr_id)
    stage = StagedUpload.stage
    other = {}

    def racing(self: StagedUpload) -> None:
        if not other:  # another (small) upload lands while this one stages its first batch
            other["result"] = None
            monkeypatch.setattr(staging, "STAGE_CHUNKS", 10**6)
            other["result"] = upload_zarr(theirs, location, zarr_id, digest_cache=None)
            monkeypatch.setattr(staging, "STAGE_CHUNKS", BATCH)
        stage(self)

    monkeypatch.setattr(StagedUpload, "stage", racing)
    with pytest.raises(ConflictError, match="while this one ran; nothing was committed"):
        upload_zarr(ours, location, zarr_id, digest_cache=None)
    repo = ZarrRepository.open(location, zarr_id)
    assert repo.resolve() == other["result"].snapshot_id
    assert other["result"].parent_snapshot_id == base.snapshot_id
    assert repo.icechunk.list_branches() == {"main"}

    monkeypatch.setattr(StagedUpload, "stage", stage)
    done = upload_zarr(ours, location, zarr_id, digest_cache=None)
    assert done.parent_snapshot_id == other["result"].snapshot_id
    assert done.zarr_checksum == reference_checksum(ours)


def test_an_interrupted_staged_upload_leaves_the_branch_and_no_scratch_branch(
    location: StorageLocation, zarr_id: str, tmp_path: Path, staged_batches: list[int]
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr", chunks=(4, 16, 16))  # 64 chunks
    first = upload_zarr(src, location, zarr_id)
    zarr.open_group(str(src), mode="r+")["data"][:] = 5
    staged_batches.clear()
    with pytest.raises(KeyboardInterrupt):
        upload_zarr(src, location, zarr_id, progress=InterruptAfter(3 * BATCH + 2), jobs=2)
    assert len(staged_batches) == 3  # interrupted in the fourth batch
    repo = ZarrRepository.open(location, zarr_id)
    assert repo.resolve() == first.snapshot_id and repo.icechunk.list_branches() == {"main"}

    done = upload_zarr(src, location, zarr_id)
    assert done.parent_snapshot_id == first.snapshot_id and done.zarr_checksum == reference_checksum(src)
    assert verify_snapshot(ZarrRepository.open(location, zarr_id)).ok


@pytest.mark.parametrize("make", [make_ome_zarr_v2, make_zarr_v3], ids=["v2", "v3"])
def test_staged_batches_follow_the_grid_in_c_order(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make(tmp_path / "a.zarr", shape=(16, 64, 64), chunks=(2, 16, 16))
    hierarchy = Hierarchy.from_documents(
        {str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*") if p.name in (".zarray", ".zattrs", ".zgroup", "zarr.json")}
    )
    keys = [str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() and hierarchy.icechunk_key(str(p.relative_to(src)))]
    ordered = hierarchy.in_grid_order(np.random.default_rng(0).permutation(keys).tolist())
    for path in {hierarchy.array_of(k).path for k in keys}:  # type: ignore[union-attr]
        grid = hierarchy.nodes[path].grid
        assert grid is not None
        coords = [tuple(int(c) for c in hierarchy.icechunk_key(k).rsplit("/c/", 1)[-1].split("/"))  # type: ignore[union-attr]
                  for k in ordered if hierarchy.array_of(k).path == path]  # type: ignore[union-attr]
        assert coords == sorted(coords) and len(coords) == len(set(coords)) > 1

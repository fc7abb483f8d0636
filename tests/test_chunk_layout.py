"""How an upload lays chunks out in Icechunk: tiny chunks inside their manifest splits, with no
object of their own, read back exactly by every route; larger chunks and big grids as before."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from dandi_icechunk.chunk_layout import (
    ICECHUNK_INLINE_MAX,
    INLINE_MAX,
    inline_chunk_max,
    split_bytes,
)
from dandi_icechunk.hierarchy import Hierarchy
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.snapshot_files import READ_CHUNK_REFS, SnapshotFiles, verify_snapshot
from dandi_icechunk.upload import staged as staging
from dandi_icechunk.upload import upload_zarr
from dandi_icechunk.upload.staged import batch_ends

from .conftest import chunk_objects, reference_checksum, tiny_chunk_zarr, tree_bytes


def _array_document(shape: int, chunk: int) -> bytes:
    return json.dumps({"zarr_format": 2, "shape": [shape], "chunks": [chunk], "dtype": "|u1",
                       "compressor": None, "fill_value": 0, "order": "C", "filters": None}).encode()


def _hierarchy(**arrays: tuple[int, int]) -> Hierarchy:
    """A Zarr v2 group with one uint8 array per name: (number of chunks, chunk bytes)."""
    documents = {".zgroup": b'{"zarr_format": 2}'}
    for name, (chunks, size) in arrays.items():
        documents[f"{name}/.zarray"] = _array_document(chunks * size, size)
    return Hierarchy.from_documents(documents)


def test_tiny_chunk_arrays_inline_up_to_4_kib_and_a_big_grid_keeps_icechunks_default() -> None:
    assert inline_chunk_max(_hierarchy(tiny=(1_500, 1024))) == INLINE_MAX  # 1,000 refs a split: 4 MiB at most
    assert inline_chunk_max(_hierarchy(few=(40, 64 * 1024))) == INLINE_MAX  # one small manifest
    assert inline_chunk_max(Hierarchy.from_documents({".zgroup": b'{"zarr_format": 2}'})) == INLINE_MAX
    # 10,000 refs a split: 4 MiB of inline chunks would be 419 bytes each, below Icechunk's own 512
    assert inline_chunk_max(_hierarchy(tiny=(1_500, 1024), big=(20_000, 64 * 1024))) == ICECHUNK_INLINE_MAX
    middle = inline_chunk_max(_hierarchy(mid=(5_000, 16 * 1024)))  # 2,500 refs a split
    assert middle == 4 * 1024 * 1024 // 2_500 and ICECHUNK_INLINE_MAX < middle < INLINE_MAX


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_tiny_chunks_are_stored_in_their_manifests_and_read_back_exactly_by_every_route(
    location: StorageLocation, zarr_id: str, tmp_path: Path, zarr_format: int
) -> None:
    src = tiny_chunk_zarr(tmp_path / "tiny.zarr", 1_500, zarr_format=zarr_format)
    first = upload_zarr(src, location, zarr_id, dedup=False)
    assert first.files_written == 1_500 + (1 if zarr_format == 3 else 2)
    assert len(chunk_objects(location, zarr_id)) == 0  # no object per chunk
    repo = ZarrRepository.open(location, zarr_id)
    assert first.zarr_checksum == reference_checksum(src)
    assert verify_snapshot(repo).ok
    assert tree_bytes(Path(export_snapshot(repo, tmp_path / "out.zarr").destination)) == tree_bytes(src)
    files = SnapshotFiles.open(repo, first.snapshot_id)  # what the HTTP view and the archive serve
    key = "0" if zarr_format == 2 else "c/0"
    assert asyncio.run(files.read(key)) == (src / key).read_bytes()
    read = zarr.open_array(repo.readonly_session(snapshot_id=first.snapshot_id).store, mode="r")
    np.testing.assert_array_equal(read[:], zarr.open_array(str(src), mode="r")[:])

    before = zarr.open_array(str(src), mode="r")[:]
    zarr.open_array(str(src), mode="r+")[:1024] = 7  # one chunk changes
    second = upload_zarr(src, location, zarr_id, dedup=False)
    assert second.files_written == 1 and len(chunk_objects(location, zarr_id)) == 0
    repo = ZarrRepository.open(location, zarr_id)
    old = zarr.open_array(repo.readonly_session(snapshot_id=first.snapshot_id).store, mode="r")
    np.testing.assert_array_equal(old[:], before)  # the earlier snapshot keeps its bytes
    assert verify_snapshot(repo, snapshot_id=second.snapshot_id).ok


def test_chunks_over_the_inline_limit_still_get_objects_of_their_own(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = tiny_chunk_zarr(tmp_path / "small.zarr", 40, chunk=INLINE_MAX + 1)
    upload_zarr(src, location, zarr_id, dedup=False)
    assert len(chunk_objects(location, zarr_id)) == 40


def test_batches_end_at_the_chunk_count_or_the_bytes_held_whichever_comes_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(staging, "STAGE_CHUNKS", 4)
    monkeypatch.setattr(staging, "STAGE_INLINE_BYTES", 3000)
    assert batch_ends(np.array([1000] * 7)) == [3, 6, 7]  # bytes held bound the batch
    assert batch_ends(np.array([0] * 7)) == [4, 7]  # chunk objects count against STAGE_CHUNKS only
    assert batch_ends(np.array([1000, 1000, 0, 1000, 0, 1000])) == [4, 6]
    assert batch_ends(np.array([5000, 10])) == [1, 2]  # more than a batch holds: a batch alone
    assert batch_ends(np.array([], dtype=np.int64)) == [0]  # one batch: it writes the nodes


def test_each_split_written_counts_once_at_its_first_chunk() -> None:
    tiny = _hierarchy(tiny=(1_500, 1024))  # splits of 1,000 chunks
    keys = ["tiny/0", "tiny/1", "tiny/999", "tiny/1000", "tiny/1499"]
    split = 1_000 * 1024
    assert split_bytes(tiny, keys, inline_max=INLINE_MAX).tolist() == [split, 0, 0, split, 0]
    big = _hierarchy(big=(20_000, 64 * 1024))  # chunks of 64 KiB are not kept inline
    assert split_bytes(big, ["big/0", "big/15000"], inline_max=ICECHUNK_INLINE_MAX).tolist() == [0, 0]


def test_a_scattered_update_of_inline_chunks_is_staged_by_the_splits_it_rewrites(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tiny_chunk_zarr(tmp_path / "tiny.zarr", 3_000)  # three splits of 1,000 chunks
    first = upload_zarr(src, location, zarr_id, dedup=False)
    stages: list[int] = []
    stage = staging.StagedUpload.stage
    monkeypatch.setattr(staging, "STAGE_INLINE_BYTES", 1_500 * 1024)  # one split's rewrite a batch
    monkeypatch.setattr(staging.StagedUpload, "stage", lambda self: (stages.append(1), stage(self)))
    array = zarr.open_array(str(src), mode="r+")
    for chunk in (10, 1_010, 2_010):  # one chunk in each split
        array[chunk * 1024 : (chunk + 1) * 1024] = 1
    second = upload_zarr(src, location, zarr_id, dedup=False)
    assert second.files_written == 3 and len(stages) == 2  # three batches, one snapshot
    repo = ZarrRepository.open(location, zarr_id)
    assert [s.snapshot_id for s in repo.history()][:2] == [second.snapshot_id, first.snapshot_id]
    assert second.zarr_checksum == reference_checksum(src) and verify_snapshot(repo).ok
    assert tree_bytes(Path(export_snapshot(repo, tmp_path / "out.zarr").destination)) == tree_bytes(src)


def test_an_upload_of_more_inline_bytes_than_a_batch_holds_is_staged_into_one_snapshot(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages: list[int] = []
    stage = staging.StagedUpload.stage
    monkeypatch.setattr(staging, "STAGE_INLINE_BYTES", 1_500 * 1024)  # one split a batch
    monkeypatch.setattr(staging.StagedUpload, "stage", lambda self: (stages.append(1), stage(self)))
    src = tiny_chunk_zarr(tmp_path / "tiny.zarr", 3_000)  # three splits of 1,000 chunks
    result = upload_zarr(src, location, zarr_id, dedup=False)
    assert len(stages) == 2  # three batches: two staged, the last published
    repo = ZarrRepository.open(location, zarr_id)
    assert len(repo.history()) == 2 and repo.icechunk.list_branches() == {"main"}
    assert result.zarr_checksum == reference_checksum(src) and len(chunk_objects(location, zarr_id)) == 0
    assert tree_bytes(Path(export_snapshot(repo, tmp_path / "out.zarr").destination)) == tree_bytes(src)


def test_every_file_is_read_split_by_split_in_grid_order_with_a_bounded_cache(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = tmp_path / "rows.zarr"
    array = zarr.create_array(str(src), shape=(12, 1024), chunks=(1, 512), dtype="u1", compressors=None, zarr_format=2)
    array[:] = np.random.default_rng(4).integers(0, 256, size=array.shape, dtype="u1")
    sid = upload_zarr(src, location, zarr_id).snapshot_id
    repo = ZarrRepository.open(location, zarr_id)
    files = SnapshotFiles.open(repo, sid, chunk_refs=READ_CHUNK_REFS)
    order = files.in_reading_order(tree_bytes(src))
    chunks = [k for k in order if not k.startswith(".")]
    assert order == sorted(k for k in order if k.startswith(".")) + chunks  # the other files first
    assert chunks == [f"{r}.{c}" for r in range(12) for c in range(2)]  # "2.0" before "10.0"
    assert all(asyncio.run(files.read(k)) == (src / k).read_bytes() for k in chunks)

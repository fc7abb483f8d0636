"""Upload: one commit per upload, only changes travel, lossless v2, readable with plain Icechunk."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given
from hypothesis import strategies as st

from dandi_icechunk.chunk_layout import MANIFEST_MIN_REFS, MANIFEST_TARGET_REFS, manifest_refs
from dandi_icechunk.errors import ConflictError, InvalidZarrError
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.progress import NoProgress
from dandi_icechunk.read.export import export_snapshot
from dandi_icechunk.read.history import diff_snapshots
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.snapshot_files import verify_snapshot
from dandi_icechunk.testing import S3Server, make_ome_zarr_v2, make_zarr_v3
from dandi_icechunk.upload import upload_zarr
from dandi_icechunk.upload.file_stats import FileStats

from .conftest import InterruptAfter, reference_checksum, tree_bytes


def _plain_icechunk_group(location: StorageLocation, zarr_id: str, snapshot_id: str) -> zarr.Group:
    """Open a snapshot with Icechunk and zarr only: no code of ours on the read side."""
    storage = location.icechunk_storage(zarr_id)
    session = icechunk.Repository.open(storage).readonly_session(snapshot_id=snapshot_id)
    return zarr.open_group(session.store, mode="r")


@pytest.mark.parametrize("separator", ["/", "."])
def test_ome_zarr_v2_round_trips_byte_for_byte_and_reads_with_plain_icechunk(
    location: StorageLocation, zarr_id: str, tmp_path: Path, separator: str
) -> None:
    src = make_ome_zarr_v2(tmp_path / "sample.ome.zarr", separator=separator)
    result = upload_zarr(src, location, zarr_id, dandiset="000123", message="first")

    assert result.snapshot_id is not None
    assert result.zarr_checksum == reference_checksum(src)
    assert result.files_written == result.file_count == len(tree_bytes(src))

    group = _plain_icechunk_group(location, zarr_id, result.snapshot_id)
    original = zarr.open_group(str(src), mode="r")
    for level in ("0", "1"):
        np.testing.assert_array_equal(group[level][:], original[level][:])
    assert group.attrs["multiscales"] == original.attrs["multiscales"]

    repo = ZarrRepository.open(location, zarr_id)
    exported = export_snapshot(repo, tmp_path / "back.ome.zarr", snapshot_id=result.snapshot_id)
    assert tree_bytes(Path(exported.destination)) == tree_bytes(src)
    assert verify_snapshot(repo).ok


@pytest.mark.parametrize("shards", [None, (8, 32, 32)], ids=["chunked", "sharded"])
def test_zarr_v3_reads_back_with_plain_icechunk_and_xarray(
    location: StorageLocation, zarr_id: str, tmp_path: Path, shards: tuple[int, ...] | None
) -> None:
    src = make_zarr_v3(tmp_path / "v3.zarr", shape=(16, 64, 64), chunks=(4, 16, 16), shards=shards)
    result = upload_zarr(src, location, zarr_id)
    assert result.zarr_checksum == reference_checksum(src)

    storage = location.icechunk_storage(zarr_id)
    session = icechunk.Repository.open(storage).readonly_session(snapshot_id=result.snapshot_id)
    ds = xr.open_zarr(session.store, consolidated=False)
    expected = zarr.open_group(str(src), mode="r")["data"][:]
    np.testing.assert_array_equal(ds["data"].values, expected)
    assert ds["data"].dims == ("d0", "d1", "d2")

    repo = ZarrRepository.open(location, zarr_id)
    exported = export_snapshot(repo, tmp_path / "back.zarr")
    assert tree_bytes(Path(exported.destination)) == tree_bytes(src)


def test_reupload_writes_only_changed_and_new_files_and_removes_deleted_ones(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr", shape=(16, 64, 64), chunks=(4, 16, 16))
    first = upload_zarr(src, location, zarr_id)
    before = tree_bytes(src)

    # change two chunks, delete one, and change an attribute
    arr = zarr.open_array(str(src / "0"), mode="r+")
    arr[0:4, 0:16, 0:16] = 7
    arr[4:8, 16:32, 0:16] = 9
    os.remove(src / "1" / "3" / "1" / "1")
    attrs = zarr.open_group(str(src), mode="r+").attrs
    attrs["note"] = "edited"
    after = tree_bytes(src)
    changed = {k for k in after if before.get(k) != after[k]}
    assert len(changed) == 3

    second = upload_zarr(src, location, zarr_id, message="edit")
    assert second.parent_snapshot_id == first.snapshot_id
    assert second.files_written == 3
    assert second.files_deleted == 1
    assert second.bytes_written == sum(len(after[k]) for k in changed)
    assert second.zarr_checksum == reference_checksum(src)

    repo = ZarrRepository.open(location, zarr_id)
    diff = diff_snapshots(repo, first.snapshot_id, second.snapshot_id)
    assert set(diff.modified) == changed
    assert diff.removed == ["1/3/1/1"]
    assert diff.added == []

    # the first snapshot still gives back exactly the first upload
    old = export_snapshot(repo, tmp_path / "old.zarr", snapshot_id=first.snapshot_id)
    assert tree_bytes(Path(old.destination)) == before
    new = export_snapshot(repo, tmp_path / "new.zarr")
    assert tree_bytes(Path(new.destination)) == after
    history = repo.history()
    assert [r.snapshot_id for r in history[:2]] == [second.snapshot_id, first.snapshot_id]
    assert history[0].info is not None and history[0].info.zarr_checksum == second.zarr_checksum


def test_patch_mode_keeps_remote_files_missing_locally_and_writes_only_local_changes(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr", shape=(16, 64, 64), chunks=(4, 16, 16))
    upload_zarr(src, location, zarr_id)
    full = tree_bytes(src)
    shutil.rmtree(src / "1")  # a lab keeps only level 0 locally, then edits it
    zarr.open_array(str(src / "0"), mode="r+")[0:4, 0:16, 0:16] = 3
    edited = tree_bytes(src)
    expected = {**full, **edited}

    patched = upload_zarr(src, location, zarr_id, delete_missing=False)
    assert (patched.files_written, patched.files_deleted) == (1, 0)
    assert patched.file_count == len(expected)
    repo = ZarrRepository.open(location, zarr_id)
    out = export_snapshot(repo, tmp_path / "out.zarr")
    assert tree_bytes(Path(out.destination)) == expected
    assert patched.zarr_checksum == reference_checksum(Path(out.destination))
    assert verify_snapshot(repo).ok
    # the level deleted locally still reads through Icechunk
    group = _plain_icechunk_group(location, zarr_id, patched.snapshot_id or "")
    np.testing.assert_array_equal(group["1"][:], zarr.open_array(str(Path(out.destination) / "1"), mode="r")[:])
    # and the default mode then removes it
    assert upload_zarr(src, location, zarr_id).files_deleted == len(full) - len(edited)


def test_upload_with_no_change_makes_no_commit(location: StorageLocation, zarr_id: str, tmp_path: Path) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr")
    first = upload_zarr(src, location, zarr_id)
    again = upload_zarr(src, location, zarr_id)
    assert again.snapshot_id is None
    assert again.files_written == again.files_deleted == again.bytes_written == 0
    assert again.zarr_checksum == first.zarr_checksum
    assert ZarrRepository.open(location, zarr_id).resolve() == first.snapshot_id


def test_deciding_what_changed_reads_no_chunk_back(zarr_id: str, tmp_path: Path) -> None:
    """Delete every chunk object after the first upload: a re-upload must still work, so it
    cannot have read unchanged chunks. (verify then reports the missing chunks.)"""
    location = StorageLocation(kind="file", bucket=str(tmp_path / "bucket"))
    src = make_zarr_v3(tmp_path / "a.zarr", shape=(16, 128, 128), chunks=(4, 32, 32))
    upload_zarr(src, location, zarr_id)
    chunk_dir = Path(location.bucket) / location.repository_prefix(zarr_id) / "chunks"
    assert any(chunk_dir.iterdir())
    shutil.rmtree(chunk_dir)

    zarr.open_group(str(src), mode="r+")["data"][0:4, 0:16, 0:16] = 1
    result = upload_zarr(src, location, zarr_id)
    assert result.files_written == 1
    report = verify_snapshot(ZarrRepository.open(location, zarr_id))
    assert not report.ok
    assert any("missing" in p for p in report.problems)


def test_large_arrays_get_split_manifests_so_a_small_change_rewrites_little(
    zarr_id: str, tmp_path: Path
) -> None:
    location = StorageLocation(kind="file", bucket=str(tmp_path / "bucket"))
    src = tmp_path / "many.zarr"
    grid = (22 * MANIFEST_TARGET_REFS // 1000, 100)
    zarr.create_array(str(src), shape=grid, chunks=(1, 1), dtype="u1", fill_value=0, compressors=None)
    for i in range(grid[0]):  # raw 1-byte chunks, written directly: zarr is slow at 30k chunks
        row = src / "c" / str(i)
        row.mkdir(parents=True)
        for j in range(grid[1]):
            (row / str(j)).write_bytes(bytes([(i + j) % 255 + 1]))
    first = upload_zarr(src, location, zarr_id)
    repo = ZarrRepository.open(location, zarr_id)
    manifests = repo.icechunk.list_manifest_files(first.snapshot_id)
    assert len(manifests) >= 3
    assert max(m.num_chunk_refs for m in manifests) <= MANIFEST_MIN_REFS  # 1-byte chunks: the smallest splits

    (src / "c" / "0" / "0").write_bytes(b"\xfe")
    second = upload_zarr(src, location, zarr_id)
    new_ids = {m.id for m in repo.icechunk.list_manifest_files(second.snapshot_id)} - {m.id for m in manifests}
    assert len(new_ids) == 1  # one manifest rewritten, the others reused


def test_manifest_splits_shrink_with_the_chunk_size_so_a_regional_change_rewrites_little() -> None:
    assert manifest_refs(64 * 1024) == manifest_refs(220_000_000) == MANIFEST_TARGET_REFS
    assert manifest_refs(0) == MANIFEST_TARGET_REFS  # unknown size: as before
    assert manifest_refs(1024) == manifest_refs(1) == MANIFEST_MIN_REFS
    assert MANIFEST_MIN_REFS < manifest_refs(16 * 1024) < MANIFEST_TARGET_REFS


class _CallDuringWrite:
    """A Progress that runs ``action`` once, when the upload starts writing chunks."""

    def __init__(self, action) -> None:  # type: ignore[no-untyped-def]
        self.action = action

    def start(self, label: str, files: int, nbytes: int) -> None:
        if label == "uploading" and self.action is not None:
            action, self.action = self.action, None
            action()

    def advance(self, files: int, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass


def _racing_uploads(location: StorageLocation, zarr_id: str, tmp_path: Path, their_region: tuple[slice, ...]):  # type: ignore[no-untyped-def]
    """Upload a base, then two edited copies: "mine" changes chunk (0, 0, 0); "theirs" changes
    ``their_region``. ``race(other)`` uploads mine and, while mine is writing, theirs (result in
    ``other["r"]``)."""
    base = make_zarr_v3(tmp_path / "base.zarr", chunks=(4, 16, 16))
    upload_zarr(base, location, zarr_id)
    mine, theirs = tmp_path / "mine.zarr", tmp_path / "theirs.zarr"
    shutil.copytree(base, mine)
    shutil.copytree(base, theirs)
    zarr.open_group(str(mine), mode="r+")["data"][0:4, 0:16, 0:16] = 1
    zarr.open_group(str(theirs), mode="r+")["data"][their_region] = 2

    def race(other: dict[str, object]):  # type: ignore[no-untyped-def]
        return upload_zarr(
            mine, location, zarr_id,
            progress=_CallDuringWrite(lambda: other.setdefault("r", upload_zarr(theirs, location, zarr_id))),
        )

    return mine, theirs, race


def test_racing_uploads_touching_different_chunks_both_land(
    s3_location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    mine, theirs, race = _racing_uploads(s3_location, zarr_id, tmp_path, their_region=(slice(12, 16), slice(48, 64), slice(48, 64)))
    other: dict[str, object] = {}
    result = race(other)
    assert result.parent_snapshot_id == other["r"].snapshot_id  # type: ignore[attr-defined]
    repo = ZarrRepository.open(s3_location, zarr_id)
    assert repo.history()[1].snapshot_id == other["r"].snapshot_id  # type: ignore[attr-defined]

    both = tmp_path / "both.zarr"
    shutil.copytree(mine, both)
    shutil.copy(theirs / "data" / "c" / "3" / "3" / "3", both / "data" / "c" / "3" / "3" / "3")
    assert result.zarr_checksum == reference_checksum(both)
    exported = export_snapshot(repo, tmp_path / "merged.zarr")
    assert tree_bytes(Path(exported.destination)) == tree_bytes(both)
    assert verify_snapshot(repo).ok


def test_racing_uploads_touching_the_same_chunk_second_fails_and_commits_nothing(
    s3_location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    _, theirs, race = _racing_uploads(s3_location, zarr_id, tmp_path, their_region=(slice(0, 4), slice(0, 16), slice(0, 16)))
    other: dict[str, object] = {}
    with pytest.raises(ConflictError, match="same"):
        race(other)
    repo = ZarrRepository.open(s3_location, zarr_id)
    assert repo.resolve() == other["r"].snapshot_id  # type: ignore[attr-defined]
    exported = export_snapshot(repo, tmp_path / "tip.zarr")
    assert tree_bytes(Path(exported.destination)) == tree_bytes(theirs)


def test_interrupted_upload_leaves_previous_snapshot_and_rerun_completes(
    location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    src = make_zarr_v3(tmp_path / "a.zarr", chunks=(4, 16, 16))
    first = upload_zarr(src, location, zarr_id)
    zarr.open_group(str(src), mode="r+")["data"][:] = 5
    with pytest.raises(KeyboardInterrupt):
        upload_zarr(src, location, zarr_id, progress=InterruptAfter(10), jobs=2)
    repo = ZarrRepository.open(location, zarr_id)
    assert repo.resolve() == first.snapshot_id
    assert len(repo.history()) == 2

    done = upload_zarr(src, location, zarr_id)
    assert done.parent_snapshot_id == first.snapshot_id
    assert done.zarr_checksum == reference_checksum(src)
    assert verify_snapshot(ZarrRepository.open(location, zarr_id)).ok


def test_digest_cache_hashes_only_files_changed_since_the_last_upload(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dandi_icechunk.upload import local_zarr
    from dandi_icechunk.upload.digest_cache import DigestCache

    cache = DigestCache(tmp_path / "cache")
    src = make_zarr_v3(tmp_path / "a.zarr", chunks=(4, 16, 16))
    upload_zarr(src, location, zarr_id, digest_cache=cache)
    hashed: list[str] = []
    real_hash = local_zarr.hash_file
    monkeypatch.setattr(local_zarr, "hash_file", lambda path, key, size: hashed.append(key) or real_hash(path, key, size))

    noise = np.random.default_rng(7).integers(0, 4096, (4, 16, 16), dtype=np.uint16)
    zarr.open_group(str(src), mode="r+")["data"][0:4, 0:16, 0:16] = noise
    result = upload_zarr(src, location, zarr_id, digest_cache=cache)
    assert hashed == ["data/c/0/0/0"]
    assert result.files_written == 1
    assert result.zarr_checksum == reference_checksum(src)


def test_files_are_hashed_in_threads_only_when_those_to_hash_are_big_not_when_the_zarr_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads pay off for big files only (small reads contend for the GIL): an update of a few
    small files of a Zarr that is big overall hashes them in place."""
    from dandi_icechunk.upload import local_zarr
    from dandi_icechunk.upload.digest_cache import DigestCache

    pools: list[int] = []
    real_pool = local_zarr.ThreadPoolExecutor
    monkeypatch.setattr(local_zarr, "ThreadPoolExecutor", lambda max_workers: pools.append(max_workers) or real_pool(max_workers))
    src = tmp_path / "a.zarr"
    group = zarr.open_group(str(src), mode="w", zarr_format=2)
    big = group.create_array("big", shape=(2, 1 << 18), chunks=(1, 1 << 18), dtype="<u2", compressors=None)
    big[:] = np.random.default_rng(1).integers(0, 65535, big.shape, dtype=np.uint16)  # two 512 KiB chunks
    small = group.create_array("small", shape=(64, 256), chunks=(1, 256), dtype="<u2", compressors=None)
    small[:] = 1  # 64 chunks of 512 B
    cache = DigestCache(tmp_path / "cache")

    def index() -> str:
        return local_zarr.scan_local_zarr(src).digest_index(workers=2, cache=cache).zarr_checksum()

    assert index() == reference_checksum(src)
    assert pools == [2]  # the first time every file is hashed: 16 KiB on average
    small[0:2] = 7
    assert index() == reference_checksum(src)
    assert pools == [2]  # two files of 512 B, in place
    big[0] = 9
    assert index() == reference_checksum(src)
    assert pools == [2, 2]


@given(st.lists(st.integers(0, 3 << 20), max_size=600))
def test_files_to_hash_are_batched_by_count_and_by_bytes(sizes: list[int]) -> None:
    """Every file once, in order; a batch holds at most 256 files and, unless it is one file,
    at most 64 MiB: a Zarr of a few big shards is hashed on every core, not as one batch."""
    from dandi_icechunk.upload import local_zarr

    items = [(str(i), f"/z/{i}", size) for i, size in enumerate(sizes)]
    limit = 4 << 20
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local_zarr, "_HASH_BATCH_BYTES", limit)
        batches = list(local_zarr._batches(iter(items)))
    assert [item for batch in batches for item in batch] == items
    assert all(0 < len(b) <= local_zarr._HASH_BATCH for b in batches)
    assert all(len(b) == 1 or sum(size for *_, size in b) <= limit for b in batches)
    # a batch ends only when the next file would not fit
    assert all(len(a) == local_zarr._HASH_BATCH or sum(size for *_, size in a) + b[0][2] > limit
               for a, b in itertools.pairwise(batches))


def test_a_zarr_of_a_few_big_files_is_hashed_in_several_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dandi_icechunk.upload import local_zarr

    batches: list[int] = []
    real = local_zarr.hash_batch
    monkeypatch.setattr(local_zarr, "hash_batch", lambda part: batches.append(len(part)) or real(part))
    monkeypatch.setattr(local_zarr, "_HASH_BATCH_BYTES", 1 << 20)
    src = tmp_path / "a.zarr"
    array = zarr.open_group(str(src), mode="w", zarr_format=2).create_array(
        "big", shape=(8, 1 << 18), chunks=(1, 1 << 18), dtype="<u2", compressors=None)
    array[:] = np.random.default_rng(2).integers(0, 65535, array.shape, dtype=np.uint16)  # eight 512 KiB chunks

    assert local_zarr.scan_local_zarr(src).digest_index(workers=2).zarr_checksum() == reference_checksum(src)
    assert batches == [2, 2, 2, 2]  # 1 MiB a batch (the metadata documents are read at the scan)


@pytest.mark.parametrize("listing", ["the same files", "files added and removed"])
def test_the_digest_cache_gives_back_the_md5_of_every_file_whose_stat_is_unchanged(tmp_path: Path, listing: str) -> None:
    from dandi_icechunk.checksum import DirectoryDigests
    from dandi_icechunk.index import FileDigest, FileDigests
    from dandi_icechunk.upload.digest_cache import Derived, DigestCache

    cache, root = DigestCache(tmp_path / "cache"), tmp_path / "a.zarr"
    rng = np.random.default_rng(3)
    names = ["".join(map(chr, rng.integers(0x4E00, 0x9FFF, 6))) for _ in range(3000)]  # keys beyond ASCII
    stats = {f"données/{name}/ß": (i + 1, 10**18 + i, 2**63 + 7 * i) for i, name in enumerate(names)}
    md5s = {key: rng.bytes(16).hex() for key in stats}
    saved = cache.save(root, FileStats(stats.items()), FileDigests((k, FileDigest(md5s[k], st[0])) for k, st in stats.items()))
    runs = [("données/a", "données/b", 2, "ab" * 32)]
    cache.save_derived(root, saved, Derived(DirectoryDigests.of([]), runs, ["zarr.json"]))
    keys = sorted(stats)
    changed = {keys[5]: (6, 0, 35), keys[-1]: (stats[keys[-1]][0], 0, stats[keys[-1]][2])}  # size; mtime
    now = {**stats, **changed}
    if listing == "files added and removed":
        del now[keys[0]], now[keys[100]]
        now |= {"données/new": (1, 1, 1), "a-first": (2, 2, 2), keys[200] + "0": (3, 3, 3)}
    found = cache.unchanged(root, FileStats(now.items()))
    expected = {k: FileDigest(md5s[k], st[0]) for k, st in now.items() if k in stats and k not in changed}
    assert dict(found.files.items()) == expected and len(expected) >= len(stats) - 4
    listed = sorted(now)
    assert [listed[row] for row in found.unknown] == [k for k in listed if k not in expected]
    # what was derived from them needs computing again where the files gone and the documents are
    gone = [keys[0], keys[100]] if listing == "files added and removed" else []
    assert found.derived is not None and found.derived.runs == runs and found.stale == [*gone, "zarr.json"]
    assert found.same_keys == (listing == "the same files")


def test_the_digest_cache_refuses_to_save_digests_of_other_files_than_the_listing(tmp_path: Path) -> None:
    from dandi_icechunk.index import FileDigest, FileDigests
    from dandi_icechunk.upload.digest_cache import DigestCache

    cache, root = DigestCache(tmp_path / "cache"), tmp_path / "a.zarr"
    stats = FileStats([("0/0", (1, 1, 1)), ("0/1", (1, 1, 2))])
    for keys in (["0/0"], ["0/0", "0/2"], ["0/0", "0/1", "0/2"]):
        with pytest.raises(ValueError, match="other files than the listing"):
            cache.save(root, stats, FileDigests((k, FileDigest("0" * 32, 1)) for k in keys))
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.digests"))


@pytest.mark.parametrize("damage", ["head truncated", "head not a cache", "segment truncated", "a byte of an MD5 changed",
                                    "segment lost"])
def test_a_damaged_digest_cache_costs_a_rehash_never_a_wrong_digest(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    from dandi_icechunk.upload import local_zarr
    from dandi_icechunk.upload.digest_cache import DigestCache

    cache = DigestCache(tmp_path / "cache")
    src = make_zarr_v3(tmp_path / "a.zarr", chunks=(4, 16, 16))
    upload_zarr(src, location, zarr_id, digest_cache=cache)
    (head,) = (tmp_path / "cache").glob("*.digests")
    (segment,) = (tmp_path / "cache").glob("*.segments/*")
    chunks = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() and p.name != "zarr.json")
    assert segment.read_bytes().startswith("\0".join(chunks).encode())
    saved, data = (head, head.read_bytes()) if damage.startswith("head") else (segment, segment.read_bytes())
    if damage == "segment lost":
        segment.unlink()
    else:
        saved.write_bytes({
            "head truncated": data[: len(data) // 2],
            "head not a cache": b"{not a cache",
            "segment truncated": data[:-8],
            "a byte of an MD5 changed": data[:-8] + bytes([data[-8] ^ 1]) + data[-7:],  # the last low half
        }[damage])
    hashed: list[str] = []
    real_hash = local_zarr.hash_file
    monkeypatch.setattr(local_zarr, "hash_file", lambda path, key, size: hashed.append(key) or real_hash(path, key, size))
    zarr.open_group(str(src), mode="r+")["data"][0:4, 0:16, 0:16] = 7

    result = upload_zarr(src, location, zarr_id, digest_cache=cache)
    assert sorted(hashed) == chunks
    assert result.files_written == 1
    assert result.zarr_checksum == reference_checksum(src)


def test_a_digest_cache_that_cannot_be_written_warns_once_and_never_stops_an_upload(
    location: StorageLocation, zarr_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dandi_icechunk.upload.digest_cache import DigestCache

    (tmp_path / "home").write_text("a file where the cache directory would go (or a full disk, a read-only home)")
    cache = DigestCache(tmp_path / "home" / "digests")
    src = make_ome_zarr_v2(tmp_path / "a.ome.zarr")
    with caplog.at_level(logging.WARNING, logger="dandi_icechunk"):
        first = upload_zarr(src, location, zarr_id, digest_cache=cache)
        _edit_a_chunk(src)
        again = upload_zarr(src, location, zarr_id, digest_cache=cache)
    assert first.zarr_checksum != again.zarr_checksum == reference_checksum(src) and again.files_written == 1
    warned = [r.getMessage() for r in caplog.records if "digest cache" in r.getMessage()]
    assert len(warned) == 1 and "cannot write the digest cache" in warned[0] and "Not a directory" in warned[0]


def test_an_upload_of_a_directory_listed_as_at_its_last_upload_ends_after_the_listing(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dandi_icechunk.upload import commit
    from dandi_icechunk.upload.digest_cache import DigestCache

    cache = DigestCache(tmp_path / "cache")
    src = make_ome_zarr_v2(tmp_path / "a.ome.zarr")
    first = upload_zarr(src, location, zarr_id, digest_cache=cache)

    def no_scan(_: object) -> None:
        raise AssertionError("the local Zarr was validated and hashed again")

    monkeypatch.setattr(commit, "scan_local_zarr", no_scan)
    again = upload_zarr(src, location, zarr_id, digest_cache=cache)
    assert again.snapshot_id is None and again.files_written == again.files_deleted == 0
    assert again.parent_snapshot_id == first.snapshot_id
    assert (again.zarr_checksum, again.file_count, again.size) == (first.zarr_checksum, first.file_count, first.size)


@pytest.mark.parametrize("edit", ["a chunk edited", "a chunk edited, one removed, a document edited",
                                  "a chunk edited, a document gone, another added"])
def test_an_update_hashes_again_only_the_index_runs_of_changed_files_and_stores_the_index_computed_whole(
    s3_location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: str
) -> None:
    location = s3_location  # the runs do not depend on where the repository is
    from dandi_icechunk import index
    from dandi_icechunk.index import EarlierRuns, IndexReader, load_index, store_index
    from dandi_icechunk.objects import prefix_objects
    from dandi_icechunk.upload.digest_cache import DigestCache

    cache = DigestCache(tmp_path / "cache")
    src = make_ome_zarr_v2(tmp_path / "a.ome.zarr", shape=(16, 512, 512), chunks=(1, 32, 32))  # 5,120 chunks
    upload_zarr(src, location, zarr_id, digest_cache=cache, dedup=False)
    _edit_a_chunk(src)
    if edit == "a chunk edited, one removed, a document edited":
        (src / "1" / "0" / "0" / "0").unlink()
        (src / ".zattrs").write_text((src / ".zattrs").read_text().replace("{", '{"edited": true, ', 1))
    elif edit == "a chunk edited, a document gone, another added":  # as many files and the same chunks, not the same keys
        (src / "0" / ".zattrs").unlink()
        (src / "1" / "notes.txt").write_text("beside the chunks")
    taken: list[str | None] = []
    content = EarlierRuns.content
    monkeypatch.setattr(EarlierRuns, "content", lambda self, run: taken.append(found := content(self, run)) or found)
    boundaries = index._boundaries
    looked: list[int] = []
    monkeypatch.setattr(index, "_boundaries", lambda keys: looked.append(len(keys)) or boundaries(keys))

    result = upload_zarr(src, location, zarr_id, digest_cache=cache, dedup=False)
    repo = ZarrRepository.open(location, zarr_id)
    info = repo.commit_info(result.snapshot_id)
    assert info is not None and len(IndexReader.load(repo.objects, info.index_id).table) >= 4
    assert len(taken) == len(IndexReader.load(repo.objects, info.index_id).table) and taken.count(None) <= 3
    assert bool(looked) == (edit != "a chunk edited")  # only the same keys let the runs end where they did
    whole = load_index(repo.objects, info.index_id)  # its runs computed from scratch
    assert store_index(prefix_objects(StorageLocation(kind="file", bucket=str(tmp_path / "scratch")), "r"), whole) == info.index_id
    assert {k: d.md5 for k, d in whole.files.items()} == {k: hashlib.md5(v).hexdigest() for k, v in tree_bytes(src).items()}


@pytest.mark.parametrize("edit", ["a chunk edited", "a chunk removed", "an empty chunk removed", "a stray file added",
                                  "an array's attributes edited", "an array's attributes removed", "an array added"])
def test_an_update_computes_its_checksum_again_only_in_the_directories_that_changed(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: str
) -> None:
    from dandi_icechunk.checksum import DirectoryDigests
    from dandi_icechunk.upload.digest_cache import DigestCache

    cache = DigestCache(tmp_path / "cache")
    src = make_ome_zarr_v2(tmp_path / "a.ome.zarr")
    last = src / "0" / "1" / "1" / "1"  # its directory holds one other chunk, and no document
    if edit == "an empty chunk removed":
        last.write_bytes(b"")  # kept in the index, as a document
    upload_zarr(src, location, zarr_id, digest_cache=cache)
    if edit == "a chunk edited":
        _edit_a_chunk(src)
    elif edit in ("a chunk removed", "an empty chunk removed"):
        last.unlink()
    elif edit == "a stray file added":  # no chunk of the array: kept in the index, as a document
        (last.parent / "notes.txt").write_text("beside the chunks")
    elif edit == "an array's attributes edited":
        (src / "0" / ".zattrs").write_text('{"edited": true}')
    elif edit == "an array's attributes removed":
        (src / "0" / ".zattrs").unlink()
    else:
        shutil.copytree(src / "1", src / "2")
    whole: list[object] = []
    of = DirectoryDigests.of
    monkeypatch.setattr(DirectoryDigests, "of", classmethod(lambda cls, files: whole.append(files) or of(files)))

    result = upload_zarr(src, location, zarr_id, digest_cache=cache)
    assert result.snapshot_id is not None and result.zarr_checksum == reference_checksum(src)
    assert not whole


@pytest.mark.parametrize("why", ["the digests were saved again without them", "a byte of them changed"])
def test_what_was_derived_from_other_cached_digests_is_computed_again_never_used(
    location: StorageLocation, zarr_id: str, tmp_path: Path, why: str
) -> None:
    from dandi_icechunk.index import FileDigests
    from dandi_icechunk.upload import local_zarr
    from dandi_icechunk.upload.digest_cache import DigestCache

    cache = DigestCache(tmp_path / "cache")
    src = make_ome_zarr_v2(tmp_path / "a.ome.zarr")
    upload_zarr(src, location, zarr_id, digest_cache=cache)
    _edit_a_chunk(src)  # under 0/: the directories of 1/ come last in the file, unchanged
    if why == "the digests were saved again without them":  # by another process, say: the edit is in them
        local = local_zarr.scan_local_zarr(src)
        cache.save(src, local.stats, FileDigests(
            (k, local_zarr.hash_file(local.path(k), k, st[0])) for k, st in local.stats.items()
        ))
    else:
        (saved,) = (tmp_path / "cache").glob("*.derived")
        data = saved.read_bytes()
        runs = struct.unpack_from("<Q", data, data.index(b"\n") + 1 + 16 + 16)[0]  # after the binding, 2 counts
        damaged = bytearray(data)
        for i in range(3):  # the count of the last three directories: 1/0/0, 1/1 (read) and 1/1/0
            damaged[-16 - 40 * runs - 8 - 8 * i] ^= 1  # before the runs (8 + 32 bytes each) and the check
        saved.write_bytes(bytes(damaged))

    result = upload_zarr(src, location, zarr_id, digest_cache=cache)
    assert result.zarr_checksum == reference_checksum(src)
    stored = ZarrRepository.open(location, zarr_id).index(result.snapshot_id).files
    assert {k: d.md5 for k, d in stored.items()} == {k: hashlib.md5(v).hexdigest() for k, v in tree_bytes(src).items()}


def _scanned(local: object) -> tuple[object, ...]:
    from dandi_icechunk.upload.local_zarr import LocalZarr

    assert isinstance(local, LocalZarr)
    return local.hierarchy, local.documents, local.size, dict(local.stats.items()), local.scan


@pytest.mark.parametrize("since", ["nothing", "a chunk edited", "an array shrunk: chunks beyond it", "a bad key added"])
def test_a_scan_of_the_keys_scanned_before_finds_what_a_whole_scan_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, since: str
) -> None:
    """Keys checked, documents named and strays found once are not found again for the same keys
    (and, for strays, the same documents); whatever changed, the result is a whole scan's."""
    import json

    from dandi_icechunk import hierarchy
    from dandi_icechunk.upload import local_zarr

    src = make_ome_zarr_v2(tmp_path / "a.ome.zarr")
    before = local_zarr.scan_local_zarr(src).scan
    if since == "a chunk edited":
        _edit_a_chunk(src)
    elif since == "an array shrunk: chunks beyond it":
        zarray = json.loads((src / "0" / ".zarray").read_text())
        zarray["shape"] = [zarray["chunks"][0], *zarray["shape"][1:]]
        (src / "0" / ".zarray").write_text(json.dumps(zarray))
    elif since == "a bad key added":
        (src / "0" / "__notes").write_text("refused")
    whole_scan: list[str] = []
    for name in ("check_keys", "documents_among"):
        real = getattr(local_zarr, name)
        monkeypatch.setattr(local_zarr, name, lambda keys, real=real, name=name: whole_scan.append(name) or real(keys))
    real_strays = hierarchy.Hierarchy.strays
    monkeypatch.setattr(hierarchy.Hierarchy, "strays", lambda self, keys: whole_scan.append("strays") or real_strays(self, keys))

    if since == "a bad key added":
        with pytest.raises(InvalidZarrError, match="__notes"):
            local_zarr.scan_local_zarr(src, known=before)
        return
    again = local_zarr.scan_local_zarr(src, known=before)
    assert whole_scan == (["strays"] if since == "an array shrunk: chunks beyond it" else [])
    whole_scan.clear()
    assert _scanned(again) == _scanned(local_zarr.scan_local_zarr(src))
    assert whole_scan == ["check_keys", "documents_among", "strays"]
    if since == "an array shrunk: chunks beyond it":
        assert again.scan.strays and all(k.startswith("0/1/") for k in again.scan.strays)


def test_an_upload_remembers_the_scan_of_its_keys_for_the_next(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from dandi_icechunk.upload import local_zarr
    from dandi_icechunk.upload.digest_cache import DigestCache

    cache = DigestCache(tmp_path / "cache")
    src = make_ome_zarr_v2(tmp_path / "a.ome.zarr")
    upload_zarr(src, location, zarr_id, digest_cache=cache)
    _edit_a_chunk(src)

    def no_check(_: object) -> None:
        raise AssertionError("the keys were checked again")

    monkeypatch.setattr(local_zarr, "check_keys", no_check)
    result = upload_zarr(src, location, zarr_id, digest_cache=cache)
    assert result.files_written == 1 and result.zarr_checksum == reference_checksum(src)

    (record,) = (tmp_path / "cache").glob("*.scan.json")
    record.write_text(json.dumps({**json.loads(record.read_text()), "named_documents": ".zattrs"}))
    monkeypatch.undo()
    _edit_a_chunk(src)  # a damaged record is a scan done whole, never a refusal
    again = upload_zarr(src, location, zarr_id, digest_cache=cache)
    assert again.files_written == 1 and again.zarr_checksum == reference_checksum(src)


def _edit_a_chunk(src: Path) -> None:
    chunk = next(p for p in sorted((src / "0").rglob("*")) if p.is_file() and not p.name.startswith("."))
    chunk.write_bytes(os.urandom(chunk.stat().st_size))


def _remove_a_chunk(src: Path) -> None:
    next(p for p in sorted((src / "1").rglob("*")) if p.is_file() and not p.name.startswith(".")).unlink()


@pytest.mark.parametrize("since", ["a chunk edited", "a chunk removed", "another upload moved the branch",
                                   "the last upload was a patch", "the record is unreadable"])
def test_the_listing_shortcut_never_hides_a_change(
    location: StorageLocation, zarr_id: str, tmp_path: Path, since: str
) -> None:
    """Whatever happened since the last upload from this directory, the next upload leaves the
    branch holding exactly the directory."""
    from dandi_icechunk.upload.digest_cache import DigestCache

    cache = DigestCache(tmp_path / "cache")
    src = make_ome_zarr_v2(tmp_path / "a.ome.zarr")
    if since == "the last upload was a patch":
        extra = make_ome_zarr_v2(tmp_path / "extra.ome.zarr", seed=3)
        (extra / "0").rename(extra / "2")  # a file the directory lacks
        upload_zarr(extra, location, zarr_id)
        upload_zarr(src, location, zarr_id, digest_cache=cache, delete_missing=False)
    else:
        upload_zarr(src, location, zarr_id, digest_cache=cache)
    if since == "a chunk edited":
        _edit_a_chunk(src)
    elif since == "a chunk removed":
        _remove_a_chunk(src)
    elif since == "another upload moved the branch":
        upload_zarr(make_ome_zarr_v2(tmp_path / "other.ome.zarr", seed=5), location, zarr_id)
    elif since == "the record is unreadable":
        records = list((tmp_path / "cache").glob("*.uploads.json"))
        assert records
        for record in records:
            record.write_text("{not json")

    result = upload_zarr(src, location, zarr_id, digest_cache=cache)
    if since == "the record is unreadable":  # nothing changed: found the long way
        assert result.snapshot_id is None
    else:
        assert result.snapshot_id is not None and result.files_written + result.files_deleted > 0
    assert result.zarr_checksum == reference_checksum(src)
    repo = ZarrRepository.open(location, zarr_id)
    exported = export_snapshot(repo, tmp_path / "back.ome.zarr", snapshot_id=result.parent_snapshot_id
                               if result.snapshot_id is None else result.snapshot_id)
    assert tree_bytes(Path(exported.destination)) == tree_bytes(src)


class _WhenUploadStarts(NoProgress):
    """A Progress that calls ``act`` as the uploading phase begins, after any hashing: a writer
    still busy with the Zarr while it is uploaded."""

    def __init__(self, act: Callable[[], object]) -> None:
        self.act = act

    def start(self, label: str, files: int, nbytes: int) -> None:
        if label == "uploading":
            self.act()


def _zarr_of_noise(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], **kwargs: object) -> Path:
    """A Zarr v3 of random values: its chunk files are as big as their chunks (no compression gain)."""
    src = make_zarr_v3(path, shape=shape, chunks=chunks, **kwargs)  # type: ignore[arg-type]
    zarr.open_array(str(src / "data"), mode="r+")[:] = np.random.default_rng(1).integers(0, 2**16, shape, dtype="<u2")
    return src


# Chunk files up to 1 MiB are read and hashed in place, larger ones hashed in a thread while sent.
_SMALL_AND_BIG_CHUNKS = pytest.mark.parametrize(
    ("shape", "chunks"), [((16, 64, 64), (4, 16, 16)), ((2, 1024, 1024), (1, 1024, 1024))], ids=["small", "over-1MiB"]
)


@_SMALL_AND_BIG_CHUNKS
def test_file_changed_after_hashing_fails_the_upload_and_commits_nothing(
    location: StorageLocation, zarr_id: str, tmp_path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]
) -> None:
    src = _zarr_of_noise(tmp_path / "a.zarr", shape, chunks)
    first = upload_zarr(src, location, zarr_id)
    zarr.open_group(str(src), mode="r+")["data"][:] = 7
    victim = src / "data" / "c" / "0" / "0" / "0"
    victim.write_bytes(os.urandom(chunks[-1] * chunks[-2] * 2))  # as big as the chunk, to be sent the same way
    with pytest.raises(InvalidZarrError, match=r"data/c/0/0/0 changed while it was being uploaded"):
        rewrite = _WhenUploadStarts(lambda: victim.write_bytes(os.urandom(victim.stat().st_size)))
        upload_zarr(src, location, zarr_id, progress=rewrite)
    assert ZarrRepository.open(location, zarr_id).resolve() == first.snapshot_id

    done = upload_zarr(src, location, zarr_id)  # once the writer is done, the upload goes through
    assert done.zarr_checksum == reference_checksum(src)


@_SMALL_AND_BIG_CHUNKS
def test_a_chunk_file_removed_while_a_first_upload_sends_it_fails_the_upload_and_commits_nothing(
    location: StorageLocation, zarr_id: str, tmp_path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]
) -> None:
    src = _zarr_of_noise(tmp_path / "a.zarr", shape, chunks)
    victim = src / "data" / "c" / "1" / "0" / "0"
    kept = victim.read_bytes()
    with pytest.raises(InvalidZarrError, match=r"cannot read data/c/1/0/0 \("):
        upload_zarr(src, location, zarr_id, dedup=False, progress=_WhenUploadStarts(victim.unlink))
    repo = ZarrRepository.open(location, zarr_id)  # at most an empty repository
    assert repo.commit_info(repo.resolve()) is None

    victim.write_bytes(kept)
    assert upload_zarr(src, location, zarr_id, dedup=False).zarr_checksum == reference_checksum(src)


@pytest.mark.parametrize(
    ("shape", "chunks", "shards"),
    [((32, 64, 64), (4, 16, 16), (8, 32, 32)), ((4, 1024, 1024), (1, 512, 512), (2, 1024, 1024))],
    ids=["small", "over-1MiB"],
)
def test_a_first_upload_without_checksum_lookup_reads_each_chunk_file_once_and_hashes_what_it_sends(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    shape: tuple[int, ...], chunks: tuple[int, ...], shards: tuple[int, ...],
) -> None:
    """The archive's route (``dedup=False``) into an empty repository hashes each chunk as it
    reads it for sending: one read per chunk file, and the checksum and index match the files."""
    from dandi_icechunk.upload import chunks as sending, local_zarr

    src = _zarr_of_noise(tmp_path / "a.zarr", shape, chunks, shards=shards)
    reads: dict[str, int] = {}
    real_read = local_zarr.read_file

    def counted(path: str | Path, key: str, size: int = 0) -> bytes:
        reads[key] = reads.get(key, 0) + 1
        return real_read(path, key, size)

    def no_hash_pass(*args: object, **kwargs: object) -> None:
        raise AssertionError("a file was hashed before it was sent")

    real_read_into = local_zarr.read_file_into

    def counted_into(path: str | Path, key: str, buffer: Any) -> int | None:
        reads[key] = reads.get(key, 0) + 1
        return real_read_into(path, key, buffer)

    monkeypatch.setattr(local_zarr, "read_file", counted)
    monkeypatch.setattr(sending, "read_file", counted)
    monkeypatch.setattr(sending, "read_file_into", counted_into)
    monkeypatch.setattr(local_zarr, "hash_file", no_hash_pass)
    result = upload_zarr(src, location, zarr_id, dedup=False)

    chunks = {k for k in tree_bytes(src) if "/c/" in k}
    assert chunks <= set(reads) and set(reads.values()) == {1}  # metadata is read once too, at the scan
    assert result.zarr_checksum == reference_checksum(src)
    assert result.files_written == result.file_count == len(tree_bytes(src))
    repo = ZarrRepository.open(location, zarr_id)
    assert verify_snapshot(repo).ok  # every stored chunk has the digest the index holds
    exported = export_snapshot(repo, tmp_path / "back.zarr", snapshot_id=result.snapshot_id)
    assert tree_bytes(Path(exported.destination)) == tree_bytes(src)


def test_big_chunks_are_read_into_buffers_used_again_and_stored_exactly(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One transfer at a time, every shard after the first is read into the buffer the one
    before was sent from: each is still stored byte for byte."""
    from dandi_icechunk.upload import chunks as sending, local_zarr

    src = _zarr_of_noise(tmp_path / "a.zarr", (4, 1024, 1024), (1, 512, 512), shards=(1, 1024, 1024))
    buffers: list[Any] = []
    real_read_into = local_zarr.read_file_into

    def seen(path: str | Path, key: str, buffer: Any) -> int | None:
        buffers.append(buffer)
        return real_read_into(path, key, buffer)

    monkeypatch.setattr(sending, "read_file_into", seen)
    result = upload_zarr(src, location, zarr_id, dedup=False, jobs=1)
    assert len(buffers) == 4 and len({id(b) for b in buffers}) == 1
    repo = ZarrRepository.open(location, zarr_id)
    assert verify_snapshot(repo).ok
    exported = export_snapshot(repo, tmp_path / "back.zarr", snapshot_id=result.snapshot_id)
    assert tree_bytes(Path(exported.destination)) == tree_bytes(src)


def test_a_big_chunk_that_grew_after_the_listing_is_sent_whole(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk file is read to its end, past the buffer of its listed size: what is stored is
    what the file holds when it is sent, and the checksum is of that."""
    from dandi_icechunk.upload import local_zarr

    src = _zarr_of_noise(tmp_path / "a.zarr", (2, 1024, 1024), (1, 1024, 1024))
    real_listing = local_zarr.LocalListing.of.__func__  # type: ignore[attr-defined]

    def grown_after(cls: type, *args: Any, **kwargs: Any) -> Any:
        listing = real_listing(cls, *args, **kwargs)
        with open(src / "data" / "c" / "1" / "0" / "0", "ab") as f:
            f.write(os.urandom(4096))
        return listing

    monkeypatch.setattr(local_zarr.LocalListing, "of", classmethod(grown_after))
    result = upload_zarr(src, location, zarr_id, dedup=False)
    assert result.zarr_checksum == reference_checksum(src)
    exported = export_snapshot(ZarrRepository.open(location, zarr_id), tmp_path / "back.zarr",
                               snapshot_id=result.snapshot_id)
    assert tree_bytes(Path(exported.destination)) == tree_bytes(src)


def test_read_buffers_are_used_again_for_chunks_of_about_their_size_within_the_budget() -> None:
    from dandi_icechunk.upload.chunks import _ReadBuffers

    buffers = _ReadBuffers(budget=1000)
    first = buffers.take(400)
    buffers.give(first)
    assert buffers.take(390) is first  # up to an eighth larger than the chunk
    buffers.give(first)
    other = buffers.take(300)  # too big a buffer to hand a chunk of 300 bytes
    assert other is not first and len(other) == 300
    third = buffers.take(500)  # 400 kept + 300 in use + 500 > 1000: the kept one goes
    buffers.give(other)
    buffers.give(third)
    assert buffers.take(500) is third and buffers.take(300) is other
    buffers.drop(other)  # a buffer Icechunk may still hold is never handed out again
    assert buffers.take(300) is not other


def test_a_chunk_over_icechunks_multipart_threshold_is_sent_in_one_put(
    s3_server: S3Server, s3_location: StorageLocation, zarr_id: str, tmp_path: Path
) -> None:
    """Single PUTs up to 1 GiB (benchmarks/big_objects.py: multipart from 100 MB, Icechunk's
    default, took 1.6x as long for 220 MB shards here). A multipart object's ETag ends in -N."""
    src = tmp_path / "big.zarr"
    array = zarr.create_array(str(src), shape=(56 * 1024 * 1024,), chunks=(56 * 1024 * 1024,), dtype="<u2",
                              compressors=None, zarr_format=3)
    array[:] = np.arange(array.shape[0], dtype="<u2")  # 112 MB in one chunk
    upload_zarr(src, s3_location, zarr_id, dedup=False)
    client = s3_server.client()
    prefix = s3_location.repository_prefix(zarr_id) + "/chunks/"
    [chunk] = client.list_objects_v2(Bucket=s3_location.bucket, Prefix=prefix)["Contents"]
    assert chunk["Size"] == 112 * 1024 * 1024
    assert "-" not in chunk["ETag"].strip('"')


def test_bytes_in_flight_stay_within_the_budget_and_an_oversized_chunk_goes_alone() -> None:
    """``run_bounded`` as the upload uses it: weights are chunk sizes, the budget is memory;
    items are taken from the iterator as workers free up, not all at once."""
    import asyncio

    from dandi_icechunk.aio import run_bounded

    weights = [30, 30, 30, 250, 10, 10, 60, 90, 5] * 4
    in_flight: list[int] = []
    seen: list[tuple[int, int]] = []  # (item, weight in flight once it started)
    taken = 0

    def items() -> Iterator[int]:
        nonlocal taken
        for i, _ in enumerate(weights):
            taken += 1
            assert taken - len(seen) <= 4, "items were taken ahead of the workers"
            yield i

    async def work(i: int) -> None:
        in_flight.append(i)
        seen.append((i, sum(weights[j] for j in in_flight)))
        if weights[i] > 100:
            assert in_flight == [i], "an item over the budget ran beside others"
        await asyncio.sleep(0.001 * (i % 3))
        in_flight.remove(i)

    asyncio.run(run_bounded(work, items(), 4, weight=weights.__getitem__, budget=100))
    assert sorted(i for i, _ in seen) == list(range(len(weights)))
    assert max(total for i, total in seen if weights[i] <= 100) <= 100


def test_transfers_run_on_uvloop_where_it_is_installed_and_on_asyncio_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads, verify and export run their Icechunk calls on :func:`aio.run`'s loop: uvloop's,
    whose wakeups from Icechunk's threads cost half of asyncio's; asyncio's where it is absent."""
    import asyncio

    import uvloop

    from dandi_icechunk import aio

    async def loop_type() -> type:
        await asyncio.to_thread(lambda: None)  # a wakeup from another thread, as Icechunk's
        return type(asyncio.get_running_loop())

    assert aio.run(loop_type()) is uvloop.Loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on Windows, which uvloop does not support
    # asyncio's default policy: uvicorn 0.30 sets uvloop's for the whole process once it has served
    policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(None)
    try:
        assert issubclass(aio.run(loop_type()), asyncio.BaseEventLoop)
        assert not issubclass(aio.run(loop_type()), uvloop.Loop)
    finally:
        asyncio.set_event_loop_policy(policy)


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.tuples(*[st.integers(0, 2**62)] * 3), max_size=40),
       st.data())
def test_packed_file_stats_answer_as_the_dict_of_the_same_listing(stats: dict[str, tuple[int, int, int]], data: st.DataObject) -> None:
    packed = FileStats(stats.items())
    assert list(packed) == sorted(stats) and dict(packed.items()) == stats and len(packed) == len(stats)
    assert all(packed[k] == v and packed.size_of(k) == v[0] for k, v in stats.items())
    assert packed.get("\0absent") is None
    gone = data.draw(st.sets(st.sampled_from(sorted(stats)))) if stats else set()
    packed.remove(gone)
    assert dict(packed.items()) == {k: v for k, v in stats.items() if k not in gone}
    with pytest.raises(KeyError):
        packed.remove({"\0absent"})


def test_verify_gives_the_checksum_of_the_bytes_stored_when_they_differ(zarr_id: str, tmp_path: Path) -> None:
    """The stored bytes of every chunk overwritten (same length): verify names each file, and
    its checksum is the one of a Zarr holding the overwritten bytes, not the recorded one."""
    location = StorageLocation(kind="file", bucket=str(tmp_path / "bucket"))
    src = make_zarr_v3(tmp_path / "a.zarr", shape=(16, 128, 128), chunks=(4, 32, 32))
    upload_zarr(src, location, zarr_id)
    files = {path.read_bytes(): path for path in src.rglob("c/*/*/*")}
    for stored in (Path(location.bucket) / location.repository_prefix(zarr_id) / "chunks").iterdir():
        original = files[stored.read_bytes()]  # each chunk object holds one file's bytes
        stored.write_bytes(b"x" * stored.stat().st_size)
        original.write_bytes(b"x" * original.stat().st_size)
    report = verify_snapshot(ZarrRepository.open(location, zarr_id))
    assert len(report.problems) == len(files) and not report.ok
    assert report.actual_checksum == reference_checksum(src) != report.expected_checksum


@pytest.mark.parametrize("now", [0, 5, 10, 11, 9 * 1024 * 1024])
def test_a_file_is_read_and_hashed_to_its_end_whatever_size_it_was_listed_with(tmp_path: Path, now: int) -> None:
    """Chunks are read and hashed with their listed size as a hint: a file that grew or shrank since is
    still read whole, so the digest check sees what it holds now."""
    from dandi_icechunk.index import FileDigest
    from dandi_icechunk.upload.local_zarr import hash_file, read_file, read_file_into

    data = os.urandom(now)
    (tmp_path / "f").write_bytes(data)
    assert read_file(tmp_path / "f", "f", 10) == data
    assert read_file(tmp_path / "f", "f") == data
    for listed in (10, 9 * 1024 * 1024):  # big chunks are read into a buffer of their listed size
        buffer = np.full(listed, 7, dtype=np.uint8)
        filled = read_file_into(tmp_path / "f", "f", buffer)
        assert filled == (now if now <= listed else None)  # None: it grew, read it whole instead
        if filled is not None:
            assert buffer[:filled].tobytes() == data
    for listed in (10, 9 * 1024 * 1024):  # hashing takes the listed size as a hint too
        assert hash_file(tmp_path / "f", "f", listed) == FileDigest(hashlib.md5(data).hexdigest(), now)

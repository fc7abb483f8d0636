"""The local digest cache cut in segments: a save writes only the segments whose files changed."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from dandi_icechunk.checksum import DirectoryDigests
from dandi_icechunk.index import FileDigest, FileDigests
from dandi_icechunk.upload import digest_cache
from dandi_icechunk.upload.digest_cache import (
    CachedDigests,
    Derived,
    DigestCache,
    Segments,
    _segment_ends,
)
from dandi_icechunk.upload.file_stats import FileStats

ROWS = 64  # SEGMENT_ROWS in these tests: 3,000 files make about 45 segments


@pytest.fixture(autouse=True)
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digest_cache, "SEGMENT_ROWS", ROWS)


def _files(count: int, seed: int = 5) -> tuple[dict[str, tuple[int, int, int]], dict[str, str]]:
    rng = np.random.default_rng(seed)
    stats = {f"0/{i // 100}/{i % 100}": (1000 + i, 10**18 + i, 2**63 + i) for i in range(count)}
    return stats, {key: rng.bytes(16).hex() for key in stats}


def _digests(stats: dict[str, tuple[int, int, int]], md5s: dict[str, str]) -> FileDigests:
    return FileDigests((k, FileDigest(md5s[k], st[0])) for k, st in stats.items())


def _segment_files(cache: DigestCache) -> set[str]:
    return {p.name for p in cache.directory.glob("*.segments/*")}


def _save_after_reading(cache: DigestCache, root: Path, stats: dict, md5s: dict) -> CachedDigests:
    found = cache.unchanged(root, FileStats(stats.items()))
    cache.save(root, FileStats(stats.items()), _digests(stats, md5s), found)
    return found


def _sizes(ends: list[int]) -> list[int]:
    return [b - a for a, b in itertools.pairwise([0, *ends])]


@given(st.lists(st.integers(0, 20 * ROWS), max_size=30), st.integers(0, 20 * ROWS))
def test_segment_ends_cover_every_row_in_bounded_segments(cuts: list[int], extra: int) -> None:
    total = max([*cuts, extra])
    ends = _segment_ends([*cuts, total])
    assert ends == sorted(set(ends)) and (ends[-1] if ends else 0) == total
    sizes = _sizes(ends)
    assert all(0 < size <= 3 * ROWS for size in sizes)
    # a small segment stays only first, or where joining it to the one before would make one too large
    assert all(size >= ROWS // 4 or before + size > 3 * ROWS for before, size in itertools.pairwise(sizes))
    assert _segment_ends(ends) == ends


@given(st.lists(st.integers(ROWS // 4, 3 * ROWS), max_size=30))
def test_segments_within_bounds_keep_their_ends(sizes: list[int]) -> None:
    ends = list(itertools.accumulate(sizes))
    assert _segment_ends(ends or [0]) == ends


@pytest.mark.parametrize("change", ["stats of a few files in one region", "a file added and one removed in one region"])
def test_a_save_after_a_change_in_one_region_writes_only_the_segments_holding_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    cache, root = DigestCache(tmp_path / "cache"), tmp_path / "a.zarr"
    stats, md5s = _files(3000)
    cache.save(root, FileStats(stats.items()), _digests(stats, md5s))
    before = _segment_files(cache)
    assert len(before) >= 40
    keys = sorted(stats)
    region = keys[1500:1510]
    for key in region[:3]:
        stats[key], md5s[key] = (1, 2, 3), "f" * 32
    if change == "a file added and one removed in one region":
        del stats[region[5]]
        stats[region[6] + "0"], md5s[region[6] + "0"] = (4, 5, 6), "e" * 32
    made: list[int] = []
    save_segment = DigestCache._save_segment
    monkeypatch.setattr(DigestCache, "_save_segment", lambda self, *a: made.append(1) or save_segment(self, *a))

    found = _save_after_reading(cache, root, stats, md5s)
    after = _segment_files(cache)
    assert found.same_keys == (change == "stats of a few files in one region")
    assert len(made) == 1  # the others not even hashed
    assert len(after - before) == 1 and len(before - after) == 1  # one segment written, the one it replaced removed
    again = cache.unchanged(root, FileStats(stats.items()))
    assert dict(again.files.items()) == dict(_digests(stats, md5s).items()) and not len(again.unknown)


def test_a_save_with_the_same_keys_writes_what_a_save_hashing_every_segment_writes(tmp_path: Path) -> None:
    cache, root = DigestCache(tmp_path / "cache"), tmp_path / "a.zarr"
    stats, md5s = _files(3000)
    cache.save(root, FileStats(stats.items()), _digests(stats, md5s))
    for key in sorted(stats)[200::97]:  # scattered, the first segments untouched
        stats[key], md5s[key] = (7, 7, 7), "0" * 32
    found = cache.unchanged(root, FileStats(stats.items()))
    assert found.same_keys
    cache.save(root, FileStats(stats.items()), _digests(stats, md5s), found)
    (head,) = cache.directory.glob("*.digests")
    kept_as_read = head.read_bytes(), _segment_files(cache)
    assert found.segments is not None
    every_one_hashed = Segments(found.segments.segments, found.segments.first_keys, [None] * len(found.segments.rows))
    cache.save(root, FileStats(stats.items()), _digests(stats, md5s),
               CachedDigests(found.files, found.unknown, None, [], every_one_hashed))
    assert (head.read_bytes(), _segment_files(cache)) == kept_as_read


def test_a_lost_segment_costs_a_hash_of_its_files_only_and_what_was_derived(tmp_path: Path) -> None:
    cache, root = DigestCache(tmp_path / "cache"), tmp_path / "a.zarr"
    stats, md5s = _files(3000)
    saved = cache.save(root, FileStats(stats.items()), _digests(stats, md5s))
    cache.save_derived(root, saved, Derived(DirectoryDigests.of([]), [], []))
    assert cache.unchanged(root, FileStats(stats.items())).derived is not None
    lost = sorted(cache.directory.glob("*.segments/*"))[7]
    first_lost = lost.read_bytes().split(b"\0", 1)[0].decode()

    lost.unlink()
    found = cache.unchanged(root, FileStats(stats.items()))
    listed = sorted(stats)
    unknown = [listed[row] for row in found.unknown]
    assert first_lost in unknown and 0 < len(unknown) <= 3 * ROWS
    assert dict(found.files.items()) == {k: d for k, d in _digests(stats, md5s).items() if k not in unknown}
    assert found.derived is None and not found.same_keys
    cache.save(root, FileStats(stats.items()), _digests(stats, md5s), found)
    assert not len(cache.unchanged(root, FileStats(stats.items())).unknown)


def test_segments_no_head_names_are_removed_by_the_next_save(tmp_path: Path) -> None:
    cache, root = DigestCache(tmp_path / "cache"), tmp_path / "a.zarr"
    stats, md5s = _files(1000)
    cache.save(root, FileStats(stats.items()), _digests(stats, md5s))
    folder = next(cache.directory.glob("*.segments"))
    (folder / ("ab" * 16)).write_bytes(b"left by a crash")
    (folder / ("cd" * 16)).write_bytes(b"left by a crash an hour ago")
    hour_ago = (folder / ("cd" * 16)).stat().st_mtime - 3601
    os.utime(folder / ("cd" * 16), (hour_ago, hour_ago))
    for key in sorted(stats):
        md5s[key] = "1" * 32  # every segment replaced
    _save_after_reading(cache, root, stats, md5s)
    named = cache.unchanged(root, FileStats(stats.items())).segments
    assert named is not None
    assert _segment_files(cache) == {s.id.hex() for s in named.segments} | {"ab" * 16}  # one a save may be writing


def test_two_saves_from_the_same_reading_cost_at_most_a_hash_of_the_segment_one_removed(tmp_path: Path) -> None:
    """Two uploads of one directory at once: each read the cache, then each saved. The second
    head names a segment the first save removed as replaced: its files are hashed again, and
    every digest the cache gives back is right."""
    cache, root = DigestCache(tmp_path / "cache"), tmp_path / "a.zarr"
    stats, md5s = _files(3000)
    cache.save(root, FileStats(stats.items()), _digests(stats, md5s))
    keys = sorted(stats)
    ours, theirs = (dict(stats), dict(md5s)), (dict(stats), dict(md5s))
    ours[0][keys[100]], ours[1][keys[100]] = (1, 1, 1), "a" * 32
    theirs[0][keys[2900]], theirs[1][keys[2900]] = (2, 2, 2), "b" * 32
    read = [cache.unchanged(root, FileStats(side[0].items())) for side in (ours, theirs)]
    for side, found in zip((ours, theirs), read, strict=True):
        cache.save(root, FileStats(side[0].items()), _digests(*side), found)

    now = cache.unchanged(root, FileStats(theirs[0].items()))
    listed = sorted(theirs[0])
    unknown = {listed[row] for row in now.unknown}
    assert keys[100] in unknown and keys[2900] not in unknown and len(unknown) <= 3 * ROWS
    assert dict(now.files.items()) == {k: d for k, d in _digests(*theirs).items() if k not in unknown}


class CacheMachine(RuleBasedStateMachine):
    """Random edits, additions and removals of a directory's files, uploads (read the cache,
    hash what it does not know, save) and lost segments, against the files' true digests."""

    def __init__(self) -> None:
        super().__init__()
        self.work = Path(tempfile.mkdtemp())
        self.cache, self.root = DigestCache(self.work / "cache"), self.work / "a.zarr"
        self.files: dict[str, tuple[tuple[int, int, int], str]] = {}  # key -> (stat, MD5) now
        self.version = 0

    def teardown(self) -> None:
        shutil.rmtree(self.work)

    def _new_version(self) -> tuple[tuple[int, int, int], str]:
        self.version += 1  # a file's stat changes whenever its bytes do
        return (self.version, self.version, self.version), hashlib.md5(str(self.version).encode()).hexdigest()

    @initialize(count=st.integers(0, 12 * ROWS))
    def made(self, count: int) -> None:
        for i in range(count):
            self.files[f"0/{i // 50}/{i % 50}"] = self._new_version()

    @rule(start=st.floats(0, 1), length=st.integers(1, 2 * ROWS))
    def edit_a_region(self, start: float, length: int) -> None:
        keys = sorted(self.files)
        for key in keys[int(start * len(keys)) :][:length]:
            self.files[key] = self._new_version()

    @rule(data=st.data())
    def add_and_remove(self, data: st.DataObject) -> None:
        keys = sorted(self.files)
        for key in data.draw(st.lists(st.sampled_from(keys), max_size=20, unique=True)) if keys else []:
            del self.files[key]
        for name in data.draw(st.lists(st.integers(0, 10**6), max_size=40, unique=True)):  # among the others, or after
            self.files[f"{name % 2}/{name % 97}/x{name}"] = self._new_version()

    @rule(pick=st.integers(0, 10**6))
    def lose_a_segment(self, pick: int) -> None:
        segments = sorted(self.cache.directory.glob("*.segments/*"))
        if segments:
            segments[pick % len(segments)].unlink()

    @rule()
    def upload(self) -> None:
        stats = FileStats((k, stat) for k, (stat, _) in self.files.items())
        found = self.cache.unchanged(self.root, stats)
        assert all(digest.md5 == self.files[key][1] for key, digest in found.files.items())  # never a wrong digest
        listed = stats.sorted_keys()
        assert sorted([*found.files, *(listed[row] for row in found.unknown)]) == sorted(self.files)
        self.cache.save(self.root, stats, FileDigests((k, FileDigest(md5, 1)) for k, (_, md5) in self.files.items()), found)
        again = self.cache.unchanged(self.root, FileStats((k, stat) for k, (stat, _) in self.files.items()))
        assert not len(again.unknown) and again.same_keys
        assert again.segments is not None and _segment_files(self.cache) == {s.id.hex() for s in again.segments.segments}
        assert all(0 < s.files <= 3 * ROWS for s in again.segments.segments)


def test_random_uploads_of_a_changing_directory_never_get_a_wrong_digest_from_the_cache() -> None:
    run_state_machine_as_test(CacheMachine, settings=settings(
        max_examples=25, stateful_step_count=12, deadline=None, suppress_health_check=list(HealthCheck),
    ))

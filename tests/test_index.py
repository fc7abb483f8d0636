"""The digest index in shards: what an update writes is proportional to what changed, a reader
holds a few shards at a time, and indexes written before shards existed still read."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dandi_icechunk.errors import IntegrityError
from dandi_icechunk.index import (
    _SHARD_MAX,
    INDEX_PREFIX,
    SHARD_PREFIX,
    SHARD_TARGET,
    DigestIndex,
    EarlierRuns,
    FileDigest,
    FileDigests,
    IndexReader,
    Shard,
    _boundaries,
    _files_json,
    index_shard_ids,
    load_index,
    store_index,
)
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.objects import prefix_objects


def _index(n: int, changed: dict[str, FileDigest] | None = None) -> DigestIndex:
    files = {f"0/{i // 100}/{i % 100}": FileDigest(hashlib.md5(str(i).encode()).hexdigest(), i) for i in range(n)}
    return DigestIndex(3, {**files, **(changed or {})}, {"zarr.json": b'{"zarr_format":3,"node_type":"group"}'})


def _objects(tmp_path: Path):  # type: ignore[no-untyped-def]
    return prefix_objects(StorageLocation(kind="file", bucket=str(tmp_path)), "repo")


def test_a_large_index_is_stored_in_shards_and_reads_back_whole_and_one_shard_at_a_time(tmp_path: Path) -> None:
    objects = _objects(tmp_path)
    index = _index(10 * SHARD_TARGET)
    index_id = store_index(objects, index)
    shards = index_shard_ids(objects, index_id)
    assert len(shards) > 3
    assert load_index(objects, index_id) == index

    reader = IndexReader.load(objects, index_id, cache=2)
    assert (reader.file_count, reader.size) == (index.file_count, index.size)
    everything = sorted(index.files)
    assert list(reader.keys()) == everything
    assert all(reader.get(k) == index.files[k] for k in everything[::997])
    assert reader.get("0/nope") is None and reader.get("") is None
    assert len(reader._cache) == 2  # never more shards in memory than asked
    prefix = "0/123/"
    assert list(reader.keys(prefix=prefix)) == [k for k in everything if k.startswith(prefix)]
    middle = everything[len(everything) // 2]
    assert list(reader.keys(after=middle))[:3] == everything[everything.index(middle) + 1:][:3]


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "dict"])
def test_a_reader_of_an_index_in_memory_answers_as_a_stored_one_and_reads_the_files_in_place(
    tmp_path: Path, packed: bool
) -> None:
    """verify and export read through a reader of the index they loaded: it must answer as the
    stored index's reader does, without a second copy of 1.3 M digests (~220 MB)."""
    index = _index(3 * SHARD_TARGET)
    if packed:
        index = DigestIndex(index.zarr_format, FileDigests(index.files.items()), index.documents)
    stored = IndexReader.load(_objects(tmp_path), store_index(_objects(tmp_path), index))
    reader = IndexReader.of(index)
    assert (reader.file_count, reader.size) == (stored.file_count, stored.size)
    assert list(reader.keys()) == list(stored.keys())
    for prefix, after in (("0/12", ""), ("", "0/500/3"), ("0/2/", "0/2/1")):
        assert list(reader.keys(prefix=prefix, after=after)) == list(stored.keys(prefix=prefix, after=after))
    keys = list(index.files)[::211] + ["0/nope", ""]
    assert [reader.get(k) for k in keys] == [stored.get(k) for k in keys]
    assert reader.inline is index.files  # read in place, not copied


def test_an_update_of_one_file_writes_one_shard_and_a_root(tmp_path: Path) -> None:
    objects = _objects(tmp_path)
    first = _index(10 * SHARD_TARGET)
    first_id = store_index(objects, first)
    before = {k for k, _, _ in objects.list_with_times(SHARD_PREFIX)}
    changed = _index(10 * SHARD_TARGET, {"0/200/50": FileDigest("0" * 32, 1)})
    second_id = store_index(objects, changed, stored=IndexReader.load(objects, first_id).table)
    after = {k for k, _, _ in objects.list_with_times(SHARD_PREFIX)}
    assert len(after - before) == 1
    assert len(set(index_shard_ids(objects, first_id)) ^ set(index_shard_ids(objects, second_id))) == 2
    assert load_index(objects, second_id) == changed


def test_a_shard_that_cannot_be_written_stops_the_index_before_its_root_and_a_rerun_stores_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards are written several at a time: a failed one is raised, no root names a missing shard."""
    objects = _objects(tmp_path)
    index = _index(40 * SHARD_TARGET)
    real_put = type(objects).put_if_absent
    puts: list[str] = []

    def failing(self: object, key: str, data: bytes) -> bool:
        puts.append(key)
        if len(puts) == 5:
            raise OSError("the disk is full")
        return real_put(self, key, data)

    monkeypatch.setattr(type(objects), "put_if_absent", failing)
    with pytest.raises(OSError, match="the disk is full"):
        store_index(objects, index)
    assert not [k for k, _, _ in objects.list_with_times(INDEX_PREFIX) if not k.startswith(SHARD_PREFIX)]
    monkeypatch.setattr(type(objects), "put_if_absent", real_put)
    assert load_index(objects, store_index(objects, index)) == index


def test_a_small_index_keeps_its_files_in_its_root(tmp_path: Path) -> None:
    objects = _objects(tmp_path)
    index = _index(100)
    index_id = store_index(objects, index)
    assert index_shard_ids(objects, index_id) == [] and load_index(objects, index_id) == index
    assert [k for k, _, _ in objects.list_with_times(SHARD_PREFIX)] == []


def test_an_index_written_before_shards_still_reads(tmp_path: Path) -> None:
    objects = _objects(tmp_path)
    body = {"format": "dandi-icechunk-index/1", "zarr_format": 2, "files": {".zgroup": ["a" * 32, 3], "0/0": ["b" * 32, 5]},
            "documents": {".zgroup": "{}\\n"}, "extras": {}}
    data = gzip.compress(json.dumps(body).encode(), mtime=0)
    index_id = hashlib.sha256(data).hexdigest()
    objects.put(f"{INDEX_PREFIX}{index_id}.json.gz", data)
    index = load_index(objects, index_id)
    assert index.files["0/0"] == FileDigest("b" * 32, 5) and index.documents[".zgroup"] == b"{}\\n"
    assert list(IndexReader.load(objects, index_id).keys()) == [".zgroup", "0/0"]


def test_an_upload_reads_only_the_index_shards_that_differ(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Zarr of ~10 k chunk files, re-uploaded after one chunk changed: the delta is that one
    file, found from the shards whose content differs, and the new index holds everything."""
    import numpy as np
    import zarr

    from dandi_icechunk.session import ZarrRepository
    from dandi_icechunk.upload import upload_zarr

    src = tmp_path / "many.zarr"
    array = zarr.create_array(str(src), shape=(100, 100), chunks=(1, 1), dtype="u1", zarr_format=3, fill_value=255)
    array[:] = np.arange(10_000, dtype="u8").reshape(100, 100) % 251
    first = upload_zarr(src, location, zarr_id, dedup=False, jobs=16)
    assert first.file_count > SHARD_TARGET
    read: list[int] = []
    original = IndexReader.raw_shard

    def counting(self: IndexReader, number: int) -> dict[str, list[object]]:
        read.append(number)
        return original(self, number)

    monkeypatch.setattr(IndexReader, "raw_shard", counting)
    array[50, 50] = 7
    second = upload_zarr(src, location, zarr_id, dedup=False)
    assert (second.files_written, second.files_deleted) == (1, 0)
    assert 0 < len(read) <= 2  # the changed key's shard (two if the change moved a boundary)
    repo = ZarrRepository.open(location, zarr_id)
    assert repo.index(repo.resolve()).zarr_checksum() == second.zarr_checksum
    assert (src / "c" / "50" / "50").exists() and repo.index(repo.resolve()).files["c/50/50"].size > 0


def _without_content_hashes(objects, index_id: str) -> str:  # type: ignore[no-untyped-def]
    """The same index as stored before table rows carried their run's content hash."""
    root = json.loads(gzip.decompress(objects.get(f"{INDEX_PREFIX}{index_id}.json.gz")))
    root["shards"] = [row[:5] for row in root["shards"]]
    data = gzip.compress(json.dumps(root).encode(), mtime=0)
    old_id = hashlib.sha256(data).hexdigest()
    objects.put(f"{INDEX_PREFIX}{old_id}.json.gz", data)
    return old_id


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("table", ["with content hashes", "stored before content hashes"])
def test_the_shards_an_update_compares_find_every_change_and_store_the_same_index_as_from_scratch(
    tmp_path: Path, seed: int, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edits that keep the size, added keys and removed ones (boundary keys among them): the
    parts compared give the whole delta, only the shards that differ are read, and the index
    stored against the parent's table is the one stored from scratch."""
    import random

    from dandi_icechunk.index import differing_parts

    rng = random.Random(seed)
    objects = _objects(tmp_path)
    base = _index(20 * SHARD_TARGET)
    base_id = store_index(objects, base)
    if table == "stored before content hashes":
        base_id = _without_content_hashes(objects, base_id)
    files = dict(base.files)
    boundaries = [row[1] for row in IndexReader.load(objects, base_id).table[:-1]]
    for key in rng.sample(sorted(files), 2):  # edited in place: same size, new MD5
        files[key] = FileDigest(hashlib.md5(key.encode() + b"!").hexdigest(), files[key].size)
    for key in [rng.choice(boundaries), rng.choice(sorted(files))]:  # a run's last key among them
        del files[key]
    files.update({f"0/{rng.randrange(200)}/x{i}": FileDigest("c" * 32, i) for i in range(2)})
    new = DigestIndex(3, files, base.documents)

    reader = IndexReader.load(objects, base_id)
    read: list[int] = []
    reader.raw_shard = lambda number: read.append(number) or IndexReader.raw_shard(reader, number)  # type: ignore[method-assign]
    old_part, new_part = differing_parts(reader, new)
    assert old_part.delta_to(new_part) == base.delta_to(new)
    assert 0 < len(read) <= 6 + 1 < len(reader.table)  # each change's shard, and the next where a boundary went

    built: list[str] = []
    shard_of = Shard.of
    monkeypatch.setattr(Shard, "of", lambda keys, files, content: built.append(content) or shard_of(keys, files, content))
    updated_id = store_index(objects, new, stored=reader.table)
    assert 0 < len(built) <= 6 + 1 < len(new.runs)  # only the runs that changed are serialised again
    monkeypatch.undo()
    assert updated_id == store_index(_objects(tmp_path / "scratch"), new)
    assert load_index(objects, updated_id) == new


@given(st.lists(st.tuples(st.text(max_size=6), st.binary(min_size=16, max_size=16), st.integers(0, 2**62)),
                unique_by=lambda e: e[0], max_size=40), st.randoms(use_true_random=False))
def test_packed_file_digests_answer_as_the_dict_of_the_same_files_whatever_the_order_they_came_in(
    entries: list[tuple[str, bytes, int]], random: Random
) -> None:
    files = {key: FileDigest(md5.hex(), size) for key, md5, size in entries}
    packed = FileDigests()
    half = len(entries) // 2
    packed.update((k, files[k]) for k, _, _ in entries[:half])
    assert all(k in packed for k, _, _ in entries[:half])  # read between adds: sorted again after
    for key, _, _ in random.sample(entries[half:], len(entries) - half):
        packed[key] = files[key]
    assert list(packed) == sorted(files) and dict(packed.items()) == files and len(packed) == len(files)
    assert all(packed[k] == d for k, d in files.items()) and list(packed.values()) == [files[k] for k in sorted(files)]
    assert "\0absent" not in packed and packed.get("\0absent") is None
    index = DigestIndex(2, packed)
    assert index.runs == DigestIndex(2, files).runs and index.zarr_checksum() == DigestIndex(2, files).zarr_checksum()


_DIGESTS = st.dictionaries(
    st.text(max_size=3), st.builds(FileDigest, st.sampled_from(["0" * 32, "f" * 32, "0123456789abcdef" * 2]), st.integers(0, 3)),
    max_size=30,
)


@given(_DIGESTS, _DIGESTS, st.booleans())
def test_packed_digests_compared_a_column_at_a_time_give_the_delta_of_a_key_by_key_comparison(
    old: dict[str, FileDigest], new: dict[str, FileDigest], same_keys: bool
) -> None:
    if same_keys:  # the common case of an update: only digests changed
        new = {k: new.get(k, d) for k, d in old.items()}
    expected = DigestIndex(2, old).delta_to(DigestIndex(2, new))  # dicts: key by key
    if old:
        assert DigestIndex(2, FileDigests(old)).delta_to(DigestIndex(2, FileDigests(new))) == expected


@given(_DIGESTS, st.data())
def test_stretches_of_packed_digests_hold_exactly_the_files_at_those_positions(
    files: dict[str, FileDigest], data: st.DataObject
) -> None:
    packed = FileDigests(files)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(files)), max_size=6)))
    spans = list(zip(cuts[::2], cuts[1::2], strict=False))
    keys = sorted(files)
    picked = packed.stretches(spans)
    assert dict(picked.items()) == {k: files[k] for a, b in spans for k in keys[a:b]}


@given(_DIGESTS, st.integers(1, 4))
def test_stored_shards_read_back_packed_as_the_files_they_hold(files: dict[str, FileDigest], parts: int) -> None:
    keys = sorted(files)
    bodies = [{k: [files[k].md5, files[k].size] for k in keys[len(keys) * i // parts : len(keys) * (i + 1) // parts]}
              for i in range(parts)]  # shards follow each other in key order
    assert dict(FileDigests.of_stored(bodies).items()) == files


@given(st.lists(st.tuples(st.text(), st.sampled_from(["0" * 32, "0123456789abcdef" * 2]), st.integers(0, 2**62)),
                unique_by=lambda e: e[0], max_size=20))
def test_a_shard_is_written_byte_for_byte_as_the_json_of_its_files_so_stored_shard_ids_stay(
    rows: list[tuple[str, str, int]]
) -> None:
    rows.sort()
    assert _files_json(rows) == json.dumps({k: [m, s] for k, m, s in rows}, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("md5", ["0" * 31, "0" * 33, "g" * 32])
def test_a_stored_shard_with_a_bad_md5_is_refused_as_corrupt(md5: str) -> None:
    with pytest.raises(IntegrityError, match="not 32 hex digits"):
        FileDigests.of_stored([{"0/0": ["0" * 32, 1], "0/1": [md5, 1]}])


@given(st.dictionaries(st.text(max_size=4), st.integers(), max_size=30), st.dictionaries(st.text(max_size=4), st.integers(), max_size=30),
       st.randoms(use_true_random=False))
def test_left_join_pairs_sorted_keys_in_one_walk_and_never_pairs_a_wrong_value(
    left: dict[str, int], right: dict[str, int], random: Random
) -> None:
    from dandi_icechunk.packed import left_join

    in_order = sorted(left.items())
    assert list(left_join(in_order, sorted(right.items()))) == [(k, v, right.get(k)) for k, v in in_order]
    shuffled = random.sample(sorted(right.items()), len(right))  # out of order: some pairs missed, none wrong
    assert all(b is None or b == right[k] for k, _, b in left_join(in_order, shuffled))


@pytest.mark.parametrize(
    "added", [["a"], ["0", "0"], ["c", "0", "c"], ["0", "1", "a"]],
    ids=["a key in order", "two out of order", "one in order, one out", "most out of order"],
)
def test_file_digests_refuse_a_key_added_twice(added: list[str]) -> None:
    packed = FileDigests([("a", FileDigest("0" * 32, 1)), ("b", FileDigest("1" * 32, 2))])
    for key in added:
        packed[key] = FileDigest("2" * 32, 3)
    with pytest.raises(ValueError, match="added twice"):
        len(list(packed))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 6 * _SHARD_MAX), st.data())
def test_runs_are_bounded_and_cut_where_keys_say_so_so_an_insert_changes_one_run(n: int, data: st.DataObject) -> None:
    """Each run ends after a boundary key or at _SHARD_MAX keys; adding a key that is no
    boundary into a run keeps every other run (and its content hash) as it was."""
    files = {f"{i:07d}": FileDigest(f"{i:032x}", i) for i in range(0, 2 * n, 2)}
    runs = DigestIndex(2, FileDigests(files)).runs
    assert [k for run in runs.values() for k in run] == sorted(files)
    for run in runs.values():
        assert len(run) <= _SHARD_MAX
        assert not _boundaries(run[:-1])
    added = data.draw(st.integers(0, max(2 * n - 1, 0)).map(lambda i: f"{i | 1:07d}").filter(lambda k: not _boundaries([k])))
    longer = DigestIndex(2, FileDigests({**files, added: FileDigest("f" * 32, 1)})).runs
    if all(len(run) < _SHARD_MAX for run in longer.values()):
        assert len(set(runs) - set(longer)) <= 1 and len(set(longer) - set(runs)) == 1


@given(st.lists(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12), max_size=3000))
def test_runs_may_end_after_exactly_the_keys_whose_crc32_the_stored_format_names(keys: list[str]) -> None:
    """Indexes stored before keep their runs only while the rule is the same: a key's CRC-32 of
    its UTF-8, modulo the shard target."""
    import zlib

    expected = [i for i, k in enumerate(keys) if zlib.crc32(k.encode()) % SHARD_TARGET == 0]
    assert _boundaries(keys) == expected


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5 * _SHARD_MAX), st.data())
def test_runs_taken_from_an_earlier_index_are_the_runs_computed_whole(n: int, data: st.DataObject) -> None:
    """Keys edited, removed (boundary keys and the keys of runs cut at _SHARD_MAX among them)
    and added, each named as changed: the runs given the earlier index's are those computed
    from scratch, content hashes included (and, with the same keys, where they end)."""
    files = {f"{i:07d}": FileDigest(f"{i:032x}", i) for i in range(0, 2 * n, 2)}
    earlier = DigestIndex(2, FileDigests(files))
    keys = sorted(files)
    edited = data.draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))
    ends = [run[-1] for run in earlier.runs.values()]
    removed = data.draw(st.lists(st.sampled_from(keys + ends), max_size=4, unique=True))
    added = data.draw(st.lists(st.integers(0, 2 * n).map(lambda i: f"{i | 1:07d}"), max_size=4, unique=True))
    now = dict(files)
    for key in edited:
        now[key] = FileDigest("e" * 32, now[key].size)
    for key in removed:
        now.pop(key, None)
    now |= {key: FileDigest("a" * 32, 1) for key in added}
    given = EarlierRuns.of(EarlierRuns.kept(earlier.runs), [*edited, *removed, *added], same_keys=now.keys() == files.keys())
    taken = DigestIndex(2, FileDigests(now), earlier_runs=given)
    assert taken.runs == DigestIndex(2, FileDigests(now)).runs


@pytest.mark.parametrize("seed", range(3))
def test_only_the_runs_holding_a_changed_key_are_hashed_again(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """An edit hashes its own run again and takes every other from the earlier index, and with
    the same keys no key is looked at for where runs end; an edit not named as changed is not
    seen (which is why every changed key must be named)."""
    import types

    from dandi_icechunk import index as index_module

    rng = Random(seed)
    files = {f"0/{i // 100}/{i % 100}": FileDigest(hashlib.md5(str(i).encode()).hexdigest(), i) for i in range(20 * SHARD_TARGET)}
    earlier = DigestIndex(3, FileDigests(files))
    edited, unnamed = rng.sample(sorted(files), 2)
    now = {**files, edited: FileDigest("e" * 32, 1), unnamed: FileDigest("f" * 32, 1)}
    given = EarlierRuns.of(EarlierRuns.kept(earlier.runs), [edited], same_keys=True)
    hashed: list[bytes] = []
    counting = types.SimpleNamespace(sha256=lambda data: hashed.append(data) or hashlib.sha256(data))
    with monkeypatch.context() as patch:
        patch.setattr(index_module, "hashlib", counting)
        patch.setattr(index_module, "_boundaries", None)  # not called
        taken = DigestIndex(3, FileDigests(now), earlier_runs=given).runs
    whole = DigestIndex(3, FileDigests(now)).runs
    ((content, run),) = [(c, run) for c, run in whole.items() if edited in run]
    assert taken[content] == run and len(hashed) == 1 < len(whole)
    (stale,) = [c for c, run in taken.items() if unnamed in run]
    assert (stale in whole) == (unnamed in run) and (stale in earlier.runs) == (unnamed not in run)


def test_runs_of_as_many_keys_as_before_but_others_end_where_their_keys_say() -> None:
    """One key gone at the start and one added at the end: as many keys, every one moved by one
    place; only the same keys let the runs end where they did."""
    files = {f"{i:07d}": FileDigest(f"{i:032x}", i) for i in range(0, 8 * SHARD_TARGET, 2)}
    earlier = DigestIndex(2, FileDigests(files))
    first = min(files)
    now = {**{k: d for k, d in files.items() if k != first}, "9999999": FileDigest("a" * 32, 1)}
    given = EarlierRuns.of(EarlierRuns.kept(earlier.runs), [first, "9999999"])
    whole = DigestIndex(2, FileDigests(now)).runs
    assert DigestIndex(2, FileDigests(now), earlier_runs=given).runs == whole != earlier.runs

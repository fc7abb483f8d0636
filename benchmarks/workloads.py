"""The Zarrs the comparison uploads: a classic chunked v2 array and a sharded v3 array, each
with a history of versions that rewrite 1% of the chunk files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from common import change_chunks, make_chunked_v2

ROW_VALUES = 32 * 1024  # uint16 values per row: 64 KiB, one classic chunk / one inner chunk


@dataclass(frozen=True)
class Workload:
    """``kind`` "classic" (Zarr v2, one 64 KiB chunk per row) or "sharded" (Zarr v3, shards of
    ``shard_rows`` rows of 64 KiB inner chunks); ``files`` chunk files (chunks or shards);
    ``versions`` uploads in the history (the first included)."""

    kind: str
    files: int
    versions: int
    shard_rows: int = 1

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.files}"

    @property
    def rows(self) -> int:
        return self.files * self.shard_rows

    @property
    def nbytes(self) -> int:
        return self.rows * ROW_VALUES * 2

    def make(self, path: Path) -> None:
        """Write version 1 to ``path``."""
        if self.kind == "classic":
            make_chunked_v2(path, total_bytes=self.nbytes, chunk_bytes=ROW_VALUES * 2)
            return
        array = zarr.create_array(
            str(path),
            shape=(self.rows, ROW_VALUES),
            chunks=(1, ROW_VALUES),
            shards=(self.shard_rows, ROW_VALUES),
            dtype="<u2",
            fill_value=0,
            compressors=None,
            zarr_format=3,
        )
        rng = np.random.default_rng(0)
        for shard in range(self.files):
            self._write_shard(array, shard, rng)

    def change(self, path: Path, version: int) -> list[int]:
        """Turn ``path`` into ``version`` (>= 2) by rewriting 1% of its chunk files (at least
        one); return the indexes of the files rewritten."""
        if self.kind == "classic":
            keys = change_chunks(path, self.files, 0.01, seed=version)
            return [int(k.split("/")[0]) for k in keys]
        rng = np.random.default_rng(version)
        picked = sorted(
            int(i) for i in rng.choice(self.files, size=max(1, self.files // 100), replace=False)
        )
        array = zarr.open_array(str(path), mode="r+")
        for shard in picked:
            self._write_shard(array, shard, rng)
        return picked

    def rows_of(self, file_index: int) -> slice:
        """The rows of the array that chunk file ``file_index`` holds."""
        return slice(file_index * self.shard_rows, (file_index + 1) * self.shard_rows)

    def _write_shard(self, array: zarr.Array, shard: int, rng: np.random.Generator) -> None:
        data = np.frombuffer(rng.bytes(self.shard_rows * ROW_VALUES * 2), dtype="<u2")
        array[self.rows_of(shard)] = data.reshape(self.shard_rows, ROW_VALUES)


def array_digest(array: np.ndarray) -> str:
    """What the readers of every contender must agree on for one version."""
    return hashlib.md5(np.ascontiguousarray(array).data).hexdigest()


def workloads(quick: bool) -> list[Workload]:
    """The workloads of a run: the first classic one and the sharded one carry the 10-version
    history; the larger classic one measures how first upload, update and publish grow."""
    if quick:
        return [
            Workload("classic", 1_000, 10),
            Workload("sharded", 150, 10, shard_rows=8),
            Workload("classic", 10_000, 2),
        ]
    return [
        Workload("classic", 10_000, 10),
        Workload("sharded", 150, 10, shard_rows=64),
        Workload("classic", 100_000, 2),
    ]

"""Shared pieces of the benchmarks: data generation, S3 helpers, result output."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from dandi_icechunk.testing import S3Server, run_seaweedfs


def make_chunked_v2(path: Path, *, total_bytes: int, chunk_bytes: int, seed: int = 0, per_directory: int = 1) -> int:
    """A DANDI-like Zarr v2 array of incompressible uint16 chunks written as files directly
    (zarr-python is slow at tens of thousands of chunks), ``per_directory`` chunk files in each
    directory (``<row>/<column>``). Returns the number of chunk files; chunk ``i`` is the file
    :func:`chunk_key` names."""
    plane = chunk_bytes // 2  # uint16 values per chunk
    n_chunks = max(1, total_bytes // chunk_bytes)
    zarr.create_array(
        str(path),
        shape=(-(-n_chunks // per_directory), per_directory * plane),  # a last row short of files: fill value
        chunks=(1, plane),
        dtype="<u2",
        fill_value=0,
        compressors=None,
        zarr_format=2,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    rng = np.random.default_rng(seed)
    for i in range(n_chunks):
        chunk = path / chunk_key(i, per_directory)
        chunk.parent.mkdir(exist_ok=True)
        chunk.write_bytes(rng.bytes(chunk_bytes))
    return n_chunks


def chunk_key(i: int, per_directory: int = 1) -> str:
    """The key of chunk ``i`` of :func:`make_chunked_v2`."""
    return f"{i // per_directory}/{i % per_directory}"


def change_chunks(path: Path, n_chunks: int, fraction: float, seed: int = 1) -> list[str]:
    """Rewrite a random ``fraction`` of the chunks of :func:`make_chunked_v2`; return their keys."""
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(n_chunks, size=max(1, int(n_chunks * fraction)), replace=False))
    keys = []
    for i in picked:
        chunk = path / str(i) / "0"
        chunk.write_bytes(rng.bytes(chunk.stat().st_size))
        keys.append(f"{i}/0")
    return keys


def local_files(path: Path) -> list[tuple[str, Path]]:
    """(key, path) of every file under a Zarr directory."""
    return sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())


def put_files_like_dandi_today(
    client: Any, bucket: str, prefix: str, files: Iterable[tuple[str, Path]], jobs: int
) -> int:
    """One PUT per file with its Content-MD5, ``jobs`` at a time: DANDI's presigned-PUT upload
    path without the API round trips. Returns bytes sent."""

    def put(item: tuple[str, Path]) -> int:
        key, path = item
        data = path.read_bytes()
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data, ContentMD5=md5)
        return len(data)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return sum(pool.map(put, list(files)))


def publish_sample(server: Any, src: Path, jobs: int) -> tuple[str, str]:
    """The Zarr ``src`` stored both as DANDI stores it today (``zarr/<zarr_id>/``, one PUT per
    file) and as a dandi-icechunk repository, on a bucket that lets anyone read both, as
    DANDI's does. Returns (zarr_id, snapshot_id)."""
    from dandi_icechunk.upload import upload_zarr

    zarr_id = str(uuid.uuid4())
    client = server.client()
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
        "Resource": [f"arn:aws:s3:::{server.bucket}/zarr/*", f"arn:aws:s3:::{server.bucket}/zarr-icechunk/*"]}]}
    client.put_bucket_policy(Bucket=server.bucket, Policy=json.dumps(policy))
    put_files_like_dandi_today(client, server.bucket, f"zarr/{zarr_id}", local_files(src), jobs)
    return zarr_id, upload_zarr(src, server.location(), zarr_id, jobs=jobs).snapshot_id


def warm_up(client: Any, bucket: str) -> None:
    """Make SeaweedFS allocate ``bucket``'s volumes (on its first write) before any timing: a
    fresh server's first write waits for them, 0.2 s for boto3 and 1.0 s for Icechunk's client,
    and no real bucket does that."""
    client.put_object(Bucket=bucket, Key="warm-up", Body=b"")
    client.delete_object(Bucket=bucket, Key="warm-up")


@contextlib.contextmanager
def fresh_server(data_dir: Path) -> Iterator[S3Server]:
    """A SeaweedFS of its own for one contender's run: its bucket written to once
    (:func:`warm_up`), and its data removed after, so runs of big Zarrs do not fill the disk."""
    try:
        with run_seaweedfs(data_dir) as server:
            warm_up(server.client(), server.bucket)
            yield server
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def rotated(keys: Iterable[str], round_: int) -> list[str]:
    """``keys`` in the order of round ``round_``: each round starts one later, so no contender
    always runs first (or right after the same one)."""
    order = list(keys)
    shift = round_ % len(order)
    return order[shift:] + order[:shift]


def update_like_dandi_today(client: Any, bucket: str, prefix: str, src: Path, jobs: int) -> int:
    """DANDI's re-upload of a changed Zarr: hash every local file, list the remote ETags, PUT
    the files that differ (overwriting in place). Returns the number of files PUT."""
    files = local_files(src)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        local = list(pool.map(lambda item: hashlib.md5(item[1].read_bytes()).hexdigest(), files))
    remote = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/"
    ):
        for obj in page.get("Contents", []):
            remote[obj["Key"][len(prefix) + 1 :]] = obj["ETag"].strip('"')
    todo = [(key, path) for (key, path), md5 in zip(files, local) if remote.get(key) != md5]
    put_files_like_dandi_today(client, bucket, prefix, todo, jobs)
    return len(todo)


def get_files(client: Any, bucket: str, keys: list[str], jobs: int) -> int:
    """GET every key, ``jobs`` at a time. Returns bytes received."""

    def get(key: str) -> int:
        return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return sum(pool.map(get, keys))


def prefix_usage(client: Any, bucket: str, prefix: str) -> tuple[int, int]:
    """(objects, bytes) stored under ``prefix``."""
    count = size = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            count += 1
            size += obj["Size"]
    return count, size


def md5_rate_one_core(nbytes: int = 256 * 1024 * 1024) -> float:
    """MD5 throughput of one core, in MB/s."""
    data = os.urandom(64 * 1024 * 1024)
    start = time.perf_counter()
    for _ in range(nbytes // len(data)):
        hashlib.md5(data).digest()
    return nbytes / (time.perf_counter() - start) / 1e6


def run_child(script: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``python SCRIPT --child PAYLOAD`` (a contender in its own process, so its peak RSS is
    its own); the JSON of its last output line, or ``{"error": ...}``."""
    done = subprocess.run([sys.executable, script, "--child", json.dumps(payload)],
                          capture_output=True, text=True, check=False, timeout=timeout)
    if done.returncode != 0:
        return {"error": done.stderr[-1500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def fresh_pages(nbytes: int) -> None:
    """Fill and free a NumPy array of ``nbytes``, then restart this process's peak RSS count, so
    that a contender starts with pages this machine has just used, whatever ran before it.

    This VM hands free memory back to its host (virtio balloon free page reporting). Zeroing a
    page the host must back again is about 3x slower, and NumPy asks for huge pages for a large
    array: a 1 GB read spent 44 % of its time in the kernel's ``clear_page`` after a pause or a
    small contender, 17 % right after a large one, so a reader's speed hung on its place in the
    order. Freeing an array of huge pages right before puts every contender in the second case.
    Fair only between contenders whose memory is alike (the read benchmark's output arrays): in
    ``big_objects.py`` it slowed the two contenders holding whole shards, not ours
    (``docs/big-objects.md``), so that benchmark runs without it."""
    block = np.ones(nbytes, dtype=np.uint8)
    del block
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def child_payload() -> dict[str, Any] | None:
    """The payload when this process is a child started by :func:`run_child`, else None."""
    return json.loads(sys.argv[2]) if sys.argv[1:2] == ["--child"] else None


def summarize_runs(runs: list[dict[str, Any]], nbytes: int | None = None) -> dict[str, Any]:
    """Median seconds, min-max, peak RSS (largest) and, given ``nbytes``, MB/s of the runs that
    succeeded; the last error when none did."""
    good = [r for r in runs if "s" in r]
    if not good:
        return {"error": runs[-1].get("error", "")}
    times = [r["s"] for r in good]
    out = {"s": statistics.median(times), "min_s": min(times), "max_s": max(times),
           "peak_rss_MB": max(r["peak_rss_MB"] for r in good), "rounds": len(times)}
    if nbytes is not None:
        out["MBps"] = nbytes / 1e6 / out["s"]
    return out


def pyplot() -> Any:
    """matplotlib's pyplot writing files only, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def median_bars(ax: Any, labels: dict[str, str], summary: dict[str, Any]) -> None:
    """Horizontal bars on ``ax``: the median seconds of each contender of ``labels`` (key ->
    label) that succeeded in ``summary`` (as :func:`summarize_runs` gives), min-max as error bars."""
    keys = [k for k in labels if "s" in summary[k]]
    medians = [summary[k]["s"] for k in keys]
    spread = [[m - summary[k]["min_s"] for k, m in zip(keys, medians, strict=True)],
              [summary[k]["max_s"] - m for k, m in zip(keys, medians, strict=True)]]
    ax.barh([labels[k] for k in keys], medians, xerr=spread, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median; bars: min-max)")


def peak_rss_mb() -> float:
    """This process's peak resident set since it started (``VmHWM``: unlike ``ru_maxrss``, not
    carried over from the parent it was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


PACKAGES = ("dandi-icechunk", "icechunk", "zarr", "xarray", "numpy", "tensorstore", "boto3")
"""The packages whose versions every result records: ratios move with them (zarr-python's read
path got faster between 3.1 and 3.4)."""


def package_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`PACKAGES` (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_results(out_dir: Path, name: str, results: dict[str, Any], table: str) -> None:
    """Write ``<name>.json`` (with the versions of :data:`PACKAGES`) and ``<name>.md`` and print
    the table."""
    results = {**results, "versions": package_versions()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2))
    (out_dir / f"{name}.md").write_text(table + "\n")
    print(table)

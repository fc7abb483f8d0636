"""Shared fixtures: one real SeaweedFS S3 server per test session, and storage locations."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import icechunk
import numpy as np
import pytest
import zarr
from zarr_checksum import compute_zarr_checksum
from zarr_checksum.generators import yield_files_local

from dandi_icechunk.archive.policy import dandi_bucket_policy
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.testing import S3Server, run_seaweedfs
from dandi_icechunk.upload import local_zarr

icechunk.set_logs_filter("error")

# tests/archive/ runs inside the patched dandi-archive (bash scripts/test-archive.sh)
collect_ignore = [] if importlib.util.find_spec("dandiapi") else ["archive"]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS on 127.0.0.1 (free ports, telemetry off), started once and stopped after."""
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(params=["s3", "file"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> StorageLocation:
    """A bucket on the S3 server (each test under its own prefix) or a local-filesystem bucket."""
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        return server.location(prefix=f"t-{uuid.uuid4().hex[:8]}")
    return StorageLocation(kind="file", bucket=str(tmp_path / "bucket"))


@pytest.fixture
def s3_location(s3_server: S3Server) -> StorageLocation:
    """A bucket prefix of its own on the S3 server."""
    return s3_server.location(prefix=f"t-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def zarr_id() -> str:
    """A fresh zarr_id."""
    return str(uuid.uuid4())


def reference_checksum(path: Path) -> str:
    """The dandi-zarr-checksum as the zarr_checksum package computes it on a directory."""
    return str(compute_zarr_checksum(yield_files_local(path)))


def tiny_chunk_zarr(path: Path, n_chunks: int, *, chunk: int = 1024, zarr_format: int = 2, seed: int = 0) -> Path:
    """A Zarr of one uint8 array of ``n_chunks`` uncompressed random chunks of ``chunk`` bytes
    (kept inside the manifests up to 4 KiB, ``docs/tiny-chunks.md``)."""
    array = zarr.create_array(str(path), shape=(n_chunks * chunk,), chunks=(chunk,), dtype="u1",
                              compressors=None, zarr_format=zarr_format)
    array[:] = np.random.default_rng(seed).integers(0, 256, size=array.shape, dtype="u1")
    return path


def chunk_objects(location: StorageLocation, zarr_id: str) -> set[str]:
    """The keys of the repository's chunk objects (``chunks/...``)."""
    repo = ZarrRepository.open(location, zarr_id)
    return {key for key, *_ in repo.objects.list_with_times("chunks/")}


def tree_bytes(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative POSIX key -> bytes)."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def edit_after_hashing(patch: pytest.MonkeyPatch, victim: Path) -> None:
    """Make every hashing pass of an upload end with an in-place edit of ``victim`` that keeps
    its size and modification time (what a writer racing the upload can do)."""
    real_index = local_zarr.LocalZarr.digest_index

    def hash_then_edit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        index = real_index(self, *args, **kwargs)
        st = victim.stat()
        data = bytearray(victim.read_bytes())
        data[0] ^= 0xFF
        victim.write_bytes(bytes(data))
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        return index

    patch.setattr(local_zarr.LocalZarr, "digest_index", hash_then_edit)


def copy_zarr(src: Path, dst: Path) -> Path:
    """A copy of a Zarr directory."""
    shutil.copytree(src, dst)
    return dst


UPLOADER = {
    "name": "uploader",
    "credentials": [{"accessKey": "uploader", "secretKey": "uploader-secret"}],
    "actions": [f"{a}:dandiarchive/zarr-icechunk/*" for a in ("Read", "Write", "List")],
}


@pytest.fixture(scope="session")
def locked_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS with a versioned, Object-Lock bucket (default GOVERNANCE retention of one day,
    as the archive would configure it) and an ``uploader`` identity that may read, write, list
    and delete under ``zarr-icechunk/``: the strongest uploader credential there could be."""
    with run_seaweedfs(
        tmp_path_factory.mktemp("seaweedfs-locked"), object_lock=True, identities=[UPLOADER]
    ) as server:
        server.client().put_object_lock_configuration(
            Bucket=server.bucket,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
            },
        )
        yield server


class InterruptAfter:
    """A Progress that sends this process SIGINT (Ctrl-C) after ``n`` chunks are written."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.writing = False
        # A shell's background job starts with SIGINT ignored; Ctrl-C must raise here all the same.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def start(self, label: str, files: int, nbytes: int) -> None:
        self.writing = label == "uploading"

    def advance(self, files: int, nbytes: int) -> None:
        if self.writing:
            self.n -= files
            if self.n == 0:
                os.kill(os.getpid(), signal.SIGINT)

    def finish(self) -> None:
        pass


@pytest.fixture(scope="session")
def public_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS whose bucket policy lets anyone GET under ``zarr-icechunk/`` (public Zarrs) and
    nothing else: ``zarr-icechunk-embargoed/`` stays private."""
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs-public")) as server:
        policy = {
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{server.bucket}/zarr-icechunk/*",
            }],
        }
        server.client().put_bucket_policy(Bucket=server.bucket, Policy=json.dumps(policy))
        yield server


@pytest.fixture(scope="session")
def dandi_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS with DANDI's own bucket policy: anyone may get and list everything, except the
    embargoed repositories' prefix and objects tagged ``embargoed=true`` (the archive's ``admin``
    identity is exempt)."""
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs-dandi")) as server:
        policy = dandi_bucket_policy(server.bucket, archive_usernames=["admin"])
        server.client().put_bucket_policy(Bucket=server.bucket, Policy=json.dumps(policy))
        yield server


@pytest.fixture(scope="session")
def iam_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS with its IAM API writable, so the archive identity can vend credentials."""
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs-iam"), iam_writable=True) as server:
        yield server

"""Example Zarrs shaped like DANDI's, and a loopback S3 server, for the demo, tests and benchmarks.

>>> make_ome_zarr_v2("sample.ome.zarr", levels=2, separator="/")
>>> make_zarr_v3("sample.zarr", shape=(64, 256, 256), chunks=(16, 64, 64), shards=(32, 128, 128))
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc

from ..location import S3Credentials, StorageLocation


def _pattern(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Noisy but compressible uint16 data, different per seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4096, size=shape, dtype=np.uint16)


def make_ome_zarr_v2(
    path: str | Path,
    *,
    shape: tuple[int, int, int] = (16, 64, 64),
    chunks: tuple[int, int, int] = (8, 32, 32),
    levels: int = 2,
    separator: str = "/",
    seed: int = 0,
) -> Path:
    """An OME-NGFF 0.4 multiscale image in Zarr v2 (what most DANDI Zarrs are)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for level in range(levels):
        factor = 2**level
        level_shape = (shape[0], shape[1] // factor, shape[2] // factor)
        array = root.create_array(
            str(level),
            shape=level_shape,
            chunks=chunks,
            dtype="<u2",
            chunk_key_encoding={"name": "v2", "separator": separator},
            compressors=Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE) if level == 0 else None,
            fill_value=0,
        )
        array[:] = _pattern(level_shape, seed + level)
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, float(factor), float(factor)]}
                ],
            }
        )
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": Path(path).name,
            "axes": [
                {"name": "z", "type": "space", "unit": "micrometer"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": datasets,
        }
    ]
    return Path(path)


def make_zarr_v3(
    path: str | Path,
    *,
    shape: tuple[int, ...] = (16, 64, 64),
    chunks: tuple[int, ...] = (8, 32, 32),
    shards: tuple[int, ...] | None = None,
    seed: int = 0,
    name: str = "data",
) -> Path:
    """A Zarr v3 group with one array ``name`` (sharded when ``shards`` is given)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = root.create_array(
        name, shape=shape, chunks=chunks, shards=shards, dtype="<u2", fill_value=0,
        dimension_names=[f"d{i}" for i in range(len(shape))],
    )
    array[:] = _pattern(shape, seed)
    return Path(path)


_SEAWEEDFS_ACCOUNT = "arn:aws:iam::000000000000"  # its default account


@dataclass(frozen=True)
class S3Server:
    """A running S3 server on loopback and the admin credentials of its bucket."""

    endpoint_url: str
    bucket: str
    access_key_id: str
    secret_access_key: str

    def location(self, prefix: str = "") -> StorageLocation:
        """A storage location in this server's bucket, with the admin credentials."""
        return StorageLocation(
            kind="s3",
            bucket=self.bucket,
            prefix=prefix,
            endpoint_url=self.endpoint_url,
            credentials=S3Credentials(self.access_key_id, self.secret_access_key),
        )

    @staticmethod
    def role_arn(role: str) -> str:
        """The ARN of a role made with ``run_seaweedfs(sts_role=role)``."""
        return f"{_SEAWEEDFS_ACCOUNT}:role/{role}"

    def client(self) -> Any:
        """A boto3 S3 client with the admin credentials."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


def synthetic_key(i: int) -> str:
    """The key of file ``i`` of a :func:`synthetic_snapshot`."""
    return f"0/c/{i // 1000}/{i % 1000}"


def synthetic_snapshot(location: StorageLocation, n_files: int) -> tuple[str, str]:
    """A repository whose one snapshot names a digest index of ``n_files`` chunk files
    (:func:`synthetic_key`, 25 kB each, as in DANDI's largest Zarr) and a root group: what
    readers of the index see of a Zarr that size, without its bytes. (zarr_id, snapshot)."""
    from ..index import DigestIndex, FileDigest, store_index
    from ..session import CommitInfo, ZarrRepository

    group = b'{"zarr_format":3,"node_type":"group","attributes":{}}'
    zarr_id = str(uuid.uuid4())
    repo = ZarrRepository.open(location, zarr_id, create=True)
    files = {synthetic_key(i): FileDigest(hashlib.md5(i.to_bytes(8, "big")).hexdigest(), 25_000)
             for i in range(n_files)}
    index = DigestIndex(3, {**files, "zarr.json": FileDigest.of(group)},
                        {"zarr.json": group})
    info = CommitInfo(zarr_checksum=index.zarr_checksum(), file_count=index.file_count, size=index.size,
                      index_id=store_index(repo.objects, index), zarr_format=3, user="synthetic")
    session = repo.writable_session()
    zarr.open_group(session.store, mode="w")
    return zarr_id, repo.commit(session, "synthetic", lambda parent: info)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (the system's pick, bound and let go):
    for a server about to start, or an address that refuses connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_port_pair(taken: set[int]) -> int:
    """A free port P whose gRPC companion P+10000 is free too (SeaweedFS's default offset), and
    neither of them one of ``taken`` (the ports and companions already given out, which
    SeaweedFS refuses to share); both are added to ``taken``."""
    while True:
        port = free_port()
        if port + 10000 > 65535 or {port, port + 10000} & taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        taken.update({port, port + 10000})
        return port


def _sts_config(bucket: str, role: str) -> dict[str, Any]:
    """SeaweedFS's IAM config for STS: one role, trusted by the admin, allowed all of ``bucket``."""
    return {
        "sts": {"tokenDuration": "1h", "maxSessionLength": "1h", "issuer": "dandi-icechunk-tests",
                "signingKey": base64.b64encode(os.urandom(32)).decode()},
        "policy": {"defaultEffect": "Deny"},
        "policies": [{"name": "bucket", "document": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:*"],
             "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}}],
        "roles": [{"roleName": role, "roleArn": S3Server.role_arn(role), "attachedPolicies": ["bucket"],
                   "maxSessionDuration": 3600,
                   "trustPolicy": {"Version": "2012-10-17", "Statement": [
                       {"Effect": "Allow", "Principal": {"AWS": f"{_SEAWEEDFS_ACCOUNT}:user/admin"},
                        "Action": ["sts:AssumeRole"]}]}}],
    }


@contextmanager
def run_seaweedfs(
    data_dir: str | Path,
    *,
    bucket: str = "dandiarchive",
    object_lock: bool = False,
    identities: list[dict[str, Any]] | None = None,
    iam_writable: bool = False,
    sts_role: str | None = None,
) -> Iterator[S3Server]:
    """Start SeaweedFS (``weed mini``) on 127.0.0.1 with free ports, make ``bucket``, stop after.

    ``object_lock`` makes the bucket with Object Lock (and so versioning) enabled; ``identities``
    adds SeaweedFS identities (``{"name", "credentials", "actions"}``) beside the admin one;
    ``iam_writable`` lets the admin create IAM users and policies (credential vending);
    ``sts_role`` (a name) defines that role, which the admin may assume through STS and which
    may do anything in ``bucket``; its ARN is ``S3Server.role_arn(sts_role)``.
    Every listener is bound to loopback and telemetry is off; nothing leaves the machine.
    """
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    access, secret = "dandi-admin", "dandi-admin-secret"
    admin = {
        "name": "admin",
        "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config = data / "identities.json"
    config.write_text(json.dumps({"identities": [admin, *(identities or [])]}))
    iam_config = data / "iam.json"
    if sts_role is not None:
        iam_config.write_text(json.dumps(_sts_config(bucket, sts_role)))
    taken: set[int] = set()
    ports = {name: _free_port_pair(taken) for name in ("master", "volume", "filer", "s3", "admin")}
    command = [
        weed, "mini", f"-dir={data / 'store'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-admin.ui=false", "-master.telemetry=false", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        *(["-s3.iam.readOnly=false"] if iam_writable else []),
        *([f"-s3.iam.config={iam_config}"] if sts_role is not None else []),
    ]
    (data / "store").mkdir(exist_ok=True)
    log = open(data / "weed.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", bucket, access, secret)
    try:
        client = server.client()
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=object_lock)
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"SeaweedFS did not start; see {data / 'weed.log'}"
                    ) from None
                time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL on loopback: connect with :attr:`url` (user ``postgres``, no password)."""

    port: int
    database: str

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def conninfo(self) -> str:
        """The libpq keyword form of :attr:`url`."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={self.database}"


@contextmanager
def run_postgres(
    *, database: str = "django", server_options: Sequence[str] = ("fsync=off",)
) -> Iterator[Postgres]:
    """Start a throwaway PostgreSQL cluster (Debian ``postgresql``) on 127.0.0.1 with a free port
    and trust authentication, create ``database``; stop it and delete its files after. As root
    the cluster runs as the ``postgres`` user, in a directory of its own under the temp dir.
    ``server_options`` are ``name=value`` server settings (tests skip fsync; benchmarks keep it)."""
    bin_dir = _postgres_bin_dir()
    data = Path(tempfile.mkdtemp(prefix="dandi-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    cluster, log = data / "cluster", data / "postgres.log"
    port = _free_port_pair(set())
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(cluster)]
    try:
        _run_postgres_tool([str(bin_dir / "initdb"), "-D", str(cluster), "-U", "postgres",
                            "--auth=trust", "--no-sync", "-E", "UTF8"])
        options = " ".join([f"-c listen_addresses=127.0.0.1 -c port={port} -k {data}",
                            *(f"-c {o}" for o in server_options)])
        _run_postgres_tool([*pg_ctl, "-l", str(log), "-o", options, "-w", "start"])
        try:
            if database != "postgres":
                _run_postgres_tool([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                                    "-U", "postgres", database])
            yield Postgres(port, database)
        finally:
            _run_postgres_tool([*pg_ctl, "-m", "immediate", "stop"])
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _run_postgres_tool(command: list[str]) -> None:
    tool = Path(command[0]).name
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        command = ["runuser", "-u", "postgres", "--", *command]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{tool} failed: {(result.stderr or result.stdout).strip()}")


def _postgres_bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
    return found[-1].parent


def draft_zarr_asset(
    zarr_id: str, path: str, zarr_checksum: str, size: int, *, dandiset_id: str = "000123",
    version: str = "0.260101.1200",
) -> dict[str, Any]:
    """Metadata of a Zarr asset as the archive hands it to the publish hook: the published form
    of the draft asset, with every computed key (``datePublished``, ``publishedBy``, ...)."""
    from dandischema.consts import DANDI_SCHEMA_VERSION  # the archive extra

    asset_id = str(uuid.uuid4())
    when = "2026-01-01T12:00:00+00:00"
    return {
        "schemaKey": "Asset",
        "schemaVersion": DANDI_SCHEMA_VERSION,
        "id": f"dandiasset:{asset_id}",
        "identifier": asset_id,
        "path": path,
        "encodingFormat": "application/x-zarr",
        "contentSize": size,
        "digest": {"dandi:dandi-zarr-checksum": zarr_checksum},
        "contentUrl": [
            f"https://api.dandiarchive.org/api/assets/{asset_id}/download/",
            f"https://dandiarchive.s3.amazonaws.com/zarr/{zarr_id}/",
        ],
        "access": [{"schemaKey": "AccessRequirements", "status": "dandi:OpenAccess"}],
        "dateModified": when,
        "datePublished": when,
        "publishedBy": {
            "schemaKey": "PublishActivity",
            "id": f"urn:uuid:{uuid.uuid4()}",
            "name": "DANDI publish",
            "startDate": when,
            "endDate": when,
            "wasAssociatedWith": [{
                "schemaKey": "Software",
                "id": "RRID:SCR_017571",
                "identifier": "RRID:SCR_017571",
                "name": "DANDI API",
                "version": "0.1.0",
            }],
        },
    }

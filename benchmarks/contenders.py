"""The four ways of keeping versions of a Zarr that the comparison measures side by side.

Each contender gets its own bucket on the same SeaweedFS server and runs in its own process
(so its peak memory is its own). The driver calls, for every version of the workload,
``upload`` (then ``publish`` for versions 1, 5 and 10), and at the end ``read`` and ``storage``.

- ``DandiToday``: every file PUT as its own object (boto3, Content-MD5); an update re-hashes
  the local files, lists the remote ETags and PUTs what differs, overwriting in place. The bucket
  is versioned (as DANDI's is), so old objects are kept, but no version of the Zarr can be
  named: it cannot publish, and only the latest state can be read.
- ``DandiProposal``: DANDI's versioned-Zarr design doc: the same uploads into a versioned
  bucket, then a finalize step that lists the object versions, inserts one PostgreSQL row per
  file per Zarr version and writes the version's manifest (zarr-manifests layout). A version is
  read through its rows: every GET names its S3 version ID.
- ``IcechunkDirect``: what a lab can do with Icechunk and zarr-python alone: copy the arrays
  into a session and commit; for an update, write the regions it knows it changed (the best
  case: without a diff of its own it would have to copy everything again); publish = a tag.
- ``DandiIcechunk``: ours (``upload_zarr`` with the digest cache, ``publish_dandiset``,
  ``open_zarr`` by snapshot ID).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import icechunk
import obstore
import zarr
from common import Timer, local_files, put_files_like_dandi_today, update_like_dandi_today, warm_up
from dandischema.metadata import validate
from obstore.store import S3Store
from workloads import Workload, array_digest
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import ObjectStore

from dandi_icechunk.archive_hooks import publish_dandiset
from dandi_icechunk.location import S3Credentials, StorageLocation
from dandi_icechunk.read import open_zarr
from dandi_icechunk.read.manifest import manifest_document
from dandi_icechunk.testing import draft_zarr_asset
from dandi_icechunk.upload import upload_zarr
from dandi_icechunk.upload.digest_cache import DigestCache

DANDISET = "000123"


class Contender:
    """Shared plumbing: the bucket, a boto3 client, an obstore store, timing of reads."""

    label = ""

    def __init__(self, cfg: dict[str, Any], bucket: str, workload: Workload) -> None:
        self.cfg = cfg
        self.bucket = bucket
        self.workload = workload
        self.jobs: int = cfg["jobs"]
        self.zarr_id = str(uuid.uuid4())
        self.client = boto3.client(
            "s3",
            endpoint_url=cfg["endpoint_url"],
            region_name="us-east-1",
            aws_access_key_id=cfg["access_key_id"],
            aws_secret_access_key=cfg["secret_access_key"],
        )
        self.client.create_bucket(Bucket=bucket)
        warm_up(self.client, bucket)

    def obstore(self, prefix: str) -> S3Store:
        return S3Store(
            self.bucket,
            prefix=prefix,
            config={
                "endpoint": self.cfg["endpoint_url"],
                "region": "us-east-1",
                "access_key_id": self.cfg["access_key_id"],
                "secret_access_key": self.cfg["secret_access_key"],
                "virtual_hosted_style_request": False,
            },
            client_options={"allow_http": True, "pool_max_idle_per_host": str(self.jobs)},
        )

    def upload(self, src: Path, version: int, changed: list[int]) -> dict[str, float]:
        raise NotImplementedError

    def publish(self, version: int) -> float | None:
        """Seconds to make ``version`` a citable, immutable version (None: cannot)."""
        return None

    def open_array(self, version: int) -> zarr.Array | None:
        """The array as of ``version`` (None: that version cannot be read)."""
        raise NotImplementedError

    def read(self, version: int) -> dict[str, Any] | None:
        """Read the whole array at ``version``: seconds, MB/s and the digest of what was read."""
        start = time.perf_counter()
        array = self.open_array(version)
        if array is None:
            return None
        data = array[...]
        seconds = time.perf_counter() - start
        return {"s": seconds, "MBps": data.nbytes / 1e6 / seconds, "digest": array_digest(data)}

    def storage(self) -> dict[str, int]:
        """Bytes stored: every object version in the bucket (plus what else the design keeps)."""
        return {"objects": self._bucket_bytes()}

    def _bucket_bytes(self, prefix: str = "") -> int:
        total = 0
        for page in self.client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            total += sum(v["Size"] for v in page.get("Versions", []))
        return total


class DandiToday(Contender):
    label = "DANDI today"

    def __init__(self, cfg: dict[str, Any], bucket: str, workload: Workload) -> None:
        super().__init__(cfg, bucket, workload)
        self.client.put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        self.prefix = f"zarr/{self.zarr_id}"
        self.latest = 0

    def upload(self, src: Path, version: int, changed: list[int]) -> dict[str, float]:
        with Timer() as t:
            self._sync(src)
        self.latest = version
        return {"s": t.seconds}

    def _sync(self, src: Path) -> None:
        if self.latest:
            update_like_dandi_today(self.client, self.bucket, self.prefix, src, self.jobs)
        else:
            put_files_like_dandi_today(
                self.client, self.bucket, self.prefix, local_files(src), self.jobs
            )

    def open_array(self, version: int) -> zarr.Array | None:
        if version != self.latest:
            return (
                None  # overwritten in place: older states exist as object versions nobody can name
            )
        return zarr.open_array(ObjectStore(self.obstore(self.prefix), read_only=True), mode="r")


class _VersionedObjectStore(ObjectStore):
    """Read-only zarr store whose every GET names the S3 version ID its key had in one Zarr
    version (what the proposal's per-chunk redirects resolve to, without the redirect)."""

    def __init__(self, store: S3Store, versions: dict[str, str]) -> None:
        super().__init__(store, read_only=True)
        self._versions = versions

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        version = self._versions.get(key)
        if version is None:
            return None
        options: dict[str, Any] = {"version": version}
        if isinstance(byte_range, RangeByteRequest):
            options["range"] = (byte_range.start, byte_range.end)
        elif isinstance(byte_range, OffsetByteRequest):
            options["range"] = {"offset": byte_range.offset}
        elif isinstance(byte_range, SuffixByteRequest):
            options["range"] = {"suffix": byte_range.suffix}
        response = await obstore.get_async(self.store, key, options=options)
        return prototype.buffer.from_bytes(await response.bytes_async())  # type: ignore[arg-type]

    async def exists(self, key: str) -> bool:
        return key in self._versions


class DandiProposal(DandiToday):
    label = "DANDI's proposal"

    def __init__(self, cfg: dict[str, Any], bucket: str, workload: Workload) -> None:
        super().__init__(cfg, bucket, workload)
        import psycopg
        from psycopg.conninfo import make_conninfo

        database = f"proposal_{self.zarr_id.replace('-', '')}"  # one per workload: sizes stay apart
        with psycopg.connect(cfg["postgres"], autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {database}")
        self.db = psycopg.connect(make_conninfo(cfg["postgres"], dbname=database), autocommit=True)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS zarr_version (id serial PRIMARY KEY, zarr_id uuid NOT NULL,"
            " version int NOT NULL, created timestamptz NOT NULL DEFAULT now(), UNIQUE (zarr_id, version));"
            "CREATE TABLE IF NOT EXISTS zarr_file_version (zarr_version_id int NOT NULL"
            " REFERENCES zarr_version, key text NOT NULL, s3_version_id text NOT NULL,"
            " size bigint NOT NULL, etag text NOT NULL, PRIMARY KEY (zarr_version_id, key))"
        )
        self.finalize_s: dict[int, float] = {}

    def upload(self, src: Path, version: int, changed: list[int]) -> dict[str, float]:
        with Timer() as sync:
            self._sync(src)
        with Timer() as finalize:
            self._finalize(version)
        self.latest = version
        self.finalize_s[version] = finalize.seconds
        return {"s": sync.seconds + finalize.seconds, "finalize_s": finalize.seconds}

    def _finalize(self, version: int) -> None:
        latest: list[tuple[str, str, str, int, str]] = []
        for page in self.client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/"
        ):
            for v in page.get("Versions", []):
                if v["IsLatest"]:
                    latest.append(
                        (
                            v["Key"][len(self.prefix) + 1 :],
                            v["VersionId"],
                            v["LastModified"].isoformat(),
                            v["Size"],
                            v["ETag"].strip('"'),
                        )
                    )
        with self.db.transaction():
            (row_id,) = self.db.execute(
                "INSERT INTO zarr_version (zarr_id, version) VALUES (%s, %s) RETURNING id",
                (self.zarr_id, version),
            ).fetchone()
            with self.db.cursor().copy(
                "COPY zarr_file_version (zarr_version_id, key, s3_version_id, size, etag) FROM STDIN"
            ) as copy:
                for key, version_id, _, size, etag in latest:
                    copy.write_row((row_id, key, version_id, size, etag))
        manifest = manifest_document(latest, zarr_checksum="")
        self.client.put_object(
            Bucket=self.bucket,
            Key=f"zarr-manifests-v2/{self.zarr_id}/{version}.json",
            Body=json.dumps(manifest, separators=(",", ":")).encode(),
        )

    def publish(self, version: int) -> float | None:
        return self.finalize_s[version]  # finalizing is what makes a Zarr version citable here

    def open_array(self, version: int) -> zarr.Array | None:
        rows = self.db.execute(
            "SELECT f.key, f.s3_version_id FROM zarr_file_version f JOIN zarr_version v"
            " ON v.id = f.zarr_version_id WHERE v.zarr_id = %s AND v.version = %s",
            (self.zarr_id, version),
        ).fetchall()
        return zarr.open_array(
            _VersionedObjectStore(self.obstore(self.prefix), dict(rows)), mode="r"
        )

    def storage(self) -> dict[str, int]:
        (database,) = self.db.execute(
            "SELECT pg_total_relation_size('zarr_version') + pg_total_relation_size('zarr_file_version')"
        ).fetchone()
        return {
            "objects": self._bucket_bytes(f"{self.prefix}/"),
            "manifests": self._bucket_bytes("zarr-manifests-v2/"),
            "database": int(database),
        }


class IcechunkDirect(Contender):
    label = "Icechunk used directly"

    def __init__(self, cfg: dict[str, Any], bucket: str, workload: Workload) -> None:
        super().__init__(cfg, bucket, workload)
        location = _location(cfg, bucket)
        self.repo = icechunk.Repository.create(location.icechunk_storage(self.zarr_id))
        self.snapshots: dict[int, str] = {}

    def upload(self, src: Path, version: int, changed: list[int]) -> dict[str, float]:
        with Timer() as t:
            source = zarr.open_array(str(src), mode="r")
            session = self.repo.writable_session("main")
            if version == 1:
                target = zarr.create_array(
                    session.store,
                    shape=source.shape,
                    chunks=source.chunks,
                    shards=source.shards,
                    dtype=source.dtype,
                    fill_value=source.fill_value,
                    compressors=None,
                    zarr_format=3,
                )
                rows = self._slab_rows(source)
                regions = [slice(i, i + rows) for i in range(0, source.shape[0], rows)]
            else:
                target = zarr.open_array(session.store, mode="r+")
                regions = [self.workload.rows_of(i) for i in changed]
            for region in regions:
                target[region] = source[region]
            self.snapshots[version] = session.commit(f"version {version}")
        return {"s": t.seconds}

    def _slab_rows(self, source: zarr.Array) -> int:
        """Copy in slabs of whole shards of about 64 MB, not the whole array at once."""
        row_bytes = source.nbytes // source.shape[0]
        return max(
            self.workload.shard_rows,
            (64 * 2**20 // row_bytes) // self.workload.shard_rows * self.workload.shard_rows,
        )

    def publish(self, version: int) -> float | None:
        with Timer() as t:
            self.repo.create_tag(f"v{version}", self.snapshots[version])
        return t.seconds

    def open_array(self, version: int) -> zarr.Array | None:
        session = self.repo.readonly_session(snapshot_id=self.snapshots[version])
        return zarr.open_array(session.store, mode="r")


class DandiIcechunk(Contender):
    label = "dandi-icechunk"

    def __init__(self, cfg: dict[str, Any], bucket: str, workload: Workload) -> None:
        super().__init__(cfg, bucket, workload)
        self.location = _location(cfg, bucket)
        self.cache = DigestCache(Path(cfg["work"]) / f"digest-cache-{bucket}")
        self.uploads: dict[int, Any] = {}
        # The archive's server process has dandischema's JSON schema loaded long before a
        # publish; load it here too (0.6 s, once per process) so publish times are steady-state.
        with contextlib.suppress(Exception):
            validate(
                draft_zarr_asset(self.zarr_id, "x.zarr", "", 0),
                schema_key="PublishedAsset",
                json_validation=True,
            )

    def upload(self, src: Path, version: int, changed: list[int]) -> dict[str, float]:
        with Timer() as t:
            self.uploads[version] = upload_zarr(
                src,
                self.location,
                self.zarr_id,
                jobs=self.jobs,
                digest_cache=self.cache,
                dandiset=DANDISET,
            )
        return {"s": t.seconds}

    def publish(self, version: int) -> float | None:
        result = self.uploads[version]
        asset = draft_zarr_asset(
            self.zarr_id, "sample.zarr", result.zarr_checksum, result.size, dandiset_id=DANDISET
        )
        with Timer() as t:
            publish_dandiset(DANDISET, f"0.2611{version:02d}.1200", [asset], location=self.location)
        return t.seconds

    def open_array(self, version: int) -> zarr.Array | None:
        array = open_zarr(
            self.zarr_id, location=self.location, snapshot_id=self.uploads[version].snapshot_id
        )
        assert isinstance(array, zarr.Array)
        return array


CONTENDERS: dict[str, type[Contender]] = {
    "today": DandiToday,
    "proposal": DandiProposal,
    "direct": IcechunkDirect,
    "ours": DandiIcechunk,
}


def _location(cfg: dict[str, Any], bucket: str) -> StorageLocation:
    return StorageLocation(
        kind="s3",
        bucket=bucket,
        prefix="",
        endpoint_url=cfg["endpoint_url"],
        credentials=S3Credentials(cfg["access_key_id"], cfg["secret_access_key"]),
    )


def physical_limits(cfg: dict[str, Any], src: Path) -> dict[str, float]:
    """Raw parallel PUT and GET of the workload's files with a Rust client (obstore), the same
    concurrency: the fastest this server and machine move these bytes."""
    limits = Contender(cfg, "limits", Workload("classic", 0, 0))
    store = limits.obstore("raw")
    files = local_files(src)
    nbytes = sum(p.stat().st_size for _, p in files)

    async def transfer(one: Any, keys: list[Any]) -> None:
        semaphore = asyncio.Semaphore(limits.jobs)

        async def bounded(key: Any) -> None:
            async with semaphore:
                await one(key)

        await asyncio.gather(*(bounded(k) for k in keys))

    async def put(item: tuple[str, Path]) -> None:
        await obstore.put_async(store, item[0], item[1].read_bytes())

    async def get(key: str) -> None:
        await (await obstore.get_async(store, key)).bytes_async()

    with Timer() as put_time:
        asyncio.run(transfer(put, files))
    with Timer() as get_time:
        asyncio.run(transfer(get, [k for k, _ in files]))
    return {
        "put_MBps": nbytes / 1e6 / put_time.seconds,
        "get_MBps": nbytes / 1e6 / get_time.seconds,
    }

"""Plain object access to a repository's prefix, for what dandi-icechunk keeps beside Icechunk.

Icechunk owns its own objects (``repo``, ``snapshots/``, ``manifests/``, ``chunks/``, ...). Our
digest indexes live in the same repository prefix under ``dandi/`` so that one prefix-scoped
credential covers both. Objects are written once and never changed (content-addressed keys).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import boto3
import botocore.config
import botocore.exceptions
import botocore.loaders
import botocore.session
import urllib3.exceptions
from botocore.credentials import RefreshableCredentials

from .errors import AccessDeniedError, StorageLocationError
from .location import CredentialsProvider, StorageLocation

DEFAULT_JOBS = 16
"""Parallel transfers to storage, unless told otherwise (``-J``)."""
REPO_OBJECT = "repo"
"""Icechunk's one mutable object per repository: it names the branches, tags and snapshots."""
_READ_ATTEMPTS = 3
_DENIED = frozenset({"403", "AccessDenied", "Forbidden"})
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


@contextlib.contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    """S3 failures as our errors, decided by S3's error code: refused (403) is
    :class:`AccessDeniedError`; any other error, a cut connection or a truncated response is one
    line of :class:`StorageLocationError`."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _DENIED:
            raise AccessDeniedError(f"access to {what} was refused (S3 {code})") from None
        raise StorageLocationError(f"{what}: S3 answered {code or 'an error'}") from None
    except (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise StorageLocationError(
            f"{what}: the connection to the S3 server failed ({type(exc).__name__}); "
            "check the server and run again"
        ) from None


class RepositoryObjects(Protocol):
    """Write-once objects under one repository prefix; keys are relative to that prefix."""

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or ``None`` when it does not exist."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists; raises :class:`AccessDeniedError` when the storage refuses."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` unless ``key`` exists; return whether this call wrote it."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key``, replacing what is there."""
        ...

    def list_with_times(self, prefix: str = "") -> Iterator[tuple[str, int, datetime]]:
        """Yield ``(key, size, last modified)`` of every object under ``prefix``."""
        ...

    def delete(self, key: str) -> None:
        """Delete ``key`` (on a versioned bucket: add a delete marker)."""
        ...


@dataclass(frozen=True)
class ObjectVersion:
    """One version of an object (or a delete marker) in a versioned bucket."""

    key: str
    version_id: str
    is_latest: bool
    is_delete_marker: bool
    size: int = 0
    etag: str = ""


class VersionedObjects(RepositoryObjects, Protocol):
    """Objects in a versioned bucket: old versions can be listed and brought back."""

    def versions(self, prefix: str = "") -> Iterator[ObjectVersion]:
        """Every version and delete marker under ``prefix``."""
        ...

    def restore(self, key: str, version_id: str) -> None:
        """Make version ``version_id`` of ``key`` the latest again (server-side copy)."""
        ...

    def legal_hold(self, key: str, version_id: str) -> None:
        """Put an Object Lock legal hold on one version: nobody can delete it until released."""
        ...


class _LocalObjects:
    def __init__(self, root: Path) -> None:
        self._root = root

    def get(self, key: str) -> bytes | None:
        try:
            return (self._root / key).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return (self._root / key).is_file()

    @contextlib.contextmanager
    def _staged(self, key: str, data: bytes) -> Iterator[tuple[str, Path]]:
        """``data`` in a temporary file beside the path of ``key`` (gone afterwards)."""
        path = self._root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            yield tmp, path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put(self, key: str, data: bytes) -> None:
        with self._staged(key, data) as (tmp, path):
            os.replace(tmp, path)  # atomic

    def put_if_absent(self, key: str, data: bytes) -> bool:
        with self._staged(key, data) as (tmp, path):
            try:
                os.link(tmp, path)  # atomic, and fails if the key exists
                return True
            except FileExistsError:
                return False

    def list_with_times(self, prefix: str = "") -> Iterator[tuple[str, int, datetime]]:
        base = self._root / prefix
        if not base.is_dir():
            return
        for dirpath, _, files in os.walk(base):
            for name in files:
                if not name.startswith(".tmp-"):
                    path = Path(dirpath) / name
                    try:
                        st = path.stat()
                    except FileNotFoundError:  # renamed or deleted since the walk listed it (a write in flight)
                        continue
                    modified = datetime.fromtimestamp(st.st_mtime, UTC)
                    yield path.relative_to(self._root).as_posix(), st.st_size, modified

    def delete(self, key: str) -> None:
        (self._root / key).unlink(missing_ok=True)


# Loading botocore's S3 service model took ~0.1 s per client; the loader caches the parsed
# (read-only) model files, so all our clients share one.
_SERVICE_MODELS = botocore.loaders.create_loader()


def _refreshing_session(provider: CredentialsProvider | None) -> botocore.session.Session:
    """A botocore session whose credentials come from ``provider``, refreshed before expiry."""
    session = botocore.session.get_session()
    session.register_component("data_loader", _SERVICE_MODELS)
    if provider is None:
        return session

    def fetch() -> dict[str, str]:
        fresh = provider()
        expiry = fresh.expires_at or datetime.now(UTC) + timedelta(hours=12)
        return {
            "access_key": fresh.access_key_id,
            "secret_key": fresh.secret_access_key,
            "token": fresh.session_token or "",
            "expiry_time": expiry.isoformat(),
        }

    session._credentials = _VendedCredentials.create_from_metadata(  # noqa: SLF001
        metadata=fetch(), refresh_using=fetch, method="dandi-icechunk-vended"
    )
    return session


class _VendedCredentials(RefreshableCredentials):
    """Refresh when the provider's credentials expire, not 10-15 minutes before (botocore's
    default margins), which vended credentials of a few minutes would never get out of."""

    _advisory_refresh_timeout = 2
    _mandatory_refresh_timeout = 1


_ENV_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def _s3_client(location: StorageLocation) -> Any:
    """A boto3 S3 client for ``location``; one per location (and, when the location names no
    credentials, per AWS environment), as making one costs ~40 ms and clients are thread-safe."""
    from_env = () if location.credentials or location.credentials_provider or location.anonymous else tuple(
        os.environ.get(name) for name in _ENV_CREDENTIALS
    )
    return _cached_s3_client(location, from_env)


@functools.lru_cache(maxsize=64)
def _cached_s3_client(location: StorageLocation, _environment: tuple[str | None, ...]) -> Any:
    creds = None if location.credentials_provider else location.credentials
    config = botocore.config.Config(
        max_pool_connections=32,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"} if location.endpoint_url else None,
        signature_version=botocore.UNSIGNED if location.anonymous else None,
    )
    session = boto3.Session(botocore_session=_refreshing_session(location.credentials_provider))
    return session.client(
        "s3",
        endpoint_url=location.endpoint_url,
        region_name=location.region or "us-east-1",
        aws_access_key_id=creds.access_key_id if creds else None,
        aws_secret_access_key=creds.secret_access_key if creds else None,
        aws_session_token=creds.session_token if creds else None,
        config=config,
    )


class _S3Objects:
    def __init__(self, location: StorageLocation, prefix: str) -> None:
        self._client = _s3_client(location)
        self._bucket = location.bucket
        self._prefix = prefix

    def _key(self, key: str) -> str:
        return f"{self._prefix}/{key}"

    def _url(self, key: str) -> str:
        return f"s3://{self._bucket}/{self._key(key)}"

    def get(self, key: str) -> bytes | None:
        # A response cut short is read again: the object is write-once, so a retry is safe.
        for attempt in range(_READ_ATTEMPTS):
            try:
                with _storage_errors(f"reading {self._url(key)}"):
                    try:
                        response = self._client.get_object(Bucket=self._bucket, Key=self._key(key))
                    except botocore.exceptions.ClientError as exc:
                        if exc.response.get("Error", {}).get("Code") in _MISSING:
                            return None
                        raise
                    return response["Body"].read()
            except StorageLocationError:
                if attempt + 1 == _READ_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes) -> None:
        with _storage_errors(f"writing {self._url(key)}"):
            self._client.put_object(Bucket=self._bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        with _storage_errors(f"looking up {self._url(key)}"):
            try:
                self._client.head_object(Bucket=self._bucket, Key=self._key(key))
                return True
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _MISSING:
                    return False
                raise

    def put_if_absent(self, key: str, data: bytes) -> bool:
        with _storage_errors(f"writing {self._url(key)}"):
            try:
                self._client.put_object(
                    Bucket=self._bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
                )
                return True
            except botocore.exceptions.ClientError as exc:
                if exc.response["Error"]["Code"] in ("PreconditionFailed", "412"):
                    return False
                raise

    def versions(self, prefix: str = "") -> Iterator[ObjectVersion]:
        strip = len(self._prefix) + 1
        paginator = self._client.get_paginator("list_object_versions")
        with _storage_errors(f"listing versions of {self._url(prefix)}"):
            pages = list(paginator.paginate(Bucket=self._bucket, Prefix=self._key(prefix)))
        for page in pages:
            # Keep S3's order: by key, and within a key newest first.
            entries = [(v, False) for v in page.get("Versions", [])] + [
                (m, True) for m in page.get("DeleteMarkers", [])
            ]
            order = {id(v): i for i, (v, _) in enumerate(entries)}
            entries.sort(key=lambda e: (e[0]["Key"], not e[0]["IsLatest"], order[id(e[0])]))
            for entry, is_marker in entries:
                yield ObjectVersion(
                    entry["Key"][strip:], entry["VersionId"], entry["IsLatest"], is_marker,
                    entry.get("Size", 0), entry.get("ETag", ""),
                )

    def restore(self, key: str, version_id: str) -> None:
        source = {"Bucket": self._bucket, "Key": self._key(key), "VersionId": version_id}
        with _storage_errors(f"restoring {self._url(key)}"):
            self._client.copy_object(Bucket=self._bucket, Key=self._key(key), CopySource=source)

    def legal_hold(self, key: str, version_id: str) -> None:
        with _storage_errors(f"holding {self._url(key)}"):
            self._client.put_object_legal_hold(
                Bucket=self._bucket, Key=self._key(key), VersionId=version_id,
                LegalHold={"Status": "ON"},
            )

    def listing(self, prefix: str = "") -> list[dict[str, Any]]:
        """S3's entry (``Key`` made relative, ``Size``, ``ETag``, ...) of every object under
        ``prefix``."""
        paginator = self._client.get_paginator("list_objects_v2")
        strip = len(self._prefix) + 1
        with _storage_errors(f"listing {self._url(prefix)}"):
            pages = list(paginator.paginate(Bucket=self._bucket, Prefix=self._key(prefix)))
        return [{**obj, "Key": obj["Key"][strip:]} for page in pages for obj in page.get("Contents", [])]

    def list_with_times(self, prefix: str = "") -> Iterator[tuple[str, int, datetime]]:
        for obj in self.listing(prefix):
            yield obj["Key"], obj["Size"], obj["LastModified"]

    def delete(self, key: str) -> None:
        with _storage_errors(f"deleting {self._url(key)}"):
            self._client.delete_object(Bucket=self._bucket, Key=self._key(key))


def versioned_objects(
    location: StorageLocation, zarr_id: str, *, embargoed: bool = False
) -> VersionedObjects | None:
    """Version access to a repository prefix, or ``None`` where the bucket keeps no versions."""
    return versioned_prefix(location, location.repository_prefix(zarr_id, embargoed=embargoed))


def versioned_prefix(location: StorageLocation, prefix: str) -> VersionedObjects | None:
    """Version access to ``prefix`` in the bucket, or ``None`` where the bucket keeps no versions."""
    if location.kind != "s3":
        return None
    objects = _S3Objects(location, prefix)
    with _storage_errors(f"reading the versioning of s3://{location.bucket}"):
        status = objects._client.get_bucket_versioning(Bucket=location.bucket).get("Status")
    return objects if status == "Enabled" else None


def prefix_objects(location: StorageLocation, prefix: str) -> RepositoryObjects:
    """Object access to ``prefix`` (a key prefix inside the bucket) at ``location``."""
    if location.kind == "file":
        return _LocalObjects(Path(location.bucket) / prefix)
    return _S3Objects(location, prefix)


def child_prefixes(location: StorageLocation, prefix: str) -> Iterator[str]:
    """The names one level under ``prefix``: S3's common prefixes (a delimiter listing, so not
    every object), or a local bucket's subdirectories."""
    if location.kind == "file":
        root = Path(location.bucket) / prefix
        yield from (sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else ())
        return
    pages = _s3_client(location).get_paginator("list_objects_v2").paginate(
        Bucket=location.bucket, Prefix=f"{prefix}/", Delimiter="/"
    )
    with _storage_errors(f"listing {prefix}/"):
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                yield common["Prefix"][len(prefix) + 1:].rstrip("/")


def repository_objects(
    location: StorageLocation, zarr_id: str, *, embargoed: bool = False
) -> RepositoryObjects:
    """Object access to the repository prefix of ``zarr_id`` at ``location``."""
    return prefix_objects(location, location.repository_prefix(zarr_id, embargoed=embargoed))


EMBARGO_TAG = {"Key": "embargoed", "Value": "true"}
"""The object tag DANDI's bucket policy denies anonymous reads of (``s3:ExistingObjectTag``)."""
_MOVE_ROUNDS = 5


def move_prefix(
    location: StorageLocation, source: str, destination: str, *, last: str, jobs: int = DEFAULT_JOBS
) -> tuple[int, int]:
    """Move every object from ``source/`` to ``destination/`` inside the bucket, server-side
    (nothing passes through this machine). Returns (objects, bytes) moved by this call.

    On S3, in this order, so that a crash or a pause at any point leaves nothing readable that
    should not be, and running again finishes the move:

    1. every object but ``last`` is copied, tagged :data:`EMBARGO_TAG` (the bucket policy keeps
       tagged objects from anonymous readers even under a public prefix);
    2. ``last`` (Icechunk's ``repo`` object) is copied, then deleted at the source, each only if
       it is still the version listed: a writer that committed meanwhile makes this round start
       again, and a writer that commits after the source ``repo`` is gone fails cleanly;
    3. the copies are untagged, ``last`` after all others;
    4. the rest of the source is deleted.

    A local bucket is moved with one rename (atomic on one filesystem).
    """
    if location.kind == "file":
        src, dst = Path(location.bucket) / source, Path(location.bucket) / destination
        if not src.exists():
            return 0, 0
        count = size = 0
        for path in src.rglob("*"):
            if path.is_file():
                count, size = count + 1, size + path.stat().st_size
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)  # atomic on one filesystem
        return count, size
    objects, copies = _S3Objects(location, source), _S3Objects(location, destination)
    client, bucket = objects._client, location.bucket
    tagging = f"{EMBARGO_TAG['Key']}={EMBARGO_TAG['Value']}"

    def copy(key: str, etag: str | None = None) -> None:
        conditions = {"CopySourceIfMatch": etag} if etag else {}
        with _storage_errors(f"copying {source}/{key}"):
            client.copy_object(
                Bucket=bucket, Key=f"{destination}/{key}", Tagging=tagging, TaggingDirective="REPLACE",
                CopySource={"Bucket": bucket, "Key": f"{source}/{key}"}, **conditions,
            )

    def untag(key: str) -> None:
        with _storage_errors(f"untagging {destination}/{key}"):
            client.delete_object_tagging(Bucket=bucket, Key=f"{destination}/{key}")

    def delete(key: str, etag: str | None = None) -> None:
        conditions = {"IfMatch": etag} if etag else {}
        with _storage_errors(f"deleting {source}/{key}"):
            client.delete_object(Bucket=bucket, Key=f"{source}/{key}", **conditions)

    for _ in range(_MOVE_ROUNDS):
        listed = {o["Key"]: (o["Size"], o["ETag"]) for o in objects.listing()}
        if not listed:
            break  # nothing (left) to move
        rest = sorted(k for k in listed if k != last)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(copy, rest))
        if last in listed:
            try:
                copy(last, listed[last][1])
                delete(last, listed[last][1])
            except StorageLocationError:
                if _still_there(client, bucket, f"{source}/{last}", listed[last][1]):
                    raise
                continue  # a commit landed meanwhile: copy what it wrote, then its repo
        copied = sorted(o["Key"] for o in copies.listing())
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(untag, [k for k in copied if k != last]))
        if last in copied:
            untag(last)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(delete, rest))
        return len(listed), sum(size for size, _ in listed.values())
    else:
        raise StorageLocationError(
            f"{source}/ kept changing while it was moved ({_MOVE_ROUNDS} rounds): stop the "
            "uploads to it (revoke their credentials) and run again"
        )
    return 0, 0


def _still_there(client: Any, bucket: str, key: str, etag: str) -> bool:
    """Whether ``key`` still has the listed ``etag`` (a failed conditional copy or delete was a
    fault, not a concurrent change)."""
    try:
        return client.head_object(Bucket=bucket, Key=key)["ETag"] == etag
    except botocore.exceptions.ClientError:
        return False

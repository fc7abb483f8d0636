"""Plain object access to a repository's prefix, for what dandi-icechunk keeps beside Icechunk.

Icechunk owns its own objects (``repo``, ``snapshots/``, ``manifests/``, ``chunks/``, ...). Our
digest indexes live in the same repository prefix under ``dandi/`` so that one prefix-scoped
credential covers both. Objects are written once and never changed (content-addressed keys).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import boto3
import botocore.config
import botocore.exceptions

from .errors import StorageLocationError
from .location import StorageLocation


class RepositoryObjects(Protocol):
    """Write-once objects under one repository prefix; keys are relative to that prefix."""

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or ``None`` when it does not exist."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` unless ``key`` exists; return whether this call wrote it."""
        ...

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """Yield ``(key, size)`` of every object under ``prefix``."""
        ...


class _LocalObjects:
    def __init__(self, root: Path) -> None:
        self._root = root

    def get(self, key: str) -> bytes | None:
        try:
            return (self._root / key).read_bytes()
        except FileNotFoundError:
            return None

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.link(tmp, path)  # atomic, and fails if the key exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        base = self._root / prefix
        if not base.is_dir():
            return
        for dirpath, _, files in os.walk(base):
            for name in files:
                if not name.startswith(".tmp-"):
                    path = Path(dirpath) / name
                    yield path.relative_to(self._root).as_posix(), path.stat().st_size


class _S3Objects:
    def __init__(self, location: StorageLocation, prefix: str) -> None:
        creds = location.credentials
        config = botocore.config.Config(
            max_pool_connections=32,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"} if location.endpoint_url else None,
            signature_version=botocore.UNSIGNED if location.anonymous else None,
        )
        self._client = boto3.client(
            "s3",
            endpoint_url=location.endpoint_url,
            region_name=location.region or "us-east-1",
            aws_access_key_id=creds.access_key_id if creds else None,
            aws_secret_access_key=creds.secret_access_key if creds else None,
            aws_session_token=creds.session_token if creds else None,
            config=config,
        )
        self._bucket = location.bucket
        self._prefix = prefix

    def _key(self, key: str) -> str:
        return f"{self._prefix}/{key}"

    def get(self, key: str) -> bytes | None:
        try:
            return self._client.get_object(Bucket=self._bucket, Key=self._key(key))["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise StorageLocationError(f"cannot read s3://{self._bucket}/{self._key(key)}: {exc}")

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self._client.put_object(
                Bucket=self._bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
            )
            return True
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "412"):
                return False
            raise StorageLocationError(f"cannot write s3://{self._bucket}/{self._key(key)}: {exc}")

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        paginator = self._client.get_paginator("list_objects_v2")
        strip = len(self._prefix) + 1
        for page in paginator.paginate(Bucket=self._bucket, Prefix=self._key(prefix)):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:], obj["Size"]


def repository_objects(
    location: StorageLocation, zarr_id: str, *, embargoed: bool = False
) -> RepositoryObjects:
    """Object access to the repository prefix of ``zarr_id`` at ``location``."""
    prefix = location.repository_prefix(zarr_id, embargoed=embargoed)
    if location.kind == "file":
        return _LocalObjects(Path(location.bucket) / prefix)
    return _S3Objects(location, prefix)

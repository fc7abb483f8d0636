"""Fixtures for the tests that run inside the patched dandi-archive (``scripts/test-archive.sh``
runs them in the archive's virtualenv and settings, with the adapter on)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from dandiapi.api.tasks.scheduled import (
    validate_draft_version_metadata,
    validate_pending_asset_metadata,
)
from dandischema.consts import DANDI_SCHEMA_VERSION
from django.core.files.storage import default_storage
from rest_framework.authtoken.models import Token

from dandi_icechunk.archive.django.conf import AdapterSettings
from dandi_icechunk.archive.policy import embargo_deny_statements
from dandi_icechunk.location import S3Credentials, StorageLocation
from dandi_icechunk.read import open_dataset
from dandi_icechunk.upload import UploadResult, upload_zarr
from dandi_icechunk.upload.archive import (
    ArchiveUpload,
    begin_archive_upload,
    finalize_archive_upload,
)


class Archive:
    """The archive's HTTP API as an API-key holder calls it (``requests``, no test client)."""

    def __init__(self, url: str, api_key: str) -> None:
        self.api = f"{url}/api"
        self.api_key = api_key
        self.headers = {"Authorization": f"token {api_key}"}

    def call(self, method: str, path: str, expect: int | tuple[int, ...] = (200, 201, 202, 204), **kwargs: Any) -> Any:
        response = requests.request(method, f"{self.api}/{path.lstrip('/')}", headers=self.headers, timeout=120, **kwargs)
        expected = (expect,) if isinstance(expect, int) else expect
        assert response.status_code in expected, f"{method} {path}: {response.status_code} {response.text[:800]}"
        return response.json() if response.content else None

    def upload(self, zarr_id: str, source: Path) -> tuple[ArchiveUpload, UploadResult]:
        """What an uploader does: begin, upload with what the archive gave, finalize."""
        upload = begin_archive_upload(self.api, zarr_id, api_key=self.api_key)
        result = upload_zarr(source, upload.location, zarr_id, branch=upload.branch,
                             embargoed=upload.embargoed, dedup=False)
        finalize_archive_upload(self.api, zarr_id, api_key=self.api_key)
        return upload, result

    def add_zarr_asset(self, dandiset: str, zarr_id: str, path: str) -> dict[str, Any]:
        """Add the Zarr to the draft at ``path``, as an uploader does; the asset's metadata."""
        created = self.call("POST", f"dandisets/{dandiset}/versions/draft/assets/",
                            json={"metadata": zarr_asset_metadata(path), "zarr_id": zarr_id})
        return self.draft_asset(dandiset, created["asset_id"])

    def draft_asset(self, dandiset: str, asset_id: str) -> dict[str, Any]:
        return self.call("GET", f"dandisets/{dandiset}/versions/draft/assets/{asset_id}/")

    def read(self, asset: str | dict[str, Any], group: str = "0") -> Any:
        """``open_dataset`` of an asset (record or URL) through the archive with this user's key."""
        return open_dataset(asset, group=group, dandi_api_key=self.api_key, dandi_api_url=self.api)

    def presigned_upload(self, zarr_id: str, files: dict[str, bytes], finalize: bool = True) -> None:
        """Today's Zarr upload: ask for presigned PUT URLs, PUT each file with its MD5, finalize."""
        md5s = {k: base64.b64encode(hashlib.md5(v).digest()).decode() for k, v in files.items()}
        keys = sorted(files)
        for start in range(0, len(keys), 255):
            batch = keys[start : start + 255]
            urls = self.call("POST", f"zarr/{zarr_id}/files/", json=[{"path": k, "base64md5": md5s[k]} for k in batch])
            for key, url in zip(batch, urls, strict=True):
                headers = {"Content-MD5": md5s[key]}
                if "x-amz-tagging" in url:  # an embargoed Zarr's objects are tagged, as dandi-cli tags them
                    headers["x-amz-tagging"] = "embargoed=true"
                assert requests.put(url, data=files[key], headers=headers, timeout=60).ok
        if finalize:
            self.call("POST", f"zarr/{zarr_id}/finalize/", expect=204)

    def versions(self, dandiset: str) -> dict[str, dict[str, Any]]:
        return {v["version"]: v for v in self.call("GET", f"dandisets/{dandiset}/versions/")["results"]}

    def publish(self, dandiset: str) -> str:
        """Publish the draft; the new version's name."""
        before = set(self.versions(dandiset))
        self.call("POST", f"dandisets/{dandiset}/versions/draft/publish/", expect=202)
        [version] = set(self.versions(dandiset)) - before
        return version

    def published_asset(self, dandiset: str, version: str) -> dict[str, Any]:
        """The metadata the archive serves for the one asset of ``version``."""
        [asset] = self.call("GET", f"dandisets/{dandiset}/versions/{version}/assets/")["results"]
        return self.call("GET", f"dandisets/{dandiset}/versions/{version}/assets/{asset['asset_id']}/")


def validate() -> None:
    """The archive's own scheduled validation, as its Celery beat runs it."""
    validate_pending_asset_metadata()
    validate_draft_version_metadata()


def api_key(user: Any) -> str:
    return Token.objects.get_or_create(user=user)[0].key


def zarr_asset_metadata(path: str) -> dict[str, Any]:
    """What an uploader sends for a Zarr asset (the archive computes digest, size, URLs)."""
    return {"schemaKey": "Asset", "schemaVersion": DANDI_SCHEMA_VERSION, "path": path,
            "encodingFormat": "application/x-zarr"}


@pytest.fixture
def adapter_location() -> StorageLocation:
    """Where the adapter keeps repositories: the archive's own test bucket, admin credentials."""
    return AdapterSettings.load().location


@pytest.fixture
def reader_env(monkeypatch: pytest.MonkeyPatch, adapter_location: StorageLocation) -> S3Credentials:
    """A reader of the (private, in tests) bucket: the AWS variables plain icechunk reads."""
    creds = adapter_location.credentials
    assert creds is not None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds.secret_access_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return creds


def bucket_keys(prefix: str) -> list[str]:
    client = default_storage.s3_client
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=default_storage.bucket_name, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def local_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def deny_embargoed_reads(adapter_location: StorageLocation) -> Iterator[Callable[[], None]]:
    """The operator's step, as a function: add the adapter's embargo statements to the archive's
    bucket policy (the archive's own identity, ``admin`` in these tests, stays exempt). The
    archive's own policy is put back after the test."""
    client, bucket = default_storage.s3_client, adapter_location.bucket
    original = client.get_bucket_policy(Bucket=bucket)["Policy"]

    def apply() -> None:
        policy = json.loads(original)
        policy["Statement"] += embargo_deny_statements(bucket, archive_usernames=["admin"])
        client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    yield apply
    client.put_bucket_policy(Bucket=bucket, Policy=original)

"""Lifting an embargo under DANDI's bucket policy: crashes at every step, racing uploads, and
what anonymous readers can see meanwhile (issue 11, items 4-6)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore
import numpy as np
import pytest
import zarr

from dandi_icechunk import objects as objects_module
from dandi_icechunk.archive_hooks import unembargo_dandiset_zarrs
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.read import open_dataset
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.snapshot_files import verify_snapshot
from dandi_icechunk.testing import S3Server, make_zarr_v3
from dandi_icechunk.upload import upload_zarr

_MUTATING = ("copy_object", "delete_object", "delete_object_tagging")


class _Crash(BaseException):
    """The process dies here (not an exception anything in the library may handle)."""


class _Client:
    """The S3 client of the move, calling ``before(name, kwargs, count)`` before each change."""

    def __init__(self, client: Any, before: Callable[[str, dict[str, Any], int], None]) -> None:
        self._client, self._before, self.count = client, before, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in _MUTATING:
            return attr

        def call(**kwargs: Any) -> Any:
            self.count += 1
            self._before(name, kwargs, self.count)
            return attr(**kwargs)

        return call


@pytest.fixture
def intercept(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[str, dict[str, Any], int], None]], None]]:
    """Install a ``before`` hook on every S3 client the move makes."""
    real_init = objects_module._S3Objects.__init__

    def install(before: Callable[[str, dict[str, Any], int], None]) -> None:
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            real_init(self, *args, **kwargs)
            self._client = _Client(self._client, before)

        monkeypatch.setattr(objects_module._S3Objects, "__init__", init)

    yield install
    monkeypatch.setattr(objects_module._S3Objects, "__init__", real_init)


def _anonymous(server: S3Server) -> Any:
    return boto3.client(
        "s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
        config=botocore.config.Config(signature_version=botocore.UNSIGNED),
    )


def _keys(server: S3Server, prefix: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix + "/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _anonymously_readable(server: S3Server, keys: list[str]) -> list[str]:
    readable = []
    for key in keys:
        try:
            _anonymous(server).get_object(Bucket=server.bucket, Key=key)
            readable.append(key)
        except botocore.exceptions.ClientError:
            pass
    return readable


def _embargoed_zarr(server: S3Server, tmp_path: Path) -> tuple[StorageLocation, str, Path, str]:
    admin = server.location()
    zid = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr", shape=(8, 32, 32), chunks=(4, 16, 16), seed=uuid.UUID(zid).int % 997)
    result = upload_zarr(src, admin, zid, embargoed=True, dedup=False)
    assert result.snapshot_id is not None
    return admin, zid, src, result.snapshot_id


def test_the_dandi_policy_hides_embargoed_repositories_from_anonymous_readers(
    dandi_s3_server: S3Server, tmp_path: Path
) -> None:
    admin, zid, _, _ = _embargoed_zarr(dandi_s3_server, tmp_path)
    keys = _keys(dandi_s3_server, admin.repository_prefix(zid, embargoed=True))
    assert keys and not _anonymously_readable(dandi_s3_server, keys)
    listing = _anonymous(dandi_s3_server).list_objects_v2(Bucket=dandi_s3_server.bucket, Prefix="zarr-icechunk-embargoed/")
    assert listing["KeyCount"] > 0  # the bucket is anonymously listable, as DANDI's is: keys are no secret


@pytest.mark.parametrize("where", ["first copy", "last copy", "repo copied", "repo moved", "mid untag", "mid delete"])
def test_a_crash_anywhere_in_unembargo_leaks_nothing_and_a_rerun_finishes_the_move(
    dandi_s3_server: S3Server, tmp_path: Path, intercept: Any, where: str
) -> None:
    admin, zid, src, snapshot_id = _embargoed_zarr(dandi_s3_server, tmp_path)
    private, public = admin.repository_prefix(zid, embargoed=True), admin.repository_prefix(zid)
    n = len(_keys(dandi_s3_server, private))
    # calls in order: n-1 copies, repo copy, repo delete, n untags, n-1 deletes
    crash_at = {
        "first copy": 1, "last copy": n - 1, "repo copied": n, "repo moved": n + 1,
        "mid untag": n + 1 + n // 2, "mid delete": 3 * n - 2,
    }[where]

    def before(name: str, kwargs: dict[str, Any], count: int) -> None:
        if count == crash_at + 1:  # the process died after the crash_at-th change
            raise _Crash()

    intercept(before)
    with pytest.raises(_Crash):
        unembargo_dandiset_zarrs([zid], location=admin)
    intercept(lambda *a: None)

    embargo_still_on = f"{private}/repo" in _keys(dandi_s3_server, private)
    if embargo_still_on:
        assert not _anonymously_readable(dandi_s3_server, _keys(dandi_s3_server, public))
    [result] = unembargo_dandiset_zarrs([zid], location=admin)
    assert result.objects_moved > 0
    assert _keys(dandi_s3_server, private) == []
    anonymous = StorageLocation(kind="s3", bucket=admin.bucket, endpoint_url=admin.endpoint_url, anonymous=True)
    ds = open_dataset(zid, location=anonymous, snapshot_id=snapshot_id, anonymous=True)
    np.testing.assert_array_equal(ds["data"].values, zarr.open_group(str(src), mode="r")["data"][:])
    assert verify_snapshot(ZarrRepository.open(admin, zid)).ok


def test_an_upload_committing_during_unembargo_lands_in_the_public_repository(
    dandi_s3_server: S3Server, tmp_path: Path, intercept: Any
) -> None:
    admin, zid, src, _ = _embargoed_zarr(dandi_s3_server, tmp_path)
    private = admin.repository_prefix(zid, embargoed=True)
    raced: list[str | None] = []

    def before(name: str, kwargs: dict[str, Any], count: int) -> None:
        if name == "copy_object" and kwargs["CopySource"]["Key"] == f"{private}/repo" and not raced:
            zarr.open_group(str(src), mode="r+")["data"][0:4, 0:16, 0:16] = 7
            raced.append(upload_zarr(src, admin, zid, dedup=False).snapshot_id)

    intercept(before)
    unembargo_dandiset_zarrs([zid], location=admin)
    intercept(lambda *a: None)
    assert raced and raced[0] is not None
    assert _keys(dandi_s3_server, private) == []
    repo = ZarrRepository.open(admin, zid)
    assert not repo.embargoed and repo.resolve() == raced[0]
    assert verify_snapshot(repo).ok


def test_a_commit_after_the_private_repo_moved_fails_instead_of_being_lost(
    dandi_s3_server: S3Server, tmp_path: Path, intercept: Any
) -> None:
    admin, zid, _, snapshot_id = _embargoed_zarr(dandi_s3_server, tmp_path)
    private = admin.repository_prefix(zid, embargoed=True)
    session = ZarrRepository.open(admin, zid).writable_session()  # an upload under way
    zarr.open_group(session.store, mode="r+")["data"][0:4, 0:16, 0:16] = 9
    outcome: list[BaseException | str] = []

    def before(name: str, kwargs: dict[str, Any], count: int) -> None:
        if name == "delete_object_tagging" and not outcome:  # the private repo is gone by now
            try:
                outcome.append(session.commit("late"))
            except Exception as exc:  # noqa: BLE001 - any refusal will do; a commit must not pass
                outcome.append(exc)

    intercept(before)
    unembargo_dandiset_zarrs([zid], location=admin)
    intercept(lambda *a: None)
    assert outcome and isinstance(outcome[0], Exception), f"the late commit passed: {outcome}"
    repo = ZarrRepository.open(admin, zid)
    assert repo.resolve() == snapshot_id and verify_snapshot(repo).ok
    # what the failed commit wrote first is unreachable (no repo object names it)
    assert f"{private}/repo" not in _keys(dandi_s3_server, private)

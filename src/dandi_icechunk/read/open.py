"""Read any version of a Zarr asset: by published asset metadata, snapshot ID, tag or branch.

>>> ds = open_dataset(published_asset_metadata)              # the exact published snapshot
>>> group = open_zarr("2b1f5f4c-...", tag="dandiset/000123/0.260101.1200")
>>> ds = xarray.open_dataset(published_asset_metadata, engine="dandi-icechunk")

Every read goes through a read-only Icechunk session on one snapshot: it cannot write, and it
never sees an upload in progress (no dirty reads).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import icechunk
import xarray as xr
import zarr

from ..errors import (
    AccessDeniedError,
    DandiIcechunkError,
    RefNotFoundError,
    RepositoryNotFoundError,
    first_line,
)
from ..location import S3Credentials, StorageLocation, validate_zarr_id
from ..objects import REPO_OBJECT
from ..reference import SnapshotReference
from ..session import ZarrRepository

Source = Mapping[str, Any] | SnapshotReference | str | os.PathLike[str]
"""Published asset metadata (dict, JSON file, or its http(s) URL), a snapshot reference, a
repository URL (``s3://``, ``file://``, or ``https://`` of the repository root) or a ``zarr_id``."""

_REPOSITORY_PATH = re.compile(r"/zarr-icechunk(-embargoed)?/[0-9a-fA-F-]{36}/?$")


def open_session(
    source: Source,
    *,
    snapshot_id: str | None = None,
    tag: str | None = None,
    branch: str | None = None,
    location: StorageLocation | None = None,
    credentials: S3Credentials | None = None,
    anonymous: bool | None = None,
) -> icechunk.Session:
    """A read-only Icechunk session on the snapshot ``source`` names.

    Published metadata names its snapshot itself; otherwise give one of ``snapshot_id``, ``tag``
    or ``branch`` (default: the tip of ``main``). ``location`` is where repositories live when
    ``source`` is a ``zarr_id`` (default: ``$DANDI_ICECHUNK_STORAGE`` or the local default).
    S3 credentials: ``credentials``, else the location's, else the usual AWS sources;
    ``anonymous`` reads without any (default: when no AWS credentials are configured).
    """
    reference = _reference(source)
    if reference is not None:
        if any(x is not None for x in (snapshot_id, tag, branch)):
            raise ValueError("published metadata names its snapshot: give no snapshot_id, tag or branch")
        snapshot_id = reference.snapshot_id
        repository_url: str = reference.repository
    else:
        repository_url = str(source)
    try:
        if urlsplit(repository_url).scheme in ("http", "https"):
            return _open_http(repository_url, snapshot_id, tag, branch)
        repo = _open_repository(repository_url, location, credentials, anonymous)
        return repo.readonly_session(snapshot_id=snapshot_id, tag=tag, branch=branch)
    except DandiIcechunkError as exc:
        raise _access_error(exc, repository_url) from None


def open_zarr(source: Source, *, path: str | None = None, **kwargs: Any) -> zarr.Group | zarr.Array:
    """The Zarr group (or array) of one snapshot, read-only. ``kwargs`` as for :func:`open_session`."""
    store = open_session(source, **kwargs).store
    return zarr.open(store, mode="r", path=path or "")


def open_dataset(
    source: Source,
    *,
    group: str | None = None,
    snapshot_id: str | None = None,
    tag: str | None = None,
    branch: str | None = None,
    location: StorageLocation | None = None,
    credentials: S3Credentials | None = None,
    anonymous: bool | None = None,
    **xarray_kwargs: Any,
) -> xr.Dataset:
    """The ``xarray.Dataset`` of one snapshot (one group of it). For hierarchies that are not
    xarray-shaped, such as OME-NGFF multiscales, use :func:`open_zarr`."""
    session = open_session(
        source, snapshot_id=snapshot_id, tag=tag, branch=branch, location=location,
        credentials=credentials, anonymous=anonymous,
    )
    return xr.open_zarr(session.store, group=group, consolidated=False, **xarray_kwargs)


def _reference(source: Source) -> SnapshotReference | None:
    if isinstance(source, SnapshotReference):
        return source
    if isinstance(source, Mapping):
        return SnapshotReference.from_asset(source)
    text = os.fspath(source)
    if not isinstance(text, str):
        raise TypeError(f"cannot read from {source!r}")
    if urlsplit(text).scheme in ("http", "https") and not _REPOSITORY_PATH.search(urlsplit(text).path):
        return SnapshotReference.from_asset(_fetch_json(text))
    if text.endswith(".json") and Path(text).is_file():
        try:
            return SnapshotReference.from_asset(json.loads(Path(text).read_text()))
        except json.JSONDecodeError as exc:
            raise DandiIcechunkError(f"{text} is not valid JSON: {exc}") from None
    return None


def _fetch_json(url: str) -> Mapping[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)
    except (OSError, ValueError) as exc:
        raise DandiIcechunkError(f"cannot read asset metadata from {url}: {exc}") from None


def _open_repository(
    repository: str,
    location: StorageLocation | None,
    credentials: S3Credentials | None,
    anonymous: bool | None,
) -> ZarrRepository:
    try:
        zarr_id = validate_zarr_id(repository)
    except DandiIcechunkError:
        location, zarr_id, embargoed = StorageLocation.from_repository_url(repository)
    else:
        location, embargoed = location or StorageLocation.resolve(), False
    if credentials is not None:
        location = dataclasses.replace(location, credentials=credentials)
    if location.kind == "s3" and location.credentials is None:
        anonymous = _no_credentials_configured() if anonymous is None else anonymous
        location = dataclasses.replace(location, anonymous=anonymous)
    return ZarrRepository.open(location, zarr_id, embargoed=embargoed)


def _open_http(url: str, snapshot_id: str | None, tag: str | None, branch: str | None) -> icechunk.Session:
    storage = icechunk.http_storage(url.rstrip("/") + "/")
    try:
        repo = icechunk.Repository.open(storage)
    except icechunk.IcechunkError as exc:
        if _http_status(url.rstrip("/") + "/" + REPO_OBJECT) == 403:
            raise AccessDeniedError(f"access to {url} was refused") from None
        raise RepositoryNotFoundError(f"no repository readable at {url}: {first_line(exc)}") from None
    try:
        if snapshot_id is not None:
            return repo.readonly_session(snapshot_id=snapshot_id)
        if tag is not None:
            return repo.readonly_session(tag=tag)
        return repo.readonly_session(branch=branch or "main")
    except icechunk.IcechunkError as exc:
        what = f"snapshot {snapshot_id}" if snapshot_id else f"tag {tag!r}" if tag else f"branch {branch or 'main'!r}"
        raise RefNotFoundError(f"{what} does not exist at {url}: {first_line(exc)}") from None


def _http_status(url: str) -> int | None:
    """The HTTP status a HEAD of ``url`` gets (``None`` when the server does not answer)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _no_credentials_configured() -> bool:
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
        return False
    config_dir = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", Path.home() / ".aws" / "credentials"))
    return not config_dir.exists()


def _access_error(exc: DandiIcechunkError, repository: str) -> DandiIcechunkError:
    if isinstance(exc, RefNotFoundError):
        # The repository opened, so the reader may read it: S3 answers 403, not 404, for a
        # missing key to a reader without list rights.
        return exc
    if isinstance(exc, AccessDeniedError):
        return AccessDeniedError(
            f"access to {repository} was refused: the Zarr is private (embargoed, or not yet "
            "published); give credentials of someone allowed to read it"
        )
    return exc


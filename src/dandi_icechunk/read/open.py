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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import icechunk
import xarray as xr
import zarr

from ..errors import (
    AccessDeniedError,
    DandiIcechunkError,
    NotAZarrAssetError,
    RefNotFoundError,
    RepositoryNotFoundError,
    first_line,
)
from ..location import S3Credentials, StorageLocation, validate_zarr_id
from ..objects import REPO_OBJECT
from ..reference import ZARR_MEDIA_TYPE, SnapshotReference, repository_zarr_id
from ..session import ZarrRepository
from .ngff import multiscale, open_ngff_level, open_ngff_tree

Source = Mapping[str, Any] | Sequence[Mapping[str, Any]] | SnapshotReference | str | os.PathLike[str]
"""Published asset metadata: one asset (a dict, a JSON file or its http(s) URL) or a list of
them (what ``dandi-icechunk publish --json`` writes, or a Dandiset version's ``assets.jsonld`` /
``assets.yaml``, with ``asset_path`` naming the asset); a snapshot reference; a repository URL
(``s3://``, ``file://``, or ``https://`` of the repository root); or a ``zarr_id``."""

_REPOSITORY_PATH = re.compile(r"/zarr-icechunk(-embargoed)?/[0-9a-fA-F-]{36}/?$")


def open_session(
    source: Source,
    *,
    asset_path: str | None = None,
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
    ``asset_path`` picks one asset of a list of published assets.
    """
    reference = _reference(source, asset_path)
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
    """The Zarr group (or array) of one snapshot, read-only. ``kwargs`` as for :func:`open_session`,
    or ``dandi_api_key`` (and ``dandi_api_url``) to read through the archive (:func:`read_store`)."""
    return zarr.open(read_store(source, **kwargs), mode="r", path=path or "")


def read_store(
    source: Source, *, dandi_api_key: str | None = None, dandi_api_url: str | None = None, **kwargs: Any
) -> Any:
    """The read-only Zarr store of the snapshot ``source`` names: its Icechunk session's store
    (``kwargs`` as for :func:`open_session`), or, with ``dandi_api_key``, the files the archive
    serves to that key (:class:`~dandi_icechunk.read.archive_store.ArchiveFilesStore`): embargoed
    Zarrs are read this way by their owners. The archive's API URL (``https://HOST/api``) is
    ``dandi_api_url``, else the one in the asset's ``contentUrl``."""
    if dandi_api_key is None:
        return open_session(source, **kwargs).store
    from .archive_store import ArchiveFilesStore

    reference = _reference(source, kwargs.get("asset_path"))
    if reference is not None:
        zarr_id, snapshot_id = repository_zarr_id(reference.repository), reference.snapshot_id
    elif kwargs.get("snapshot_id"):
        zarr_id, snapshot_id = validate_zarr_id(str(source)), str(kwargs["snapshot_id"])
    else:
        raise ValueError("reading through the archive needs published metadata, or a zarr_id with snapshot_id=")
    api_url = dandi_api_url or _archive_api_url(source, kwargs.get("asset_path"))
    store = ArchiveFilesStore(api_url, zarr_id, snapshot_id, dandi_api_key)
    store.check_readable()
    return store


def _archive_api_url(source: Source, asset_path: str | None) -> str:
    """The archive's API URL from an asset's ``contentUrl`` (``https://HOST/api/assets/...``)."""
    asset: Any = source
    if isinstance(source, Sequence) and not isinstance(source, str):
        asset = _pick(source, asset_path)
    for url in (asset.get("contentUrl") or []) if isinstance(asset, Mapping) else []:
        if "/api/assets/" in str(url):
            return str(url).split("/api/assets/", 1)[0] + "/api"
    raise ValueError("give dandi_api_url= (https://HOST/api): the asset metadata names no archive")


def open_dataset(
    source: Source,
    *,
    group: str | None = None,
    asset_path: str | None = None,
    snapshot_id: str | None = None,
    tag: str | None = None,
    branch: str | None = None,
    location: StorageLocation | None = None,
    credentials: S3Credentials | None = None,
    anonymous: bool | None = None,
    dandi_api_key: str | None = None,
    dandi_api_url: str | None = None,
    **xarray_kwargs: Any,
) -> xr.Dataset:
    """The ``xarray.Dataset`` of one snapshot (one group of it). An OME-NGFF image gives one
    resolution level (its full resolution, or the level ``group`` names, e.g. ``"0"``) with the
    NGFF axes as dimensions and their scales as coordinates; :func:`open_datatree` gives them
    all. ``xarray_kwargs`` are xarray's (``decode_times``, ``mask_and_scale``, ``chunks`` with
    the ``dask`` extra, ...). With ``dandi_api_key``, read through the archive (:func:`read_store`)."""
    store = read_store(
        source, asset_path=asset_path, snapshot_id=snapshot_id, tag=tag, branch=branch,
        location=location, credentials=credentials, anonymous=anonymous,
        dandi_api_key=dandi_api_key, dandi_api_url=dandi_api_url,
    )
    chunks = xarray_kwargs.pop("chunks", None)
    dataset = store_dataset(store, group, **xarray_kwargs)
    return dataset.chunk(chunks) if chunks is not None else dataset


def open_datatree(source: Source, **kwargs: Any) -> xr.DataTree:
    """Every group of one snapshot as an ``xarray.DataTree``; an OME-NGFF image gives one child
    per resolution level (a bioformats2raw layout, one per image). ``kwargs`` as for
    :func:`read_store`."""
    return store_datatree(read_store(source, **kwargs))


def store_dataset(store: Any, group: str | None = None, **decoders: Any) -> xr.Dataset:
    """The Dataset of ``group`` of a read-only Zarr store (see :func:`open_dataset`)."""
    root = zarr.open_group(store, mode="r")
    path = (group or "").strip("/")
    try:
        node = root[path] if path else root
    except KeyError:
        raise RefNotFoundError(f"no group or array {path!r} in this snapshot") from None
    if isinstance(node, zarr.Array):
        parent_path, _, name = path.rpartition("/")
        parent = root[parent_path] if parent_path else root
        assert isinstance(parent, zarr.Group)
        if multiscale(parent) is not None:
            return xr.decode_cf(open_ngff_level(parent, name), **decoders)
        return _zarr_dataset(store, parent_path, **decoders)[[name]]
    if multiscale(node) is not None:
        return xr.decode_cf(open_ngff_level(node), **decoders)
    return _zarr_dataset(store, path, **decoders)


def _zarr_dataset(store: Any, group: str, **decoders: Any) -> xr.Dataset:
    """One xarray-shaped group, through xarray's own Zarr backend (lazily, no dask)."""
    return xr.open_dataset(store, engine="zarr", group=group or None, consolidated=False, chunks=None, **decoders)


def store_datatree(store: Any) -> xr.DataTree:
    """The DataTree of a read-only Zarr store (see :func:`open_datatree`)."""
    return _tree(store, zarr.open_group(store, mode="r"))


def _tree(store: Any, group: zarr.Group) -> xr.DataTree:
    if multiscale(group) is not None:
        return open_ngff_tree(group)
    subgroups = dict(group.groups())
    if any(multiscale(g) is not None for g in subgroups.values()):
        own = _zarr_dataset(store, group.path)
        return xr.DataTree(own, children={name: _tree(store, g) for name, g in subgroups.items()})
    return xr.open_datatree(store, engine="zarr", group=group.path or None, consolidated=False, chunks=None)


def _reference(source: Source, asset_path: str | None) -> SnapshotReference | None:
    if isinstance(source, SnapshotReference):
        return source
    if isinstance(source, Mapping):
        return SnapshotReference.from_asset(source)
    if isinstance(source, Sequence) and not isinstance(source, str):
        return SnapshotReference.from_asset(_pick(source, asset_path))
    text = os.fspath(source)
    if not isinstance(text, str):
        raise TypeError(f"cannot read from {source!r}")
    if urlsplit(text).scheme in ("http", "https") and not _REPOSITORY_PATH.search(urlsplit(text).path):
        return _reference(_fetch_json(text), asset_path)
    if text.endswith((".json", ".jsonld", ".yaml", ".yml")) and Path(text).is_file():
        return _reference(_load_metadata(Path(text)), asset_path)
    return None


def _load_metadata(path: Path) -> Any:
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml  # what the archive writes assets.yaml with

            return yaml.safe_load(text)
        return json.loads(text)
    except ImportError:
        raise DandiIcechunkError(f"reading {path} needs PyYAML (pip install pyyaml)") from None
    except ValueError as exc:  # JSONDecodeError, and YAML's errors derive from Exception: below
        raise DandiIcechunkError(f"{path} is not valid JSON: {exc}") from None
    except Exception as exc:  # yaml.YAMLError
        raise DandiIcechunkError(f"{path} is not valid YAML: {first_line(exc)}") from None


def _pick(assets: Sequence[Any], asset_path: str | None) -> Mapping[str, Any]:
    """The Zarr asset of a list of published assets: the one at ``asset_path``, or the only one."""
    zarrs = [a for a in assets if isinstance(a, Mapping) and a.get("encodingFormat") == ZARR_MEDIA_TYPE]
    if asset_path is not None:
        for asset in zarrs:
            if asset.get("path") == asset_path:
                return asset
        raise NotAZarrAssetError(
            f"no Zarr asset at path {asset_path!r} among {len(assets)} assets; Zarr assets: "
            f"{', '.join(sorted(str(a.get('path')) for a in zarrs)[:10]) or 'none'}"
        )
    if len(zarrs) != 1:
        raise NotAZarrAssetError(
            f"{len(zarrs)} Zarr assets among {len(assets)}; name one with asset_path= (--asset-path)"
        )
    return zarrs[0]


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
    if anonymous is None and location.credentials is None and location.credentials_provider is None:
        # Credentials from the environment are for what the bucket does not show anyone.
        return ZarrRepository.open_for_reading(location.for_reading(), zarr_id, embargoed=embargoed)
    if anonymous is not None and location.kind == "s3" and location.credentials is None:
        location = dataclasses.replace(location, anonymous=anonymous)
    return ZarrRepository.open(location, zarr_id, embargoed=embargoed, reading=True)


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


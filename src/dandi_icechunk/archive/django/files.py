"""The archive's ``/api/zarr/{zarr_id}/files/`` for Icechunk Zarrs: the files of one snapshot,
listed and downloaded as the archive lists and downloads a plain Zarr's objects, so that
``dandi download``, ``dandi ls`` and the web UI's file browser work unchanged.

Which snapshot: ``?snapshot=SNAPSHOT_ID`` names a finalized draft or a published snapshot of the
Zarr (published assets name theirs in their metadata); without it, the Zarr's own Dandiset's
finalized draft. Only Zarrs and snapshots of Dandisets the user may see are served, so embargoed
Zarrs are read by their owners with a DANDI API key through the archive, never with bucket keys. Listing pages by ``after`` and ``limit``;
``download=true`` returns the file (single byte ranges honoured, for resumed downloads).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

from dandiapi.api.models import Asset
from dandiapi.api.services.permissions.dandiset import get_visible_dandisets
from dandiapi.zarr.models import ZarrArchive
from django.http import HttpResponse
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from ... import aio
from ...errors import DandiIcechunkError
from ...reference import SnapshotReference
from ...session import ZarrRepository
from ...snapshot_files import SnapshotFiles, byte_range
from .conf import AdapterSettings
from .models import IcechunkDraft

_OPENED_SNAPSHOTS = 8


def files(zarr: ZarrArchive, request: Request, params: dict[str, Any]) -> HttpResponse | Response:
    """Answer ``GET``/``HEAD /api/zarr/{zarr_id}/files/`` for an Icechunk Zarr ``zarr``;
    ``params`` are the archive's validated query."""
    snapshot_id = _snapshot(zarr, request)
    if snapshot_id is None:  # nothing finalized yet: an empty Zarr, as a plain one would list
        if request.method == "HEAD" or params["download"]:
            raise NotFound(f"Zarr {zarr.zarr_id} has no finalized upload yet")
        return Response({"next": None, "results": []})
    try:
        snapshot = _opened(str(zarr.zarr_id), zarr.embargoed, snapshot_id)
    except DandiIcechunkError as exc:
        raise NotFound(str(exc)) from None
    prefix = params["prefix"].lstrip("/")
    if request.method == "HEAD" or params["download"]:
        return _file(snapshot, prefix, request)
    after = params["after"].lstrip("/").rstrip("/")
    keys = snapshot.list(prefix=prefix.rstrip("/"), after=after, limit=params["limit"] + 1)
    page = keys[: params["limit"]]
    digests = [(key, snapshot.digest(key)) for key in page]
    results = [
        {"Key": key, "LastModified": snapshot.written_at.isoformat(), "ETag": d.md5, "Size": d.size}
        for key, d in digests if d is not None
    ]
    more = len(keys) > len(page) and page
    return Response({
        "next": replace_query_param(request.build_absolute_uri(), "after", page[-1]) if more else None,
        "results": results,
    })


def _snapshot(zarr: ZarrArchive, request: Request) -> str | None:
    """The snapshot the request asks for, if the user may see it; 404 otherwise."""
    visible = get_visible_dandisets(request.user)
    if not visible.filter(pk=zarr.dandiset_id).exists():
        # The archive's files view finds Zarrs by ID alone; its other Zarr views hide Zarrs of
        # Dandisets the user may not see, and so does this one.
        raise NotFound("No ZarrArchive matches the given query.")
    drafts = IcechunkDraft.objects.filter(zarr_id=zarr.pk, dandiset__in=visible).exclude(snapshot_id="")
    requested = request.query_params.get("snapshot")
    if not requested:
        own = drafts.filter(dandiset_id=zarr.dandiset_id).first()
        return own.snapshot_id if own else None
    if drafts.filter(snapshot_id=requested).exists():
        return requested
    published = Asset.objects.filter(zarr=zarr, published=True, versions__dandiset__in=visible)
    for metadata in published.values_list("metadata", flat=True).distinct():
        try:
            if SnapshotReference.from_asset(metadata).snapshot_id == requested:
                return requested
        except DandiIcechunkError:
            continue
    raise NotFound(f"{requested} is not a draft or published snapshot of Zarr {zarr.zarr_id}")


@lru_cache(maxsize=_OPENED_SNAPSHOTS)
def _opened(zarr_id: str, embargoed: bool, snapshot_id: str) -> SnapshotFiles:
    """A snapshot never changes, so the few last opened stay open between requests."""
    location = AdapterSettings.load().location
    repository = ZarrRepository.open(location, zarr_id, embargoed=embargoed)
    return SnapshotFiles.open(repository, repository.resolve(snapshot_id=snapshot_id))


def _file(snapshot: SnapshotFiles, key: str, request: Request) -> HttpResponse:
    digest = snapshot.digest(key)
    if digest is None:
        raise NotFound(f"{key} is not in snapshot {snapshot.snapshot_id} of Zarr {snapshot.zarr_id}")
    headers = {"ETag": f'"{digest.md5}"', "Accept-Ranges": "bytes"}
    if request.method == "HEAD":
        return HttpResponse(status=200, headers={**headers, "Content-Length": str(digest.size)})
    span = byte_range(request.headers.get("Range"), digest.size)
    if span == "invalid":
        return HttpResponse(status=416, headers={"Content-Range": f"bytes */{digest.size}"})
    data = aio.run(snapshot.read(key))
    if data is None or hashlib.md5(data).hexdigest() != digest.md5:
        return HttpResponse(f"{key} is missing or damaged in the repository; the archive's audit repairs it",
                            status=500, content_type="text/plain")
    if span is None:
        return HttpResponse(data, content_type="application/octet-stream", headers=headers)
    start, end = span
    return HttpResponse(data[start : end + 1], status=206, content_type="application/octet-stream",
                        headers={**headers, "Content-Range": f"bytes {start}-{end}/{digest.size}"})

"""The adapter's endpoints: begin an Icechunk upload, renew its credentials, see its state,
migrate a plain Zarr in place."""

from __future__ import annotations

from typing import Any

from dandiapi.api.services.exceptions import DandiError
from dandiapi.api.services.permissions.dandiset import get_visible_dandisets, is_dandiset_owner
from dandiapi.zarr.models import ZarrArchive, ZarrArchiveStatus
from django.db import transaction
from django.shortcuts import get_object_or_404
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from ..credentials import VendedCredentials
from . import services
from .conf import AdapterSettings
from .models import IcechunkDraft, IcechunkZarr


class CredentialsSerializer(serializers.Serializer):
    access_key_id = serializers.CharField()
    secret_access_key = serializers.CharField()
    session_token = serializers.CharField(allow_null=True)
    expires_at = serializers.DateTimeField()


def _credentials(vended: VendedCredentials) -> dict[str, Any]:
    c = vended.credentials
    return CredentialsSerializer(
        {"access_key_id": c.access_key_id, "secret_access_key": c.secret_access_key,
         "session_token": c.session_token, "expires_at": c.expires_at}
    ).data


def _owned_zarr(request: Request, zarr_id: str, *, lock: bool) -> ZarrArchive:
    queryset = ZarrArchive.objects.select_related("dandiset").filter(
        dandiset__in=get_visible_dandisets(request.user)
    )
    zarr = get_object_or_404(queryset.select_for_update(of=["self"]) if lock else queryset, zarr_id=zarr_id)
    if not is_dandiset_owner(zarr.dandiset, request.user):
        raise PermissionDenied
    return zarr


@api_view(["POST"])
def begin_upload_view(request: Request, zarr_id: str) -> Response:
    """Begin (or resume) an Icechunk upload of a Zarr: where to write, and credentials that
    reach its repository only. Then upload (one commit on ``branch``) and ``finalize``."""
    with transaction.atomic():
        zarr = _owned_zarr(request, zarr_id, lock=True)
        draft, vended = services.begin_upload(zarr)
    location = AdapterSettings.load().location
    return Response({
        "zarr_id": str(zarr.zarr_id),
        "storage": location.url,
        "repository": location.repository_url(str(zarr.zarr_id), embargoed=zarr.embargoed),
        "embargoed": zarr.embargoed,
        "dandiset": zarr.dandiset.identifier,
        "branch": draft.branch,
        "credentials": _credentials(vended),
        "credentials_url": request.build_absolute_uri(f"/api/zarr/{zarr.zarr_id}/icechunk/credentials/"),
    })


@api_view(["POST"])
def credentials_view(request: Request, zarr_id: str) -> Response:
    """New credentials for an Icechunk upload in progress (the Zarr is Pending)."""
    zarr = _owned_zarr(request, zarr_id, lock=False)
    if not services.is_icechunk(zarr) or zarr.status != ZarrArchiveStatus.PENDING:
        raise DandiError("No Icechunk upload in progress for this zarr: begin one first", 400)
    return Response(_credentials(services.vend_credentials(zarr)))


@api_view(["GET"])
def state_view(request: Request, zarr_id: str) -> Response:
    """Whether a Zarr is an Icechunk repository, why its last finalize was refused, and each
    Dandiset's finalized draft snapshot."""
    zarr = get_object_or_404(
        ZarrArchive.objects.filter(dandiset__in=get_visible_dandisets(request.user)), zarr_id=zarr_id
    )
    icechunk_zarr = IcechunkZarr.objects.filter(zarr_archive=zarr).first()
    drafts = IcechunkDraft.objects.filter(zarr=icechunk_zarr).select_related("dandiset") if icechunk_zarr else []
    return Response({
        "zarr_id": str(zarr.zarr_id),
        "icechunk": icechunk_zarr is not None,
        "status": zarr.status,
        "finalize_error": icechunk_zarr.finalize_error if icechunk_zarr else "",
        "drafts": [
            {"dandiset": d.dandiset.identifier, "branch": d.branch, "snapshot_id": d.snapshot_id or None,
             "checksum": d.checksum or None, "size": d.size}
            for d in drafts
        ],
    })


@api_view(["POST"])
def migrate_view(request: Request, zarr_id: str) -> Response:
    """Make a plain Zarr (Complete) an Icechunk repository in place, its chunks referenced where
    they are (owners only): from then on it uploads through Icechunk and can be published."""
    zarr = _owned_zarr(request, zarr_id, lock=False)
    draft = services.migrate(str(zarr.zarr_id))
    return Response({"zarr_id": str(zarr.zarr_id), "snapshot_id": draft.snapshot_id, "checksum": draft.checksum,
                     "file_count": draft.file_count, "size": draft.size})

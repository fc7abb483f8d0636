"""What the archive's Icechunk hooks do (the patch calls them through ``dandiapi/zarr/icechunk.py``).

Upload: :func:`begin_upload` makes a Zarr an Icechunk repository, marks it Pending and vends
credentials for its prefix only; the archive's own ``finalize`` then runs :func:`finalize` (in
place of listing the objects) and :func:`ingested`. Read: :func:`asset_metadata` gives a draft
asset its Dandiset's finalized snapshot and a published asset its own. Validate and publish:
:func:`validate_asset` and :func:`check_publishable` read the bucket and write nothing;
:func:`prepare_publish` runs inside the publish transaction and tags after it commits. Files:
:func:`files` lists and downloads a snapshot's files (:mod:`.files`). Reuse:
:func:`attach` gives another Dandiset its own draft of a Zarr. Embargo: :func:`unembargo`.
Migration: :func:`migrate` makes a plain Zarr a repository in place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import icechunk
from dandiapi.api.models import Asset, Dandiset, Version
from dandiapi.api.services.asset import _add_asset_to_version, _remove_asset_from_version
from dandiapi.api.services.exceptions import DandiError, NotAllowedError
from dandiapi.api.services.permissions.dandiset import is_dandiset_owner
from dandiapi.zarr.models import ZarrArchive, ZarrArchiveStatus
from django.db import transaction
from rest_framework import status

from ...errors import DandiIcechunkError, RepositoryNotFoundError, ReuseError, first_line
from ...reference import SnapshotReference, with_snapshot
from ...session import DEFAULT_BRANCH
from ..credentials import CredentialVendor, VendedCredentials
from ..embargo import unembargo_zarr
from ..finalize import attach_draft, finalize_draft
from ..migrate import migrate_zarr
from ..publish import CHECKSUM_KEY
from ..publish import check_publishable as _check_assets
from ..publish import prepare_publish as _prepare_assets
from .conf import AdapterSettings
from .files import files  # noqa: F401 - the archive's files endpoint, for Icechunk Zarrs
from .models import IcechunkDraft, IcechunkZarr

logger = logging.getLogger(__name__)
PLAIN_ZARRS_REFUSED = "Cannot publish dandisets which contain zarrs"  # the archive's own words


@dataclass(frozen=True)
class FinalizedDraft:
    """What ``finalize`` found: the fields the archive's ingest reads, and the snapshot."""

    digest: str
    count: int
    size: int
    snapshot_id: str
    branch: str


def is_icechunk(zarr: ZarrArchive) -> bool:
    return IcechunkZarr.objects.filter(zarr_archive_id=zarr.pk).exists()


def refuse_plain_upload(zarr: ZarrArchive) -> None:
    raise DandiError(
        f"Zarr {zarr.zarr_id} is an Icechunk repository: presigned uploads and deletions would "
        f"bypass it. Upload with POST /api/zarr/{zarr.zarr_id}/icechunk/upload/ (dandi-icechunk)",
        status.HTTP_400_BAD_REQUEST,
    )


def begin_upload(zarr: ZarrArchive) -> tuple[IcechunkDraft, VendedCredentials]:
    """Make ``zarr`` (locked by the caller) an Icechunk repository if it is new, mark it Pending
    and vend credentials for its prefix. Plain Zarrs that hold files stay plain."""
    if zarr.dandiset.unembargo_in_progress:
        raise DandiError("Cannot upload to a zarr during unembargo", status.HTTP_400_BAD_REQUEST)
    if zarr.status in (ZarrArchiveStatus.UPLOADED, ZarrArchiveStatus.INGESTING):
        raise DandiError(ZarrArchive.INGEST_ERROR_MSG, status.HTTP_400_BAD_REQUEST)
    icechunk_zarr = IcechunkZarr.objects.filter(zarr_archive=zarr).first()
    if icechunk_zarr is None:
        if zarr.file_count or zarr.checksum or _has_plain_objects(zarr):
            raise DandiError(
                f"Zarr {zarr.zarr_id} holds files uploaded with presigned URLs: it stays a plain "
                "Zarr. Create a new Zarr to upload it as an Icechunk repository",
                status.HTTP_409_CONFLICT,
            )
        icechunk_zarr = IcechunkZarr.objects.create(zarr_archive=zarr)
    elif icechunk_zarr.finalize_error:
        icechunk_zarr.finalize_error = ""  # a new attempt: the last refusal is history
        icechunk_zarr.save(update_fields=["finalize_error"])
    draft, _ = IcechunkDraft.objects.get_or_create(
        zarr=icechunk_zarr, dandiset=zarr.dandiset, defaults={"branch": DEFAULT_BRANCH}
    )
    zarr.mark_pending()
    zarr.save()
    return draft, vend_credentials(zarr)


def vend_credentials(zarr: ZarrArchive) -> VendedCredentials:
    conf = AdapterSettings.load()
    try:
        return CredentialVendor(conf.location, ttl=conf.credentials_ttl, role_arn=conf.upload_role_arn).vend(
            str(zarr.zarr_id), embargoed=zarr.embargoed
        )
    except DandiIcechunkError as exc:
        raise DandiError(f"cannot vend upload credentials: {exc}", status.HTTP_503_SERVICE_UNAVAILABLE) from None


def _has_plain_objects(zarr: ZarrArchive) -> bool:
    listing = zarr.storage.s3_client.list_objects_v2(
        Bucket=zarr.storage.bucket_name, Prefix=zarr.s3_path(""), MaxKeys=1
    )
    return bool(listing.get("KeyCount"))


def finalize(zarr: ZarrArchive) -> FinalizedDraft | None:
    """Take the upload as the Dandiset's new draft; when that is refused (nothing uploaded, a
    branch another writer moved, the bucket unreachable), put the Zarr back to Pending with the
    reason recorded, so that the user can upload and finalize again."""
    location = AdapterSettings.load().location
    dandiset_id = zarr.dandiset.identifier
    try:
        finalized = finalize_draft(location, str(zarr.zarr_id), dandiset_id)
    except (DandiIcechunkError, icechunk.IcechunkError) as exc:
        reason = first_line(exc)
        logger.warning("finalize of Icechunk Zarr %s refused: %s", zarr.zarr_id, reason)
        with transaction.atomic():
            ZarrArchive.objects.filter(pk=zarr.pk, status=ZarrArchiveStatus.INGESTING).update(
                status=ZarrArchiveStatus.PENDING
            )
            IcechunkZarr.objects.filter(pk=zarr.pk).update(finalize_error=reason)
        return None
    info = finalized.info
    return FinalizedDraft(info.zarr_checksum, info.file_count, info.size, finalized.snapshot_id, finalized.branch)


def ingested(zarr: ZarrArchive, finalized: FinalizedDraft) -> None:
    """Inside the archive's ingest transaction: record the Dandiset's draft, and give a draft
    version whose asset for this Zarr is already published a new draft asset (as the archive
    does for a changed blob), so that the next publish publishes the new snapshot."""
    icechunk_zarr = IcechunkZarr.objects.get(pk=zarr.pk)
    icechunk_zarr.finalize_error = ""
    icechunk_zarr.save(update_fields=["finalize_error"])
    IcechunkDraft.objects.update_or_create(
        zarr=icechunk_zarr, dandiset=zarr.dandiset,
        defaults={"branch": finalized.branch, "snapshot_id": finalized.snapshot_id,
                  "checksum": finalized.digest, "size": finalized.size, "file_count": finalized.count},
    )
    draft_version = zarr.dandiset.draft_version
    for asset in draft_version.assets.filter(zarr=zarr, published=True):
        _remove_asset_from_version(asset=asset, version=draft_version)
        _add_asset_to_version(version=draft_version, asset_blob=None, zarr_archive=zarr, metadata=asset.metadata)


def attach(zarr: ZarrArchive, dandiset: Dandiset, user: Any) -> bool:
    """Reuse: give ``dandiset`` its own draft of ``zarr`` (another Dandiset's Icechunk Zarr) at
    the snapshot last finalized there, on a branch of its own; no byte is copied. Only a public
    Zarr, or one whose Dandiset the user owns, may be reused (False: the archive refuses as
    before, saying nothing about the Zarr)."""
    if zarr.dandiset.embargo_status != Dandiset.EmbargoStatus.OPEN and not is_dandiset_owner(zarr.dandiset, user):
        return False
    source = IcechunkDraft.objects.filter(zarr_id=zarr.pk, dandiset=zarr.dandiset).exclude(snapshot_id="").first()
    if source is None:
        raise DandiError(f"Zarr {zarr.zarr_id} has no finalized upload to reuse yet", status.HTTP_400_BAD_REQUEST)
    try:
        attached = attach_draft(
            AdapterSettings.load().location, str(zarr.zarr_id), dandiset.identifier,
            snapshot_id=source.snapshot_id, dandiset_embargoed=dandiset.embargoed,
        )
    except ReuseError as exc:
        raise DandiError(str(exc), status.HTTP_400_BAD_REQUEST) from None
    IcechunkDraft.objects.update_or_create(
        zarr_id=zarr.pk, dandiset=dandiset,
        defaults={"branch": attached.branch, "snapshot_id": attached.snapshot_id,
                  "checksum": attached.zarr_checksum, "size": attached.size, "file_count": source.file_count},
    )
    return True


def _draft_of(asset: Asset) -> IcechunkDraft | None:
    version = asset.versions.filter(version="draft").select_related("dandiset").first()
    dandiset = version.dandiset if version else asset.zarr.dandiset
    return IcechunkDraft.objects.filter(zarr_id=asset.zarr.pk, dandiset=dandiset).first()


def asset_metadata(asset: Asset, metadata: dict[str, Any]) -> dict[str, Any]:
    """The computed fields of an Icechunk Zarr asset: a published asset keeps what its publish
    recorded (its own snapshot's digest and size); a draft asset names its Dandiset's finalized
    snapshot."""
    if asset.published:
        own = {k: asset.metadata[k] for k in ("contentUrl", "contentSize", "digest", "relatedResource")
               if k in asset.metadata}
        return {**metadata, **own}
    zarr, draft = asset.zarr, _draft_of(asset)
    location = AdapterSettings.load().location
    zarr_id = str(zarr.zarr_id)
    http_url = location.http_url(zarr_id, embargoed=zarr.embargoed)
    reference = (
        SnapshotReference.in_repository(location, zarr_id, draft.snapshot_id, embargoed=zarr.embargoed)
        if draft is not None and draft.snapshot_id else None
    )
    related = with_snapshot(metadata.get("relatedResource"), reference)
    return {
        **metadata,
        "contentUrl": [metadata["contentUrl"][0], *([http_url] if http_url else [])],
        "contentSize": draft.size if draft else 0,
        "digest": {CHECKSUM_KEY: draft.checksum if draft and draft.snapshot_id else None},
        **({"relatedResource": related} if related else {}),
    }


def validate_asset(asset: Asset) -> None:
    """Raise ValueError (a validation error to the archive) when the bucket does not hold what
    the draft asset says; reads the bucket, writes nothing."""
    draft = _draft_of(asset)
    dandiset = draft.dandiset if draft else asset.zarr.dandiset
    problems = _check_assets(
        dandiset.identifier, [asset.published_metadata()], location=AdapterSettings.load().location,
        zarr_ids={asset.path: str(asset.zarr.zarr_id)},
    )
    if problems:
        raise ValueError("; ".join(problems))


def check_publishable(dandiset: Dandiset) -> None:
    """Before the archive locks a Dandiset for publishing: plain Zarrs are refused as before,
    and every draft Icechunk Zarr asset must be publishable. Writes nothing."""
    if dandiset.zarr_archives.filter(icechunk__isnull=True).exists():
        raise NotAllowedError(PLAIN_ZARRS_REFUSED, status.HTTP_400_BAD_REQUEST)
    assets = list(
        dandiset.draft_version.assets.filter(zarr__isnull=False, published=False).select_related("zarr")
    )
    if any(not is_icechunk(a.zarr) for a in assets):
        raise NotAllowedError(PLAIN_ZARRS_REFUSED, status.HTTP_400_BAD_REQUEST)
    if not assets:
        return
    problems = _check_assets(
        dandiset.identifier, [a.published_metadata() for a in assets],
        location=AdapterSettings.load().location, zarr_ids=_zarr_ids(assets),
    )
    if problems:
        raise NotAllowedError("Cannot publish: " + "; ".join(problems), status.HTTP_400_BAD_REQUEST)


def _zarr_ids(assets: Iterable[Asset]) -> Mapping[str, str]:
    return {a.path: str(a.zarr.zarr_id) for a in assets}


def prepare_publish(version: Version, assets: Iterable[Asset]) -> dict[int, dict[str, Any]]:
    """Inside the archive's publish transaction: the published metadata of each Icechunk Zarr
    asset (by asset ID). The tags are made once the transaction commits."""
    zarr_assets = [a for a in assets if is_icechunk(a.zarr)]
    if not zarr_assets:
        return {}
    conf = AdapterSettings.load()
    prepared = _prepare_assets(
        version.dandiset.identifier, version.version, [a.published_metadata() for a in zarr_assets],
        location=conf.location, zarr_ids=_zarr_ids(zarr_assets),
    )
    zarr_ids = sorted({str(a.zarr.zarr_id) for a in zarr_assets})
    transaction.on_commit(lambda: _commit(prepared.commit, zarr_ids, conf))
    return {a.id: published for a, published in zip(zarr_assets, prepared.published, strict=True)}


def _commit(commit: Any, zarr_ids: list[str], conf: AdapterSettings) -> None:
    from ..audit import protect_published_objects

    try:
        commit()
        if conf.object_lock:
            for zarr_id in zarr_ids:
                protect_published_objects(conf.location, zarr_id)
    except (DandiIcechunkError, icechunk.IcechunkError) as exc:
        # The version is committed and names its snapshots; the scheduled audit makes the tags.
        logger.error("tagging published Zarrs %s failed (the audit will repair): %s", zarr_ids, first_line(exc))


@contextmanager
def reopen_draft_on_refusal(dandiset_id: int) -> Iterator[None]:
    try:
        yield
    except (DandiIcechunkError, icechunk.IcechunkError) as exc:
        reopened = Version.objects.filter(
            dandiset_id=dandiset_id, version="draft", status=Version.Status.PUBLISHING
        ).update(status=Version.Status.PENDING)
        logger.error("publish of Dandiset %s refused (draft reopened: %s): %s",
                     dandiset_id, bool(reopened), first_line(exc))


def migrate(zarr_id: str) -> IcechunkDraft:
    """Make a plain Zarr (Complete, its checksum recorded) an Icechunk repository in place, its
    chunks referenced where they are (``docs/migration.md``); from then on it is an Icechunk
    Zarr: presigned uploads are refused, its draft asset names the snapshot, it can be published.
    The Zarr stays locked while its objects are read, so no presigned upload changes them."""
    with transaction.atomic():
        zarr = ZarrArchive.objects.select_for_update(of=["self"]).select_related("dandiset").get(zarr_id=zarr_id)
        if is_icechunk(zarr):
            raise DandiError(f"Zarr {zarr.zarr_id} is already an Icechunk repository", status.HTTP_400_BAD_REQUEST)
        if zarr.status != ZarrArchiveStatus.COMPLETE or not zarr.checksum:
            raise DandiError(f"Zarr {zarr.zarr_id} is {zarr.status}: finalize it before migrating it",
                             status.HTTP_400_BAD_REQUEST)
        try:
            result = migrate_zarr(AdapterSettings.load().location, str(zarr.zarr_id), expected_checksum=zarr.checksum,
                                  embargoed=zarr.embargoed, dandiset=zarr.dandiset.identifier)
        except DandiIcechunkError as exc:
            raise DandiError(f"cannot migrate Zarr {zarr.zarr_id}: {first_line(exc)}", status.HTTP_409_CONFLICT) from None
        icechunk_zarr = IcechunkZarr.objects.create(zarr_archive=zarr)
        return IcechunkDraft.objects.create(
            zarr=icechunk_zarr, dandiset=zarr.dandiset, branch=DEFAULT_BRANCH, snapshot_id=result.snapshot_id,
            checksum=result.zarr_checksum, size=result.size, file_count=result.file_count,
        )


def unembargo(dandiset: Dandiset) -> None:
    """Move the Dandiset's Icechunk repositories to the public prefix (server-side copies)."""
    location = AdapterSettings.load().location
    for zarr in dandiset.zarr_archives.filter(icechunk__isnull=False):
        try:
            unembargo_zarr(location, str(zarr.zarr_id))
        except RepositoryNotFoundError:
            pass  # an upload begun but nothing written: nothing to move


def urlpatterns() -> list[Any]:
    from .urls import urlpatterns

    return urlpatterns

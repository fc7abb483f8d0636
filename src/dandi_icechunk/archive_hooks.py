"""What the DANDI archive calls: publish, audit, protect and garbage-collect.

The archive's publish task calls :func:`publish_dandiset` inside its database transaction with
the Dandiset ID, the new version and the published-form metadata of each draft asset, and stores
what it returns (same length, same order)::

    published = publish_dandiset("000123", "0.260101.1200", assets, location=location)

For every Zarr asset the hook checks that the newest snapshot of its repository is what the
draft metadata says (checksum and size), tags it ``dandiset/<dandiset>/<version>``, and records
the snapshot in the returned metadata (see :mod:`dandi_icechunk.reference`). Every check runs
before the first tag, so a refusal publishes nothing. The hook is idempotent: after a crash at
any point, the archive retries and gets the same result without a second tag.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import icechunk

from .audit import (
    AuditReport,
    ProtectResult,
    Publication,
    audit_publications,
    protect_published_objects,
)
from .credentials import CredentialVendor, VendedCredentials
from .embargo import UnembargoResult, unembargo_zarr
from .errors import DandiIcechunkError
from .gc import DEFAULT_RESTORE_WINDOW, GCResult, collect_garbage
from .location import StorageLocation
from .reference import (
    ZARR_MEDIA_TYPE,
    SnapshotReference,
    asset_zarr_id,
    is_snapshot_resource,
    repository_http_url,
)
from .reuse import Attachment, attach_zarr, dandiset_branch, register_checksum
from .session import DEFAULT_BRANCH, CommitInfo, ZarrRepository

_DANDISET_ID = re.compile(r"\d{6}")
_VERSION = re.compile(r"0\.\d{6}\.\d{4}")
CHECKSUM_KEY = "dandi:dandi-zarr-checksum"


class PublishError(DandiIcechunkError):
    """Publishing was refused; nothing was tagged and no metadata was produced."""


def publish_tag(dandiset_id: str, version: str) -> str:
    """The tag a publish makes: ``dandiset/<dandiset_id>/<version>``.

    Versions are unique per Dandiset and Icechunk never lets a deleted tag name be used again,
    so a tag name always means one snapshot.
    """
    return f"dandiset/{dandiset_id}/{version}"


@dataclass(frozen=True)
class _Plan:
    """One Zarr asset to publish: where it is in the list, its repository, and its snapshot."""

    position: int
    repository: ZarrRepository
    snapshot_id: str
    info: CommitInfo
    tagged: bool  # the tag already exists (a retry)


def publish_dandiset(
    dandiset_id: str,
    version: str,
    assets: Sequence[Mapping[str, Any]],
    *,
    location: StorageLocation,
) -> list[dict[str, Any]]:
    """Publish the Zarr assets among ``assets`` and return the published metadata of every asset.

    Non-Zarr assets are returned unchanged. Raises :class:`PublishError` naming every problem
    (no snapshot, snapshot not matching the draft's digest/contentSize, unreadable repository,
    invalid metadata) before anything is tagged.
    """
    if not _DANDISET_ID.fullmatch(dandiset_id):
        raise PublishError(f"{dandiset_id!r} is not a Dandiset ID (six digits, e.g. 000123)")
    if not _VERSION.fullmatch(version):
        raise PublishError(f"{version!r} is not a published version (0.YYMMDD.HHMM)")
    tag = publish_tag(dandiset_id, version)
    plans, problems = _plan(assets, tag, location, dandiset_id)
    if problems:
        raise PublishError(
            f"cannot publish Dandiset {dandiset_id} version {version}; nothing was tagged:\n  "
            + "\n  ".join(problems)
        )
    published = [dict(copy.deepcopy(a)) for a in assets]
    for plan in plans:
        published[plan.position] = _published_asset(assets[plan.position], plan, tag, location)
    problems = [p for i, a in enumerate(published) if (p := _schema_problem(a, assets[i]))]
    if problems:
        raise PublishError("published metadata would not validate:\n  " + "\n  ".join(problems))
    for plan in plans:
        if not plan.tagged:
            _create_tag(plan, tag)
    return published


def _draft_branch(repository: ZarrRepository, dandiset_id: str) -> str:
    """The branch holding ``dandiset_id``'s draft of a Zarr: its own branch when the Zarr was
    attached to it from another Dandiset, otherwise ``main``."""
    branches = repository.icechunk.list_branches()
    for embargoed in (False, True):
        if (branch := dandiset_branch(dandiset_id, embargoed=embargoed)) in branches:
            return branch
    return DEFAULT_BRANCH


def _plan(
    assets: Sequence[Mapping[str, Any]], tag: str, location: StorageLocation, dandiset_id: str
) -> tuple[list[_Plan], list[str]]:
    plans: list[_Plan] = []
    problems: list[str] = []
    for position, asset in enumerate(assets):
        if asset.get("encodingFormat") != ZARR_MEDIA_TYPE:
            continue
        name = asset.get("path") or asset.get("id") or f"asset #{position}"
        try:
            zarr_id = asset_zarr_id(asset)
            repository = ZarrRepository.open(location, zarr_id)
            existing = _tagged_snapshot(repository, tag)
            snapshot_id = existing or repository.resolve(branch=_draft_branch(repository, dandiset_id))
            info = repository.commit_info(snapshot_id)
        except DandiIcechunkError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if info is None:
            problems.append(f"{name}: Zarr {zarr_id} has no uploaded snapshot; upload it first")
            continue
        expected = (asset.get("digest") or {}).get(CHECKSUM_KEY)
        if expected != info.zarr_checksum or asset.get("contentSize") != info.size:
            problems.append(
                f"{name}: the draft says checksum {expected} and size {asset.get('contentSize')}, "
                f"but {'the tagged' if existing else 'the newest'} snapshot {snapshot_id} of Zarr "
                f"{zarr_id} has {info.zarr_checksum} and {info.size}; wait for the upload to "
                "finish and the draft metadata to be updated"
            )
            continue
        plans.append(_Plan(position, repository, snapshot_id, info, tagged=existing is not None))
    return plans, problems


def _tagged_snapshot(repository: ZarrRepository, tag: str) -> str | None:
    return repository.icechunk.lookup_tag(tag) if tag in repository.icechunk.list_tags() else None


def _create_tag(plan: _Plan, tag: str) -> None:
    try:
        plan.repository.icechunk.create_tag(tag, plan.snapshot_id)
    except icechunk.IcechunkError as exc:
        # A concurrent retry may have made the same tag: that is success, anything else is not.
        if _tagged_snapshot(plan.repository, tag) != plan.snapshot_id:
            raise PublishError(
                f"cannot tag snapshot {plan.snapshot_id} of {plan.repository.zarr_id} as {tag}: {exc}"
            ) from None


def _published_asset(
    asset: Mapping[str, Any], plan: _Plan, tag: str, location: StorageLocation
) -> dict[str, Any]:
    repository = plan.repository
    prefix = location.repository_prefix(repository.zarr_id, embargoed=repository.embargoed)
    reference = SnapshotReference(
        repository=repository.url,
        zarr_id=repository.zarr_id,
        snapshot_id=plan.snapshot_id,
        tag=tag,
        url=repository_http_url(location, prefix),
    )
    published = copy.deepcopy(dict(asset))
    published["digest"] = {**(asset.get("digest") or {}), CHECKSUM_KEY: plan.info.zarr_checksum}
    published["contentSize"] = plan.info.size
    published["relatedResource"] = [
        r for r in asset.get("relatedResource") or [] if not is_snapshot_resource(r)
    ] + [reference.to_resource()]
    return published


def _schema_problem(published: Mapping[str, Any], draft: Mapping[str, Any]) -> str | None:
    """Why ``published`` fails dandischema validation or its round trip (None when fine)."""
    if published.get("encodingFormat") != ZARR_MEDIA_TYPE:
        return None
    from dandischema.metadata import validate
    from dandischema.models import PublishedAsset

    name = published.get("path") or published.get("id")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate(dict(published), schema_key="PublishedAsset", json_validation=True)
            round_trip = PublishedAsset(**published).model_dump(mode="json", exclude_none=True)
    except Exception as exc:  # dandischema raises pydantic and jsonschema errors
        return f"{name}: {exc}"
    if SnapshotReference.from_asset(round_trip) != SnapshotReference.from_asset(published):
        return f"{name}: the snapshot reference does not survive the dandischema model"
    return None


def audit_published(
    published_assets: Iterable[Mapping[str, Any]],
    *,
    location: StorageLocation,
    repair: bool = False,
) -> AuditReport:
    """Check every published Zarr asset among ``published_assets`` (the metadata the archive
    stored at publish): its tag resolves, every object it reaches reads back intact, and its
    checksum matches. With ``repair``, restore deleted/overwritten objects and lost tags from
    the bucket's versions first. Non-Zarr assets are skipped."""
    publications = [
        Publication.from_asset(a) for a in published_assets if a.get("encodingFormat") == ZARR_MEDIA_TYPE
    ]
    return audit_publications(publications, location, repair=repair)


def collect_zarr_garbage(
    zarr_id: str,
    published_snapshot_ids: Iterable[str],
    *,
    location: StorageLocation,
    restore_window: timedelta = DEFAULT_RESTORE_WINDOW,
    dry_run: bool = False,
) -> GCResult:
    """Garbage-collect one Zarr's repository, keeping every snapshot the archive published
    (``published_snapshot_ids``) and everything younger than ``restore_window``."""
    return collect_garbage(
        location, zarr_id, published_snapshots=published_snapshot_ids,
        restore_window=restore_window, dry_run=dry_run,
    )


def protect_published(zarr_ids: Iterable[str], *, location: StorageLocation) -> list[ProtectResult]:
    """After a publish, put legal holds on the objects of the published Zarrs' repositories
    (see :func:`~dandi_icechunk.audit.protect_published_objects`)."""
    return [protect_published_objects(location, zarr_id) for zarr_id in zarr_ids]


def attach_zarr_to_dandiset(
    zarr_id: str,
    dandiset_id: str,
    *,
    location: StorageLocation,
    snapshot_id: str | None = None,
    tag: str | None = None,
    dandiset_embargoed: bool = False,
) -> Attachment:
    """Add an existing Zarr (at a published tag or snapshot; default: its newest) to another
    Dandiset's draft without uploading it again (see :mod:`dandi_icechunk.reuse`). The new
    asset's metadata uses the returned checksum and size and the Zarr's own ``zarr_id``."""
    return attach_zarr(
        location, zarr_id, dandiset_id, snapshot_id=snapshot_id, tag=tag,
        dandiset_embargoed=dandiset_embargoed,
    )


def unembargo_dandiset_zarrs(zarr_ids: Iterable[str], *, location: StorageLocation) -> list[UnembargoResult]:
    """When a Dandiset's embargo is lifted: move each of its Zarrs' repositories to the public
    prefix (server-side, no re-upload; snapshot IDs stay valid)."""
    return [unembargo_zarr(location, zarr_id) for zarr_id in zarr_ids]


def vend_upload_credentials(
    zarr_id: str, *, location: StorageLocation, embargoed: bool = False, ttl: timedelta | None = None
) -> VendedCredentials:
    """Short-lived credentials to upload to the repository of ``zarr_id`` only (no delete).
    Run :meth:`~dandi_icechunk.credentials.CredentialVendor.revoke_expired` periodically."""
    vendor = CredentialVendor(location, ttl=ttl) if ttl else CredentialVendor(location)
    return vendor.vend(zarr_id, embargoed=embargoed)


def finalize_upload(zarr_id: str, *, location: StorageLocation) -> CommitInfo:
    """After an upload with vended credentials: enter the new tip in the checksum lookup (which
    uploaders cannot write) and return its commit metadata, for the asset's digest and size."""
    repository = ZarrRepository.open(location, zarr_id)
    tip = repository.resolve()
    info = repository.commit_info(tip)
    if info is None:
        raise DandiIcechunkError(f"Zarr {zarr_id} has no uploaded snapshot to finalize")
    register_checksum(location, info.zarr_checksum, repository.zarr_id, tip, embargoed=repository.embargoed)
    return info

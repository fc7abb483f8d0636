"""What the DANDI archive calls: publish, audit, protect and garbage-collect.

The archive validates a draft with :func:`check_publishable` (no side effects; each line it
returns is a validation error). Its publish task calls :func:`prepare_publish` inside its
database transaction with the Dandiset ID, the new version and the published-form metadata of
each draft asset, stores ``.published`` (same length, same order) and commits the tags once its
transaction has committed::

    prepared = prepare_publish("000123", "0.260101.1200", assets, location=location,
                               zarr_ids={asset.path: str(asset.zarr.zarr_id), ...})
    transaction.on_commit(prepared.commit)

(see :mod:`dandi_icechunk.archive.publish`; :mod:`dandi_icechunk.archive.django` is the Django
app that does this inside dandi-archive). The other hooks, by when the archive calls them:

- an upload begins: :func:`vend_upload_credentials`; it ends: :func:`finalize_upload`;
- a Zarr joins another Dandiset: :func:`attach_zarr_to_dandiset`;
- a draft is validated: :func:`check_publishable`;
- a Dandiset is published: :func:`prepare_publish` (or :func:`publish_dandiset` outside a
  database transaction), then :func:`protect_published`;
- an embargo is lifted: :func:`unembargo_dandiset_zarrs`;
- on a schedule: :func:`audit_published` and :func:`collect_zarr_garbage`.

Everything here is a thin call into :mod:`dandi_icechunk.archive`; this module is the whole API
the archive depends on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from .archive.audit import (
    AuditReport,
    ProtectResult,
    Publication,
    audit_publications,
    protect_published_objects,
)
from .archive.credentials import CredentialVendor, VendedCredentials
from .archive.embargo import UnembargoResult, unembargo_zarr
from .archive.finalize import attach_draft, finalize_draft
from .archive.gc import DEFAULT_RESTORE_WINDOW, GCResult, collect_garbage
from .archive.migrate import MigrationError, MigrationResult, migrate_zarr
from .archive.publish import (
    PreparedPublish,
    PublishError,
    check_publishable,
    prepare_publish,
    publish_dandiset,
)
from .errors import FinalizeError
from .location import StorageLocation
from .reference import ZARR_MEDIA_TYPE
from .reuse import Attachment
from .session import CommitInfo, publish_tag

__all__ = [
    "FinalizeError",
    "MigrationError",
    "MigrationResult",
    "PreparedPublish",
    "PublishError",
    "attach_zarr_to_dandiset",
    "audit_published",
    "check_publishable",
    "collect_zarr_garbage",
    "finalize_upload",
    "migrate_zarr",
    "prepare_publish",
    "protect_published",
    "publish_dandiset",
    "publish_tag",
    "unembargo_dandiset_zarrs",
    "vend_upload_credentials",
]


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
    asset's metadata uses the returned checksum and size and the Zarr's own ``zarr_id``.
    The new draft is recorded, so its branch is guarded like every finalized draft."""
    return attach_draft(
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


def finalize_upload(
    zarr_id: str, *, location: StorageLocation, dandiset_id: str | None = None
) -> CommitInfo:
    """After an upload with vended credentials: check the refs, record the Dandiset's new draft
    (which publish then publishes), enter it in the checksum lookup and return its commit
    metadata, for the asset's digest and size (see :mod:`dandi_icechunk.archive.finalize`).
    The archive always passes ``dandiset_id``."""
    return finalize_draft(location, zarr_id, dandiset_id).info

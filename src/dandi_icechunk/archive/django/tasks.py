"""Scheduled work for the archive's Celery beat (see ``docs/archive-operators.md``):

- :func:`audit_published_zarrs`: every published Icechunk Zarr asset still reads back as
  published (tag, objects, checksum); with ``repair``, restore from the bucket's versions;
- :func:`audit_embargoed_zarrs`: no embargoed Icechunk Zarr can be read without credentials;
- :func:`collect_zarr_garbage`: each repository's unreachable objects older than the restore
  window, keeping every snapshot a published asset names;
- :func:`revoke_expired_credentials`: delete vended upload users whose credentials expired;
- :func:`migrate_zarr_archive`: make one plain Zarr an Icechunk repository in place (run by the
  operator, one task per Zarr: Celery spreads them over its workers).

:data:`~.schedule.BEAT_SCHEDULE` runs them.
"""

from __future__ import annotations

import logging

from celery import shared_task
from dandiapi.api.models import Asset, Dandiset
from dandiapi.api.services.exceptions import DandiError

from ...errors import RepositoryNotFoundError
from ...reference import SnapshotReference
from ..audit import Publication, audit_publications, check_embargoed_private
from ..credentials import CredentialVendor
from ..gc import collect_garbage
from ..publish import complete_publication
from .conf import AdapterSettings
from .models import IcechunkZarr

logger = logging.getLogger(__name__)


def _published_icechunk_assets() -> list[Asset]:
    return list(
        Asset.objects.filter(published=True, zarr__icechunk__isnull=False).only("metadata").iterator()
    )


@shared_task(soft_time_limit=6 * 3600)
def audit_published_zarrs(*, repair: bool = False) -> dict:
    """First finish publications whose tagging did not (the bucket was down after the archive
    committed), then audit every published Icechunk Zarr asset."""
    location = AdapterSettings.load().location
    publications = [Publication.from_asset(a.metadata) for a in _published_icechunk_assets()]
    for publication in publications:
        if publication.tag and complete_publication(location, publication.zarr_id, publication.tag,
                                                    publication.snapshot_id):
            logger.warning("made the missing tag %s of published Zarr %s", publication.tag, publication.zarr_id)
    report = audit_publications(publications, location, repair=repair)
    for problem in report.problems:
        logger.error("audit of published Zarrs: %s", problem)
    return report.to_json()


@shared_task(soft_time_limit=3600)
def audit_embargoed_zarrs() -> list[str]:
    embargoed = IcechunkZarr.objects.filter(
        zarr_archive__dandiset__embargo_status__in=[Dandiset.EmbargoStatus.EMBARGOED, Dandiset.EmbargoStatus.UNEMBARGOING],
        drafts__snapshot_id__gt="",
    ).distinct()
    problems = check_embargoed_private(
        AdapterSettings.load().location, [str(z.zarr_archive.zarr_id) for z in embargoed.select_related("zarr_archive")]
    )
    for problem in problems:
        logger.error("audit of embargoed Zarrs: %s", problem)
    return problems


@shared_task(soft_time_limit=6 * 3600)
def collect_zarr_garbage(*, dry_run: bool = False) -> list[dict]:
    conf = AdapterSettings.load()
    published: dict[str, set[str]] = {}
    for asset in _published_icechunk_assets():
        reference = SnapshotReference.from_asset(asset.metadata)
        published.setdefault(reference.zarr_id, set()).add(reference.snapshot_id)
    results = []
    for zarr in IcechunkZarr.objects.select_related("zarr_archive").iterator():
        zarr_id = str(zarr.zarr_archive.zarr_id)
        try:
            result = collect_garbage(
                conf.location, zarr_id, published_snapshots=published.get(zarr_id, set()),
                restore_window=conf.gc_restore_window, dry_run=dry_run,
            )
        except RepositoryNotFoundError:
            continue  # an upload begun but nothing written
        results.append(result.to_json())
    return results


@shared_task
def revoke_expired_credentials() -> int:
    conf = AdapterSettings.load()
    return CredentialVendor(conf.location, ttl=conf.credentials_ttl, role_arn=conf.upload_role_arn).revoke_expired()



@shared_task(soft_time_limit=6 * 3600)
def migrate_zarr_archive(zarr_id: str) -> dict:
    """Migrate one plain Zarr in place (:func:`.services.migrate`); its result, or why not."""
    from .services import migrate

    try:
        draft = migrate(zarr_id)
    except DandiError as exc:
        logger.error("migration of Zarr %s refused: %s", zarr_id, exc.message)
        return {"zarr_id": zarr_id, "migrated": False, "error": exc.message}
    return {"zarr_id": zarr_id, "migrated": True, "snapshot_id": draft.snapshot_id, "checksum": draft.checksum}

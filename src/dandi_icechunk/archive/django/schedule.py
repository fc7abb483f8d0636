"""When the adapter's tasks run: the audits daily, the revocation of expired upload credentials
hourly. The archive's settings merge it into its own (importable before Django is set up)::

    from dandi_icechunk.archive.django.schedule import BEAT_SCHEDULE
    CELERY_BEAT_SCHEDULE = {**CELERY_BEAT_SCHEDULE, **BEAT_SCHEDULE}

Zarr garbage collection (``tasks.collect_zarr_garbage``) is left out, as the archive's own
garbage collection is not scheduled yet either: add it when the archive is ready.
"""

from __future__ import annotations

from datetime import timedelta

_TASKS = "dandi_icechunk.archive.django.tasks"

BEAT_SCHEDULE = {
    "icechunk-audit-published-zarrs": {
        "task": f"{_TASKS}.audit_published_zarrs", "schedule": timedelta(days=1).total_seconds(),
    },
    "icechunk-audit-embargoed-zarrs": {
        "task": f"{_TASKS}.audit_embargoed_zarrs", "schedule": timedelta(days=1).total_seconds(),
    },
    "icechunk-revoke-expired-credentials": {
        "task": f"{_TASKS}.revoke_expired_credentials", "schedule": timedelta(hours=1).total_seconds(),
    },
}

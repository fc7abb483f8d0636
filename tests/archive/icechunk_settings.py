"""The archive's test settings with the dandi-icechunk adapter installed (repositories in the
archive's own test bucket, credentials vended by SeaweedFS's IAM), as docs/archive-operators.md
tells an operator to configure it."""

from dandiapi.settings.testing import *  # noqa: F403

from dandi_icechunk.archive.django.schedule import BEAT_SCHEDULE

INSTALLED_APPS = [*INSTALLED_APPS,  # noqa: F405
                  "dandi_icechunk.archive.django"]
CELERY_BEAT_SCHEDULE = {**globals().get("CELERY_BEAT_SCHEDULE", {}), **BEAT_SCHEDULE}

"""The archive's test settings with the dandi-icechunk adapter installed (repositories in the
archive's own test bucket, credentials vended by SeaweedFS's IAM)."""

from dandiapi.settings.testing import *

INSTALLED_APPS = [*INSTALLED_APPS, "dandi_icechunk.archive.django"]

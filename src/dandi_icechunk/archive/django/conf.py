"""The adapter's settings, read from Django's settings each time (no module state).

``DANDI_ICECHUNK_STORAGE_URL``
    Where the repositories are (``s3://BUCKET/PREFIX?endpoint_url=...``). Default: the archive's
    own bucket and endpoint, prefix ``DANDI_ICECHUNK_PREFIX`` (default none), with the archive's
    storage credentials (none on AWS: the instance role).
``DANDI_ICECHUNK_CREDENTIALS_TTL``
    Lifetime of vended upload credentials, in seconds (default 3600).
``DANDI_ICECHUNK_UPLOAD_ROLE_ARN``
    Vend upload credentials as STS sessions of this role (AWS), each limited by a session policy
    to one repository. Default none: one IAM user per Zarr (servers without STS).
``DANDI_ICECHUNK_OBJECT_LOCK``
    Put legal holds on what a publish reaches (the bucket must have Object Lock). Default False.
``DANDI_ICECHUNK_GC_RESTORE_WINDOW``
    Zarr garbage collection keeps everything younger than this many days (default 30).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files.storage import default_storage

from ...location import S3Credentials, StorageLocation


@dataclass(frozen=True)
class AdapterSettings:
    location: StorageLocation
    credentials_ttl: timedelta
    upload_role_arn: str | None
    object_lock: bool
    gc_restore_window: timedelta

    @classmethod
    def load(cls) -> AdapterSettings:
        return cls(
            location=_location(),
            credentials_ttl=timedelta(seconds=getattr(settings, "DANDI_ICECHUNK_CREDENTIALS_TTL", 3600)),
            upload_role_arn=getattr(settings, "DANDI_ICECHUNK_UPLOAD_ROLE_ARN", None),
            object_lock=getattr(settings, "DANDI_ICECHUNK_OBJECT_LOCK", False),
            gc_restore_window=timedelta(days=getattr(settings, "DANDI_ICECHUNK_GC_RESTORE_WINDOW", 30)),
        )


def _location() -> StorageLocation:
    storage = default_storage
    key, secret = getattr(storage, "access_key", None), getattr(storage, "secret_key", None)
    credentials = S3Credentials(key, secret, getattr(storage, "security_token", None)) if key and secret else None
    legacy_root = getattr(settings, "DANDI_ZARR_PREFIX_NAME", "zarr")  # where the archive's own Zarrs are
    url = getattr(settings, "DANDI_ICECHUNK_STORAGE_URL", None)
    if url:
        return dataclasses.replace(StorageLocation.parse(url), credentials=credentials, legacy_root=legacy_root)
    return StorageLocation(
        kind="s3",
        legacy_root=legacy_root,
        bucket=storage.bucket_name,
        prefix=getattr(settings, "DANDI_ICECHUNK_PREFIX", ""),
        endpoint_url=getattr(storage, "endpoint_url", None),
        region=getattr(storage, "region_name", None),
        credentials=credentials,
    )

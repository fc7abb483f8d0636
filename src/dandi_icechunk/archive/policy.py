"""The bucket policy statements that keep embargoed Zarrs private on DANDI's public bucket.

DANDI's bucket lets anyone get and list (``s3:Get*``, ``s3:List*`` for ``*``) and hides objects
tagged ``embargoed=true`` with a Deny. Icechunk cannot tag what it writes, so embargoed
repositories live under their own prefix, which needs a Deny of its own. Both statements exempt
the archive's identities (``aws:username`` for IAM users, ``aws:PrincipalArn`` for roles). The
users the archive vends upload credentials to (one per Zarr, named by its zarr_id) may read
their own embargoed repository and no other: the bucket's public Allow covers them too, so a
third statement denies them every embargoed repository but ``${aws:username}``'s:

>>> statements = embargo_deny_statements("dandiarchive", archive_usernames=["dandi-archive"])

:func:`dandi_bucket_policy` is DANDI's public-read policy with them, as the tests run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..location import EMBARGOED_PREFIX, PUBLIC_PREFIX
from ..objects import EMBARGO_TAG

_ZARR_ID_PATTERN = "????????-????-????-????-????????????"  # the name of each Zarr's upload user


def embargo_deny_statements(
    bucket: str,
    *,
    prefix: str = "",
    archive_usernames: Sequence[str] = (),
    archive_role_arns: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Deny reads of the embargoed repositories' prefix and of objects tagged ``embargoed=true``
    to everyone but the archive's identities."""
    exempt: dict[str, Any] = {"StringNotLike": {"aws:username": [*archive_usernames, _ZARR_ID_PATTERN]}}
    if archive_role_arns:
        exempt["ArnNotLike"] = {"aws:PrincipalArn": list(archive_role_arns)}
    base = "/".join(p for p in (bucket, prefix) if p)
    return [
        {
            "Sid": "DenyEmbargoedZarrRepositories",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{base}/{EMBARGOED_PREFIX}/*",
            "Condition": exempt,
        },
        {
            "Sid": "DenyUploadersOtherEmbargoedZarrs",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:GetObject",
            "NotResource": [  # their own repository, embargoed or public
                f"arn:aws:s3:::{base}/{EMBARGOED_PREFIX}/${{aws:username}}/*",
                f"arn:aws:s3:::{base}/{PUBLIC_PREFIX}/*",
            ],
            "Condition": {"StringLike": {"aws:username": [_ZARR_ID_PATTERN]}},
        },
        {
            "Sid": "DenyEmbargoedObjects",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{bucket}/*",
            "Condition": {
                "StringEquals": {f"s3:ExistingObjectTag/{EMBARGO_TAG['Key']}": EMBARGO_TAG["Value"]},
                **({"StringNotEquals": {"aws:username": list(archive_usernames)}} if archive_usernames else {}),
                **({"ArnNotLike": {"aws:PrincipalArn": list(archive_role_arns)}} if archive_role_arns else {}),
            },
        },
    ]


def dandi_bucket_policy(bucket: str, *, archive_usernames: Sequence[str] = ()) -> dict[str, Any]:
    """DANDI's bucket policy: anyone may get and list, except what the embargo statements deny."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PublicRead",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            },
            *embargo_deny_statements(bucket, archive_usernames=archive_usernames),
        ],
    }

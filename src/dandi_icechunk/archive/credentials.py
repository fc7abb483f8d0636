"""Short-lived upload credentials scoped to one repository, vended by the archive.

Uploaders never hold bucket-wide credentials. For each upload the archive calls
:meth:`CredentialVendor.vend`, which gives credentials that may GetObject, PutObject and
ListBucket on that repository's prefix only (no DeleteObject: an uploader cannot destroy
anything), in one of two ways:

- **STS** (AWS; SeaweedFS with roles in its IAM config), when a ``role_arn`` is given, for
  public Zarrs: ``AssumeRole`` with the repository's policy as the inline session policy, for
  the TTL (at most an hour, at least AWS's 15 minutes). Nothing to clean up: sessions expire by
  themselves. (Embargoed Zarrs keep IAM users: the bucket policy's embargo exemption is keyed
  on ``aws:username``, which sessions lack.)
- **IAM users** (servers without STS): the Zarr's IAM user (one per Zarr, named by its zarr_id,
  with the same policy) gets a new access key, with an expiry the archive enforces by calling
  :meth:`CredentialVendor.revoke_expired` (deleting expired keys, and users left with none). The
  user's name being the zarr_id lets DANDI's bucket policy pin vended users to their own
  embargoed repository (``${aws:username}``, see :mod:`dandi_icechunk.archive.policy`).

With an Arraylake location (:mod:`dandi_icechunk.arraylake_location`), Arraylake vends them: the
archive asks for the repository's credentials with its own Arraylake token and hands them on, so
the archive still decides who uploads (Dandiset ownership) and Arraylake what they may touch.

Clients pass a ``credentials_provider`` that asks again before expiry (Icechunk's refreshable
credentials), so a long upload survives the expiry of each key or session.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from ..errors import CredentialError
from ..location import S3Credentials, StorageLocation, validate_zarr_id
from ..objects import RepositoryObjects, prefix_objects

DEFAULT_TTL = timedelta(hours=1)
_STS_SECONDS = (900, 3600)  # AWS's shortest session; the longest this project hands out
_RECORDS = "zarr-icechunk-credentials"


@dataclass(frozen=True)
class VendedCredentials:
    """Credentials for one repository prefix, valid until ``credentials.expires_at``."""

    zarr_id: str
    prefix: str
    user: str
    credentials: S3Credentials


def repository_policy(bucket: str, prefix: str) -> dict[str, Any]:
    """The IAM policy of upload credentials: read, write and list one prefix; nothing else."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*"],
            },
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
            },
        ],
    }


class VendingProvider:
    """A picklable credentials provider for one repository: it hands out the current vended
    credentials until half their lifetime is left, then vends new ones.

    Icechunk keeps the provider pickled and unpickles it for each refresh, so the current
    credentials are shared between copies in this process (``_CURRENT``), not kept on the copy.
    """

    def __init__(self, vendor: CredentialVendor, zarr_id: str, embargoed: bool = False) -> None:
        self.vendor, self.zarr_id, self.embargoed = vendor, zarr_id, embargoed

    def __call__(self) -> S3Credentials:
        location = self.vendor.location
        key = (location.endpoint_url, location.bucket, location.prefix, self.zarr_id, self.embargoed)
        with _CURRENT_LOCK:
            current = _CURRENT.get(key)
            now = datetime.now(UTC)
            if current is None or current.expires_at is None or current.expires_at - now < self.vendor.ttl / 2:
                current = _CURRENT[key] = self.vendor.vend(self.zarr_id, embargoed=self.embargoed).credentials
            return current


_CURRENT: dict[tuple[Any, ...], S3Credentials] = {}
_CURRENT_LOCK = threading.Lock()


class CredentialVendor:
    """Vends and revokes upload credentials, with the archive's own (admin) credentials.

    >>> vendor = CredentialVendor(archive_location)
    >>> upload_location = vendor.upload_location(zarr_id)   # refreshes itself before expiry
    """

    def __init__(
        self, location: StorageLocation, *, ttl: timedelta = DEFAULT_TTL, role_arn: str | None = None
    ) -> None:
        if location.kind != "s3":
            raise CredentialError("credentials are vended only for S3 buckets")
        self.location = location
        self.ttl = ttl
        self.role_arn = role_arn
        self._clients: tuple[Any, RepositoryObjects] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "ttl": self.ttl, "role_arn": self.role_arn}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"], ttl=state["ttl"], role_arn=state.get("role_arn"))  # type: ignore[misc]

    def _client(self, service: str) -> Any:
        location, creds = self.location, self.location.credentials
        return boto3.client(
            service,
            endpoint_url=location.endpoint_url,
            region_name=location.region or "us-east-1",
            aws_access_key_id=creds.access_key_id if creds else None,
            aws_secret_access_key=creds.secret_access_key if creds else None,
        )

    @property
    def _iam(self) -> Any:
        return self._connect()[0]

    @property
    def _records(self) -> RepositoryObjects:
        return self._connect()[1]

    def _connect(self) -> tuple[Any, RepositoryObjects]:
        if self._clients is not None:
            return self._clients
        location = self.location
        records = prefix_objects(location, "/".join(p for p in (location.prefix, _RECORDS) if p))
        self._clients = (self._client("iam"), records)
        return self._clients

    def vend(self, zarr_id: str, *, embargoed: bool = False) -> VendedCredentials:
        """A new key for uploading to the repository of ``zarr_id`` (and only that). The Zarr's
        user keeps at most two keys (AWS's limit): the oldest goes when a third is made."""
        zarr_id = validate_zarr_id(zarr_id)
        prefix = self.location.repository_prefix(zarr_id, embargoed=embargoed)
        if self.location.arraylake is not None:
            credentials = self.location.arraylake.repository_credentials(self.location, zarr_id, embargoed=embargoed)
            user = f"arraylake:{self.location.arraylake.repo_name(zarr_id, embargoed=embargoed)}"
            return VendedCredentials(zarr_id=zarr_id, prefix=prefix, user=user, credentials=credentials)
        if self.role_arn is not None and not embargoed:
            return self._assume_role(zarr_id, prefix)
        user = zarr_id
        issued_at = datetime.now(UTC)
        expires_at = issued_at + self.ttl
        iam = self._iam
        try:
            try:
                iam.create_user(UserName=user)
            except iam.exceptions.EntityAlreadyExistsException:
                pass
            iam.put_user_policy(
                UserName=user, PolicyName="repository",
                PolicyDocument=json.dumps(repository_policy(self.location.bucket, prefix)),
            )
            keys = sorted(iam.list_access_keys(UserName=user)["AccessKeyMetadata"], key=self._issued)
            for old in keys[: max(0, len(keys) - 1)]:
                iam.delete_access_key(UserName=user, AccessKeyId=old["AccessKeyId"])
            key = iam.create_access_key(UserName=user)["AccessKey"]
        except Exception as exc:  # botocore raises ClientError and connection errors
            raise CredentialError(f"cannot vend credentials for {zarr_id}: {exc}") from None
        record = {"user": user, "zarr_id": zarr_id, "access_key_id": key["AccessKeyId"],
                  "issued_at": issued_at.isoformat(), "expires_at": expires_at.isoformat()}
        self._records.put_if_absent(f"{key['AccessKeyId']}.json", json.dumps(record).encode())
        return VendedCredentials(
            zarr_id=zarr_id, prefix=prefix, user=user,
            credentials=S3Credentials(key["AccessKeyId"], key["SecretAccessKey"], expires_at=expires_at),
        )

    def _assume_role(self, zarr_id: str, prefix: str) -> VendedCredentials:
        seconds = min(max(int(self.ttl.total_seconds()), _STS_SECONDS[0]), _STS_SECONDS[1])
        try:
            answer = self._client("sts").assume_role(
                RoleArn=self.role_arn, RoleSessionName=f"zarr-{zarr_id}", DurationSeconds=seconds,
                Policy=json.dumps(repository_policy(self.location.bucket, prefix)),
            )
        except Exception as exc:  # botocore raises ClientError and connection errors
            raise CredentialError(f"cannot vend credentials for {zarr_id}: {exc}") from None
        c = answer["Credentials"]
        return VendedCredentials(
            zarr_id=zarr_id, prefix=prefix, user=answer["AssumedRoleUser"]["Arn"],
            credentials=S3Credentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], c["Expiration"]),
        )

    def _issued(self, key: dict[str, Any]) -> datetime:
        """When an access key was made: the server's date (AWS), else from our record of it
        (SeaweedFS reports none); oldest first when neither is known."""
        if "CreateDate" in key:
            return key["CreateDate"]
        record = self._records.get(f"{key['AccessKeyId']}.json")
        if record is None:
            return datetime.min.replace(tzinfo=UTC)
        return datetime.fromisoformat(json.loads(record)["issued_at"])

    def upload_location(self, zarr_id: str, *, embargoed: bool = False) -> StorageLocation:
        """A storage location for the uploader: vended credentials, renewed before they expire."""
        return StorageLocation(
            kind="s3", bucket=self.location.bucket, prefix=self.location.prefix,
            endpoint_url=self.location.endpoint_url, region=self.location.region,
            credentials_provider=VendingProvider(self, zarr_id, embargoed),
        )

    def revoke_expired(self, now: datetime | None = None) -> int:
        """Delete every vended key that has expired, and users left with no key; return how
        many keys. (STS sessions expire by themselves.)"""
        now = now or datetime.now(UTC)
        revoked = 0
        for name, _, _ in list(self._records.list_with_times("")):
            data = self._records.get(name)
            if data is None:
                continue
            record = json.loads(data)
            if datetime.fromisoformat(record["expires_at"]) > now:
                continue
            iam = self._iam
            try:
                if "access_key_id" in record:
                    iam.delete_access_key(UserName=record["user"], AccessKeyId=record["access_key_id"])
                if not iam.list_access_keys(UserName=record["user"])["AccessKeyMetadata"]:
                    self.revoke(record["user"])
            except iam.exceptions.NoSuchEntityException:
                pass
            self._records.delete(name)
            revoked += 1
        return revoked

    def revoke(self, user: str) -> None:
        """Delete one vended user, its keys and its policy, at once."""
        try:
            for key in self._iam.list_access_keys(UserName=user)["AccessKeyMetadata"]:
                self._iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
            self._iam.delete_user_policy(UserName=user, PolicyName="repository")
            self._iam.delete_user(UserName=user)
        except self._iam.exceptions.NoSuchEntityException:
            pass

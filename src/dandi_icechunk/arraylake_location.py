"""Arraylake as the home of the repositories: each Zarr asset's repository is an Arraylake repo.

A location written ``arraylake://ORG/BUCKET_NICKNAME`` keeps every repository in the bucket that
the org's Arraylake bucket config names, at the same key prefix as a bucket-backed location
(``zarr-icechunk/<zarr_id>``, ``zarr-icechunk-embargoed/<zarr_id>``), registered in Arraylake as

    ORG/zarr-<zarr_id>              a public Zarr
    ORG/zarr-embargoed-<zarr_id>    an embargoed Zarr

and opened with the real ``arraylake`` client, which hands back a plain
``icechunk.Repository`` with the credentials Arraylake vends. Everything above the repository
(upload, sessions, publish tags, the digest index, reuse, reads) is unchanged, and the objects
of ours beside Icechunk's (digest index, checksum lookup, the archive's record) stay in the
same bucket, reached with the bucket config's keys (HMAC) or with credentials Arraylake vends
for the bucket (a delegated role). Readers of public data need no Arraylake account: published
metadata names the bucket URL of each repository.

>>> location = StorageLocation.resolve("arraylake://dandi/dandi-bucket")   # doctest: +SKIP

The service is ``?service_uri=URL`` or ``$ARRAYLAKE_SERVICE__URI`` (else Earthmover's), the
token ``$ARRAYLAKE_TOKEN``. Nothing here imports ``arraylake`` until such a location is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import icechunk
import platformdirs

from .errors import (
    AccessDeniedError,
    CredentialError,
    DandiIcechunkError,
    RepositoryNotFoundError,
    StorageLocationError,
    first_line,
)
from .location import S3Credentials, StorageLocation, validate_zarr_id
from .objects import child_prefixes
from .records import JsonRecord

if TYPE_CHECKING:
    import arraylake

SCHEME = "arraylake"
TOKEN_ENV_VAR = "ARRAYLAKE_TOKEN"
SERVICE_ENV_VAR = "ARRAYLAKE_SERVICE__URI"


def _import_arraylake() -> Any:
    """``arraylake``, with its config file kept in our config directory (importing it writes
    one) unless ``$ARRAYLAKE_CONFIG`` says where."""
    os.environ.setdefault("ARRAYLAKE_CONFIG", platformdirs.user_config_dir("dandi-icechunk") + "/arraylake")
    try:
        import arraylake
    except ImportError:
        raise StorageLocationError(
            "an arraylake:// location needs the Arraylake client: pip install 'dandi-icechunk[arraylake]'"
        ) from None
    return arraylake


@dataclass(frozen=True)
class ArraylakeRepositories:
    """The Arraylake org and bucket config that hold the repositories of a location."""

    org: str
    bucket_nickname: str
    service_uri: str | None = None
    token: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, url: str) -> ArraylakeRepositories:
        """Parse ``arraylake://ORG/BUCKET_NICKNAME[?service_uri=URL]``."""
        parts = urlsplit(url)
        nickname = parts.path.strip("/")
        query = parse_qs(parts.query)
        if parts.scheme != SCHEME or not parts.netloc or not nickname or "/" in nickname or set(query) - {"service_uri"}:
            raise StorageLocationError(
                f"storage URL {url!r}: an Arraylake location is arraylake://ORG/BUCKET_NICKNAME"
                "[?service_uri=URL]"
            )
        service = query.get("service_uri", [None])[0] or os.environ.get(SERVICE_ENV_VAR)
        if service is not None and urlsplit(service).scheme not in ("http", "https"):
            raise StorageLocationError(f"storage URL {url!r}: service_uri must be an http(s) URL")
        return cls(org=parts.netloc, bucket_nickname=nickname, service_uri=service)

    @property
    def url(self) -> str:
        """The canonical URL (no token in it)."""
        url = f"{SCHEME}://{self.org}/{self.bucket_nickname}"
        return f"{url}?service_uri={self.service_uri}" if self.service_uri else url

    def repo_name(self, zarr_id: str, *, embargoed: bool = False) -> str:
        """The Arraylake name of the repository of ``zarr_id``: ``ORG/zarr-[embargoed-]<zarr_id>``."""
        return f"{self.org}/zarr-{'embargoed-' if embargoed else ''}{validate_zarr_id(zarr_id)}"

    def client(self) -> arraylake.Client:
        """The real Arraylake client for this service and token."""
        token = self.token or os.environ.get(TOKEN_ENV_VAR)
        if not token:
            raise AccessDeniedError(
                f"{self.url} needs an Arraylake API token: set ${TOKEN_ENV_VAR}"
            )
        with self._service_errors("connecting"):
            return _import_arraylake().Client(service_uri=self.service_uri, token=token)

    def location(self) -> StorageLocation:
        """The storage location of the bucket config's bucket, reaching it with the bucket
        config's keys or with credentials Arraylake vends, and opening repositories here."""
        client = self.client()
        with self._service_errors(f"bucket config {self.bucket_nickname!r} of org {self.org!r}"):
            bucket = client.get_bucket_config(org=self.org, nickname=self.bucket_nickname)
        if bucket.platform not in ("s3", "s3c", "s3-compatible", "minio"):
            raise StorageLocationError(
                f"{self.url}: bucket config {self.bucket_nickname!r} is on {bucket.platform!r}; "
                "only S3 and S3-compatible buckets hold DANDI repositories"
            )
        extra = bucket.extra_config
        location = StorageLocation(
            kind="s3", bucket=bucket.name, prefix=bucket.prefix.strip("/"),
            endpoint_url=str(extra["endpoint_url"]) if extra.get("endpoint_url") else None,
            region=str(extra["region_name"]) if extra.get("region_name") else None,
            arraylake=self,
        )
        method = getattr(bucket.auth_config, "method", None)
        if method == "hmac":
            keys = S3Credentials(bucket.auth_config.access_key_id, bucket.auth_config.secret_access_key)
            return replace(location, credentials=keys)
        if method in ("aws_customer_managed_role", "customer_managed_role"):
            return replace(location, credentials_provider=_VendedCredentials(self, bucket_id=str(bucket.id)))
        return replace(location, anonymous=True)

    def open(
        self, location: StorageLocation, zarr_id: str, *, embargoed: bool,
        config: icechunk.RepositoryConfig | None,
    ) -> icechunk.Repository | None:
        """The registered repository of ``zarr_id`` in this area, or ``None`` when there is
        none (not registered, or registered with nothing in storage yet)."""
        if not self._registered(location, zarr_id, embargoed=embargoed):
            return None
        name = self.repo_name(zarr_id, embargoed=embargoed)
        client = self.client()
        if not icechunk.Repository.exists(location.icechunk_storage(zarr_id, embargoed=embargoed)):
            return None  # registered, but its objects moved away (an embargo lifted) or never came
        if config is not None and config.virtual_chunk_containers:
            config = None  # the client refuses containers the service did not authorize; see the caller
        with self._service_errors(f"repo {name}"):
            return client.get_repo(name, config=config)

    def register(
        self, location: StorageLocation, zarr_id: str, *, embargoed: bool,
        config: icechunk.RepositoryConfig | None,
    ) -> icechunk.Repository:
        """Register the repository of ``zarr_id`` and open it: a repository already in the
        bucket (made before Arraylake, or moved by an unembargo) is imported, else created.
        A concurrent registration of the same name is opened instead."""
        name = self.repo_name(zarr_id, embargoed=embargoed)
        prefix = location.repository_prefix(zarr_id, embargoed=embargoed)
        client = self.client()
        in_bucket = icechunk.Repository.exists(location.icechunk_storage(zarr_id, embargoed=embargoed))
        with self._service_errors(f"registering repo {name}", conflict_ok=True) as done:
            if in_bucket:
                repo = client.import_repo(name, self.bucket_nickname, prefix)
            else:
                repo = client.create_repo(name, bucket_config_nickname=self.bucket_nickname,
                                          prefix=prefix, config=config)
        if not done:  # registered already: by a concurrent upload, or by one that crashed before making it
            opened = self.open(location, zarr_id, embargoed=embargoed, config=config)
            if opened is None:
                with contextlib.suppress(icechunk.IcechunkError):  # made concurrently: open it
                    icechunk.Repository.create(location.icechunk_storage(zarr_id, embargoed=embargoed), config=config)
                opened = self.open(location, zarr_id, embargoed=embargoed, config=config)
            if opened is None:
                raise StorageLocationError(f"repo {name} was unregistered while this upload made it; run again")
            return opened
        own = location.legacy_container(zarr_id)
        if own in ((config.virtual_chunk_containers or {}) if config else {}):
            # a migrated Zarr: Arraylake's own readers may then read its legacy objects (and no
            # others: only this container is authorized)
            with self._service_errors(f"authorizing the legacy objects of repo {name}"):
                client.update_virtual_chunk_containers(name, add={own: self.bucket_nickname})
        if config is not None and in_bucket:
            return self.open(location, zarr_id, embargoed=embargoed, config=config) or repo
        return repo

    def register_existing(
        self, location: StorageLocation, zarr_ids: Iterable[str] | None = None, *, jobs: int = 8
    ) -> list[Registration]:
        """Register the repositories already in the bucket (every one, or those of
        ``zarr_ids``) with ``import_repo``, in place, with their history: how a bucket-backed
        DANDI switches to Arraylake. Idempotent: registered ones are left as they are."""
        if zarr_ids is None:
            found = [(name, area) for area in (False, True)
                     for name in child_prefixes(location, location.area_prefix(embargoed=area))
                     if _is_zarr_id(name)]
        else:
            found = [(validate_zarr_id(z), self._area_in_bucket(location, z)) for z in zarr_ids]

        def one(zarr_id: str, embargoed: bool) -> Registration:
            registered = self._registered(location, zarr_id, embargoed=embargoed)
            if not registered:
                self.register(location, zarr_id, embargoed=embargoed, config=None)
            name = self.repo_name(zarr_id, embargoed=embargoed)
            return Registration(zarr_id=zarr_id, repo=name, embargoed=embargoed, imported=not registered)

        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(found)))) as pool:
            return list(pool.map(lambda item: one(*item), found))

    @staticmethod
    def _area_in_bucket(location: StorageLocation, zarr_id: str) -> bool:
        """Whether the repository of ``zarr_id`` is under the embargoed prefix (it must be
        under one of the two)."""
        for area in (False, True):
            if icechunk.Repository.exists(location.icechunk_storage(zarr_id, embargoed=area)):
                return area
        raise RepositoryNotFoundError(f"no repository for zarr_id {zarr_id} in the bucket of {location.url}")

    def schedule_gc(self, zarr_id: str, *, keep: Iterable[str], restore_window: timedelta) -> None:
        """Hand the repository of ``zarr_id`` to Arraylake's scheduled expiration and GC with the
        archive's policy: draft snapshots and dangling objects older than ``restore_window``
        go, daily; the snapshots in ``keep`` (every publication the archive recorded) are roots
        it never collects, even if an uploader deleted their tags."""
        from arraylake.types import (
            ExpirationConfig,
            GCConfig,
            GCDeleteOlderThan,
            OptimizationConfig,
        )

        older = GCDeleteOlderThan(date=restore_window)
        config = OptimizationConfig(
            gc_config=GCConfig(
                extra_gc_roots=set(keep), dangling_chunks=older, dangling_manifests=older,
                dangling_attributes=older, dangling_transaction_logs=older, dangling_snapshots=older,
                gc_every=timedelta(days=1), enabled=True,
            ),
            expiration_config=ExpirationConfig(
                expire_versions_older_than=restore_window, expire_every=timedelta(days=1), enabled=True,
            ),
        )
        client = self.client()
        for embargoed in (False, True):
            name = self.repo_name(zarr_id, embargoed=embargoed)
            with self._service_errors(f"scheduling GC of repo {name}", missing_ok=True) as landed:
                client.modify_repo(name, optimization_config=config)
            if landed:
                return
        raise StorageLocationError(f"Arraylake ({self.url}) has no repo for zarr_id {zarr_id}")

    def repository_credentials(self, location: StorageLocation, zarr_id: str, *, embargoed: bool) -> S3Credentials:
        """Credentials Arraylake vends for the repository of ``zarr_id`` (registered first if it
        is not), for the archive to hand an uploader who has no Arraylake account. Only a
        delegated-role bucket config vends them: an HMAC config would hand out the bucket's keys."""
        if location.credentials is not None:
            raise CredentialError(
                f"{self.url}: bucket config {self.bucket_nickname!r} uses HMAC keys, which are the "
                "bucket's own; Arraylake vends upload credentials only for a delegated-role bucket config"
            )
        if not self._registered(location, zarr_id, embargoed=embargoed):
            self.register(location, zarr_id, embargoed=embargoed, config=None)
        name = self.repo_name(zarr_id, embargoed=embargoed)
        return _VendedCredentials(self, repo=name.partition("/")[2])()

    def unregister(self, zarr_id: str, *, embargoed: bool) -> None:
        """Remove the Arraylake record of a repository, keeping its objects (idempotent)."""
        name = self.repo_name(zarr_id, embargoed=embargoed)
        client = self.client()
        with self._service_errors(f"unregistering repo {name}", missing_ok=True):
            client.delete_repo(name, imsure=True, imreallysure=True, immediate=True, retain_data=True)

    def _registered(self, location: StorageLocation, zarr_id: str, *, embargoed: bool) -> bool:
        """Whether Arraylake has the repo of ``zarr_id`` in this area; one at another prefix than
        ours is refused."""
        name = self.repo_name(zarr_id, embargoed=embargoed)
        with self._service_errors(f"repo {name}", missing_ok=True) as found:
            record = self.client().get_repo_object(name)
        if not found:
            return False
        expected = location.repository_prefix(zarr_id, embargoed=embargoed)
        if record.prefix.strip("/") != expected:
            raise StorageLocationError(
                f"Arraylake repo {name} is at prefix {record.prefix!r}, not {expected!r} where DANDI "
                "keeps it; it was not registered by dandi-icechunk: rename or remove it in Arraylake"
            )
        return True

    @contextlib.contextmanager
    def _service_errors(
        self, what: str, *, missing_ok: bool = False, conflict_ok: bool = False
    ) -> Iterator[_Landed]:
        """Turn the client's errors into ours; the yielded flag says whether the call landed
        (false when ``missing_ok`` and the service said 404, or ``conflict_ok`` and 409)."""
        outcome = _Landed()
        arraylake = _import_arraylake()
        try:
            yield outcome
        except arraylake.exceptions.ArraylakeHttpError as exc:
            status = getattr(exc, "status_code", None)
            if (status == 404 and missing_ok) or (status == 409 and conflict_ok):
                outcome.landed = False
                return
            if status in (401, 403):
                raise AccessDeniedError(
                    f"Arraylake ({self.url}) refused {what}: check ${TOKEN_ENV_VAR} and the "
                    "token's permissions in the org"
                ) from None
            if status == 404:
                raise StorageLocationError(f"Arraylake ({self.url}) has no {what}") from None
            raise StorageLocationError(f"Arraylake ({self.url}) failed on {what}: {first_line(exc)}") from None
        except arraylake.exceptions.BucketNotFoundError:
            raise StorageLocationError(f"Arraylake ({self.url}) has no {what}") from None
        except Exception as exc:
            if not isinstance(exc, OSError) and not type(exc).__module__.startswith("httpx"):
                raise
            raise StorageLocationError(
                f"the Arraylake service of {self.url} does not answer ({first_line(exc)}); check "
                f"service_uri / ${SERVICE_ENV_VAR}"
            ) from None


@dataclass(frozen=True)
class Registration(JsonRecord):
    """One repository as :meth:`ArraylakeRepositories.register_existing` left it."""

    zarr_id: str
    repo: str
    embargoed: bool
    imported: bool


def _is_zarr_id(name: str) -> bool:
    try:
        return validate_zarr_id(name) == name
    except DandiIcechunkError:
        return False


class _Landed:
    """Whether a service call landed (see :meth:`ArraylakeRepositories._service_errors`)."""

    landed = True

    def __bool__(self) -> bool:
        return self.landed


class _VendedCredentials:
    """Credentials Arraylake vends for a delegated-role bucket config: for the whole bucket
    (``bucket_id``) or for one repo (``repo``, its name in the org). A
    :data:`~dandi_icechunk.location.CredentialsProvider`; picklable."""

    def __init__(self, repositories: ArraylakeRepositories, *, bucket_id: str | None = None, repo: str | None = None) -> None:
        self.repositories, self.bucket_id, self.repo = repositories, bucket_id, repo

    def __call__(self) -> S3Credentials:
        from uuid import UUID

        from arraylake.metastore import HttpMetastore, HttpMetastoreConfig

        client = self.repositories.client()
        store = HttpMetastore(HttpMetastoreConfig(client.service_uri, self.repositories.org, client.token))
        with self.repositories._service_errors(f"vending credentials for {self.repo or 'the bucket'}"):
            if self.repo is not None:
                vended = asyncio.run(store.get_s3_bucket_credentials_from_repo(self.repo))
            else:
                assert self.bucket_id is not None
                vended = asyncio.run(store.get_s3_bucket_credentials_from_bucket(UUID(self.bucket_id), access="write"))
        expires: datetime | None = vended.expiration
        return S3Credentials(vended.aws_access_key_id, vended.aws_secret_access_key,
                             vended.aws_session_token, expires)

"""Where repositories live: parse a storage URL and lay out one repository per Zarr asset.

A storage location is a bucket (S3, or a local directory standing in for one). Inside it every
Zarr asset has its own Icechunk repository, keyed by the asset's ``zarr_id``::

    <prefix>/zarr/<zarr_id>/                      legacy plain Zarr (untouched by us)
    <prefix>/zarr-icechunk/<zarr_id>/             repository of a public Zarr
    <prefix>/zarr-icechunk-embargoed/<zarr_id>/   repository of an embargoed Zarr (private prefix)
    <prefix>/zarr-icechunk-checksums/             checksum -> snapshot lookup (archive-only writes)
    <prefix>/zarr-icechunk-archive/<zarr_id>/     the archive's record of drafts and publications
                                                  (archive-only writes)

>>> loc = StorageLocation.parse("s3://dandiarchive?endpoint_url=http://127.0.0.1:8333")
>>> loc.repository_prefix("2b1f5f4c-3c35-4a3e-9a6c-1b9bb5d6b0c1")
'zarr-icechunk/2b1f5f4c-3c35-4a3e-9a6c-1b9bb5d6b0c1'
"""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

import icechunk
import platformdirs

from .errors import InvalidZarrIdError, StorageLocationError

if TYPE_CHECKING:
    from .arraylake_location import ArraylakeRepositories

STORAGE_ENV_VAR = "DANDI_ICECHUNK_STORAGE"
PUBLIC_PREFIX = "zarr-icechunk"
EMBARGOED_PREFIX = "zarr-icechunk-embargoed"
LEGACY_PREFIX = "zarr"  # where the archive keeps Zarrs uploaded with presigned PUTs
CHECKSUMS_PREFIX = "zarr-icechunk-checksums"
ARCHIVE_PREFIX = "zarr-icechunk-archive"
_S3_QUERY_KEYS = {"endpoint_url", "region"}


def validate_zarr_id(zarr_id: str) -> str:
    """Return ``zarr_id`` in canonical form (lowercase UUID), or raise :class:`InvalidZarrIdError`."""
    try:
        return str(uuid.UUID(zarr_id))
    except (ValueError, TypeError, AttributeError):
        raise InvalidZarrIdError(
            f"{zarr_id!r} is not a zarr_id: a zarr_id is the UUID the archive gave the Zarr asset, "
            "for example 2b1f5f4c-3c35-4a3e-9a6c-1b9bb5d6b0c1"
        ) from None


def default_bucket_dir() -> Path:
    """The embedded default bucket: a directory in the user's data directory."""
    return Path(platformdirs.user_data_dir("dandi-icechunk")) / "bucket"


@dataclass(frozen=True)
class S3Credentials:
    """S3 credentials (``session_token`` and ``expires_at`` for temporary ones)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    expires_at: datetime | None = None


CredentialsProvider = Callable[[], S3Credentials]
"""Called for fresh credentials whenever the previous ones are about to expire. Icechunk
pickles it, so it must be picklable (a module-level class instance, not a closure)."""


class _IcechunkCredentials:
    """Adapts a :data:`CredentialsProvider` to Icechunk's refreshable credentials (picklable)."""

    def __init__(self, provider: CredentialsProvider) -> None:
        self.provider = provider

    def __call__(self) -> icechunk.S3StaticCredentials:
        fresh = self.provider()
        return icechunk.S3StaticCredentials(
            access_key_id=fresh.access_key_id,
            secret_access_key=fresh.secret_access_key,
            session_token=fresh.session_token,
            expires_after=fresh.expires_at,
        )


@dataclass(frozen=True)
class StorageLocation:
    """A bucket holding one Icechunk repository per Zarr asset.

    ``kind`` is ``"s3"`` (``bucket`` is the bucket name) or ``"file"`` (``bucket`` is an absolute
    directory). Credentials for S3 come from ``credentials_provider`` (refreshable, e.g. vended
    upload credentials), else ``credentials``, else the usual AWS sources (environment, config
    files); ``anonymous`` reads without signing. With ``arraylake``, each repository is
    registered and opened through Arraylake (:mod:`~dandi_icechunk.arraylake_location`).
    """

    kind: Literal["s3", "file"]
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    credentials: S3Credentials | None = None
    anonymous: bool = False
    credentials_provider: CredentialsProvider | None = None
    legacy_root: str = LEGACY_PREFIX
    arraylake: ArraylakeRepositories | None = None

    @classmethod
    def parse(cls, url: str) -> StorageLocation:
        """Parse ``s3://BUCKET[/PREFIX][?endpoint_url=URL&region=R]``, ``file:///PATH`` or
        ``arraylake://ORG/BUCKET_NICKNAME[?service_uri=URL]`` (which asks the service)."""
        parts = urlsplit(url)
        if parts.scheme == "arraylake":
            from .arraylake_location import ArraylakeRepositories

            return ArraylakeRepositories.parse(url).location()
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise StorageLocationError(
                    f"storage URL {url!r}: a local bucket is written file:///ABSOLUTE/PATH"
                )
            return cls(kind="file", bucket=str(Path(parts.path).resolve()))
        if parts.scheme == "s3":
            if not parts.netloc:
                raise StorageLocationError(
                    f"storage URL {url!r} names no bucket: write s3://BUCKET/PREFIX"
                )
            query = parse_qs(parts.query)
            unknown = set(query) - _S3_QUERY_KEYS
            if unknown:
                raise StorageLocationError(
                    f"storage URL {url!r}: unknown option(s) {sorted(unknown)}; "
                    f"known: {sorted(_S3_QUERY_KEYS)}"
                )
            endpoint = query.get("endpoint_url", [None])[0]
            if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
                raise StorageLocationError(
                    f"storage URL {url!r}: endpoint_url must be an http(s) URL, got {endpoint!r}"
                )
            return cls(
                kind="s3",
                bucket=parts.netloc,
                prefix=parts.path.strip("/"),
                endpoint_url=endpoint,
                region=query.get("region", [None])[0],
            )
        raise StorageLocationError(
            f"storage URL {url!r} is not supported: use s3://BUCKET/PREFIX?endpoint_url=..., "
            "file:///PATH or arraylake://ORG/BUCKET_NICKNAME"
        )

    @classmethod
    def resolve(cls, url: str | None = None) -> StorageLocation:
        """The location from ``url``, else ``$DANDI_ICECHUNK_STORAGE``, else the embedded default."""
        url = url or os.environ.get(STORAGE_ENV_VAR)
        if url:
            return cls.parse(url)
        return cls(kind="file", bucket=str(default_bucket_dir()))

    @classmethod
    def from_repository_url(cls, url: str) -> tuple[StorageLocation, str, bool]:
        """Split the storage URL of one repository (as published metadata records it) into
        its location, ``zarr_id`` and whether it is under the embargoed prefix."""
        parts = urlsplit(url)
        path = parts.path.rstrip("/")
        head, _, zarr_id = path.rpartition("/")
        head, _, area = head.rpartition("/")
        if area not in (PUBLIC_PREFIX, EMBARGOED_PREFIX):
            raise StorageLocationError(
                f"{url!r} is not the URL of a Zarr repository (.../{PUBLIC_PREFIX}/<zarr_id>)"
            )
        base = parts._replace(path=head or ("/" if parts.scheme == "file" else ""))
        return cls.parse(base.geturl()), validate_zarr_id(zarr_id), area == EMBARGOED_PREFIX

    @property
    def url(self) -> str:
        """The canonical URL of this location (no credentials in it)."""
        if self.arraylake is not None:
            return self.arraylake.url
        if self.kind == "file":
            return Path(self.bucket).as_uri()
        query = self._s3_query
        path = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{path}?{query}" if query else path

    @property
    def _s3_query(self) -> str:
        return "&".join(f"{k}={v}" for k, v in (("endpoint_url", self.endpoint_url), ("region", self.region)) if v)

    def for_reading(self) -> StorageLocation:
        """This location, reading anonymously when it is S3 and no AWS credentials are given or
        configured (environment, profile, shared credentials file): public data needs none."""
        if self.kind != "s3" or self.credentials or self.credentials_provider or self.anonymous:
            return self
        if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
            return self
        shared = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", Path.home() / ".aws" / "credentials"))
        return self if shared.exists() else dataclasses.replace(self, anonymous=True)

    def area_prefix(self, *, embargoed: bool = False) -> str:
        """Key prefix (inside the bucket) under which the public or embargoed repositories are."""
        return "/".join(p for p in (self.prefix, EMBARGOED_PREFIX if embargoed else PUBLIC_PREFIX) if p)

    def repository_prefix(self, zarr_id: str, *, embargoed: bool = False) -> str:
        """Key prefix (inside the bucket) of the repository of ``zarr_id``."""
        return f"{self.area_prefix(embargoed=embargoed)}/{validate_zarr_id(zarr_id)}"

    def legacy_prefix(self, zarr_id: str) -> str:
        """Key prefix of the Zarr ``zarr_id`` as the archive stored it before Icechunk
        (``zarr/<zarr_id>``, at the bucket's root, ``legacy_root`` being the archive's
        ``DANDI_ZARR_PREFIX_NAME``): the objects a migrated repository references in place."""
        return f"{self.legacy_root}/{validate_zarr_id(zarr_id)}"

    def legacy_container(self, zarr_id: str) -> str:
        """The URL prefix of the virtual chunk container of the legacy Zarr ``zarr_id``."""
        return f"s3://{self.bucket}/{self.legacy_prefix(zarr_id)}/"

    def legacy_container_config(self, zarr_id: str) -> icechunk.VirtualChunkContainer:
        """The virtual chunk container of a legacy Zarr, as its migrated repository declares it."""
        store = icechunk.s3_store(
            region=self.region or "us-east-1", endpoint_url=self.endpoint_url,
            allow_http=bool(self.endpoint_url and self.endpoint_url.startswith("http://")),
            s3_compatible=self.endpoint_url is not None, force_path_style=self.endpoint_url is not None,
        )
        return icechunk.VirtualChunkContainer(self.legacy_container(zarr_id), store)

    def virtual_chunk_access(self, containers: Iterable[str], zarr_id: str) -> dict[str, Any]:
        """``authorize_virtual_chunk_access`` for the repository of ``zarr_id``, whose virtual
        chunk ``containers`` (URL prefixes) it declares: this location's credentials for its own
        legacy objects only (a migrated Zarr: ``s3://BUCKET/<legacy root>/<zarr_id>/``, whatever
        the archive named its legacy root). Any other container gets nothing of ours, so a
        repository cannot make its readers fetch another Zarr's objects."""
        bucket, tail = f"s3://{self.bucket}/", f"/{validate_zarr_id(zarr_id)}/"

        def own_legacy(container: str) -> bool:
            root = container[len(bucket):-len(tail)]
            return container.startswith(bucket) and container.endswith(tail) and bool(root) and "/" not in root

        own = [c for c in containers if self.kind == "s3" and own_legacy(c)]
        if not own:
            return {}
        if self.credentials_provider is not None:
            creds: Any = icechunk.s3_credentials(get_credentials=_IcechunkCredentials(self.credentials_provider))
        elif self.credentials is not None:
            c = self.credentials
            creds = icechunk.s3_credentials(access_key_id=c.access_key_id, secret_access_key=c.secret_access_key,
                                            session_token=c.session_token)
        else:
            creds = icechunk.s3_credentials(anonymous=True) if self.anonymous else icechunk.s3_credentials(from_env=True)
        return icechunk.containers_credentials(dict.fromkeys(own, creds))

    def repository_url(self, zarr_id: str, *, embargoed: bool = False) -> str:
        """The URL of the repository of ``zarr_id`` (no credentials in it), as published
        metadata records it: ``s3://BUCKET/PREFIX[?endpoint_url=...]`` or ``file:///PATH``."""
        prefix = self.repository_prefix(zarr_id, embargoed=embargoed)
        if self.kind == "file":
            return f"{self.url}/{prefix}"
        query = self._s3_query
        url = f"s3://{self.bucket}/{prefix}"
        return f"{url}?{query}" if query else url

    def http_url(self, zarr_id: str, *, embargoed: bool = False) -> str | None:
        """The http(s) URL of the repository of ``zarr_id``, as readers without credentials
        reach it (``None`` for a local bucket)."""
        if self.kind != "s3":
            return None
        prefix = self.repository_prefix(zarr_id, embargoed=embargoed)
        if self.endpoint_url:
            return f"{self.endpoint_url.rstrip('/')}/{self.bucket}/{prefix}/"
        return f"https://{self.bucket}.s3.amazonaws.com/{prefix}/"  # as DANDI's contentUrls: any region

    def checksums_prefix(self, *, embargoed: bool = False) -> str:
        """Key prefix of the checksum -> snapshot lookup (its embargoed half is private too)."""
        area = f"{EMBARGOED_PREFIX}/_checksums" if embargoed else CHECKSUMS_PREFIX
        return "/".join(p for p in (self.prefix, area) if p)

    def archive_prefix(self, zarr_id: str) -> str:
        """Key prefix of the archive's own record of ``zarr_id`` (drafts finalized, versions
        published), outside every repository prefix so that upload credentials never reach it."""
        return "/".join(p for p in (self.prefix, ARCHIVE_PREFIX, validate_zarr_id(zarr_id)) if p)

    def icechunk_storage(self, zarr_id: str, *, embargoed: bool = False, reading: bool = False) -> icechunk.Storage:
        """The Icechunk storage of the repository of ``zarr_id``; ``reading``: for a repository
        only read, with given keys through the S3 client that costs less CPU per chunk."""
        prefix = self.repository_prefix(zarr_id, embargoed=embargoed)
        if self.kind == "file":
            return icechunk.local_filesystem_storage(str(Path(self.bucket) / prefix))
        if self.anonymous and self.credentials is None and self.credentials_provider is None:
            # Icechunk's plain HTTP storage spends about a third less CPU per chunk than its
            # unsigned S3 client (benchmarks/read_routes.py), and reads only what the bucket lets anyone read.
            return icechunk.http_storage(str(self.http_url(zarr_id, embargoed=embargoed)))
        creds = self.credentials
        credentials: icechunk.AnyS3Credential
        if self.credentials_provider is not None:
            credentials = icechunk.s3_refreshable_credentials(_IcechunkCredentials(self.credentials_provider))
        elif creds is not None:
            credentials = icechunk.s3_static_credentials(
                access_key_id=creds.access_key_id, secret_access_key=creds.secret_access_key,
                session_token=creds.session_token,
            )
        else:
            credentials = icechunk.s3_from_env_credentials()
        options = icechunk.S3Options(
            region=self.region or "us-east-1",
            endpoint_url=self.endpoint_url,
            allow_http=bool(self.endpoint_url and self.endpoint_url.startswith("http://")),
            force_path_style=self.endpoint_url is not None,
        )
        if reading and creds is not None and self.credentials_provider is None:
            # Icechunk's object_store S3 client: about 30 % less CPU per chunk than its AWS SDK
            # client, signed as well (benchmarks/read_routes.py). The SDK client writes, and
            # reads with refreshable credentials or the AWS config files, which object_store lacks.
            return icechunk.Storage.new_s3_object_store(options, self.bucket, prefix, credentials)
        return icechunk.Storage.new_s3(options, self.bucket, prefix, credentials)

    def check_reachable(self, timeout: float = 5.0) -> None:
        """Fail fast with :class:`StorageLocationError` when the S3 endpoint does not answer."""
        if self.kind == "file" or self.endpoint_url is None:
            return
        parts = urlsplit(self.endpoint_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                pass
        except OSError as exc:
            raise StorageLocationError(
                f"the S3 endpoint {self.endpoint_url} does not answer ({exc.strerror or exc}); "
                f"check that the server runs and that --storage / ${STORAGE_ENV_VAR} is right"
            ) from None

"""Repositories and sessions: one Icechunk repository per Zarr asset, and DANDI commit metadata.

>>> location = StorageLocation.resolve("file:///tmp/bucket")
>>> repo = ZarrRepository.open(location, zarr_id, create=True)
>>> session = repo.readonly_session(tag="dandiset-000123-0.260101.1200")
>>> xarray.open_zarr(session.store, consolidated=False)

Repositories stay plain Icechunk repositories: ``icechunk.Repository.open`` reads them with no
code of ours. What DANDI needs beyond Icechunk travels in each snapshot's commit metadata
(:class:`CommitInfo`) and in the digest index it names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import getpass
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

import icechunk

from . import __version__
from .errors import (
    AccessDeniedError,
    ConflictError,
    DandiIcechunkError,
    RefNotFoundError,
    RepositoryNotFoundError,
    StorageLocationError,
    first_line,
)
from .index import DigestIndex, IndexReader, load_index
from .location import StorageLocation, validate_zarr_id
from .objects import REPO_OBJECT, RepositoryObjects, repository_objects

DEFAULT_BRANCH = "main"
CLIENT = f"dandi-icechunk/{__version__}"

SCRATCH_BRANCH_PREFIX = "upload-staging/"
"""Branches an upload makes for itself and deletes: the batches of a large upload
(:mod:`~dandi_icechunk.upload.staged`), the nodes of one on Dask (:mod:`~dandi_icechunk.upload.distributed`)."""

_SNAPSHOT_ID = re.compile(r"[0-9A-Z]{20}")
_EMBARGO_MARK = "embargoed/"


@contextlib.contextmanager
def scratch_branch(repository: icechunk.Repository, snapshot_id: str) -> Iterator[str]:
    """A new branch (:data:`SCRATCH_BRANCH_PREFIX`) at ``snapshot_id`` for work in progress,
    deleted on the way out whatever happened; one a killed process leaves is removed by ``gc``.

    >>> with scratch_branch(repo.icechunk, base) as scratch:
    ...     session = repo.icechunk.writable_session(scratch)
    """
    name = f"{SCRATCH_BRANCH_PREFIX}{uuid.uuid4().hex}"
    repository.create_branch(name, snapshot_id)
    try:
        yield name
    finally:
        with contextlib.suppress(icechunk.IcechunkError):
            repository.delete_branch(name)


def dandiset_branch(dandiset_id: str, *, embargoed: bool = False) -> str:
    """The branch a Dandiset's edits of a reused Zarr go to.

    A public Zarr attached to an embargoed Dandiset gets an ``embargoed/`` branch, which uploads
    refuse: new chunks would land under the public prefix.
    """
    return f"{_EMBARGO_MARK if embargoed else ''}dandiset/{dandiset_id}"


def is_embargoed_branch(branch: str) -> bool:
    """Whether ``branch`` belongs to an embargoed Dandiset (see :func:`dandiset_branch`)."""
    return branch.startswith(_EMBARGO_MARK)


def publish_tag(dandiset_id: str, version: str) -> str:
    """The tag a publish makes: ``dandiset/<dandiset_id>/<version>``.

    Versions are unique per Dandiset and Icechunk never lets a deleted tag name be used again,
    so a tag name always means one snapshot.
    """
    return f"dandiset/{dandiset_id}/{version}"


@dataclasses.dataclass(frozen=True)
class CommitInfo:
    """The DANDI metadata every snapshot committed by dandi-icechunk carries."""

    zarr_checksum: str
    file_count: int
    size: int
    index_id: str
    zarr_format: int | None
    user: str
    client: str = CLIENT
    dandiset: str | None = None

    def to_metadata(self) -> dict[str, Any]:
        """As Icechunk commit metadata (keys prefixed ``dandi:``)."""
        return {f"dandi:{k}": v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> CommitInfo | None:
        """Inverse of :meth:`to_metadata`; ``None`` for snapshots not made by dandi-icechunk."""
        fields = {k[6:]: v for k, v in metadata.items() if k.startswith("dandi:")}
        if "index_id" not in fields:
            return None
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})


@dataclasses.dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot of a repository's history."""

    snapshot_id: str
    parent_id: str | None
    written_at: datetime
    message: str
    info: CommitInfo | None
    tags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "snapshot_id": self.snapshot_id,
            "parent_id": self.parent_id,
            "written_at": self.written_at.isoformat(),
            "message": self.message,
            "tags": list(self.tags),
            "metadata": self.info.to_metadata() if self.info else {},
        }


@contextlib.contextmanager
def _icechunk_errors(what: str) -> Iterator[None]:
    """Turn Icechunk's errors into ours, naming ``what`` was being looked up."""
    try:
        yield
    except DandiIcechunkError:
        raise
    except (icechunk.SnapshotNotFoundError, icechunk.RefNotFoundError) as exc:
        raise RefNotFoundError(f"{what} does not exist: {first_line(exc)}") from None
    except icechunk.StorageError as exc:  # the network or the storage failed, not the ref
        raise StorageLocationError(
            f"reading {what} failed ({first_line(exc)}); check the storage and run again"
        ) from None
    except icechunk.IcechunkError as exc:
        raise RefNotFoundError(f"{what}: {first_line(exc)}") from None



def _with_virtual_access(
    repo: icechunk.Repository, location: StorageLocation, zarr_id: str, storage: icechunk.Storage,
    config: icechunk.RepositoryConfig | None,
) -> icechunk.Repository:
    """``repo``, opened again when it declares virtual chunk containers: with read access to its
    own legacy objects (a migrated Zarr) and to nothing else, whatever access it was opened with."""
    containers = repo.config.virtual_chunk_containers or {}
    if not containers:
        return repo
    access = location.virtual_chunk_access(containers, zarr_id)
    return icechunk.Repository.open(storage, config=config, authorize_virtual_chunk_access=access)


def _no_repository(location: StorageLocation, zarr_id: str) -> RepositoryNotFoundError:
    return RepositoryNotFoundError(
        f"no repository for zarr_id {zarr_id} at {location.url}; upload the Zarr "
        "first, or check --storage / $DANDI_ICECHUNK_STORAGE"
    )


class ZarrRepository:
    """The Icechunk repository of one Zarr asset, with DANDI's view of its snapshots."""

    def __init__(
        self,
        location: StorageLocation,
        zarr_id: str,
        repository: icechunk.Repository,
        *,
        embargoed: bool = False,
    ) -> None:
        self.location = location
        self.zarr_id = zarr_id
        self.embargoed = embargoed
        self.icechunk = repository

    @functools.cached_property
    def objects(self) -> RepositoryObjects:
        """The repository's own objects (digest index, history), beside what Icechunk keeps;
        made when first needed: reading refs and snapshots does not need them."""
        return repository_objects(self.location, self.zarr_id, embargoed=self.embargoed)

    def __repr__(self) -> str:
        return f"ZarrRepository({self.zarr_id!r}, {self.url!r})"

    @property
    def url(self) -> str:
        """Where the repository is, as a URL."""
        return self.location.repository_url(self.zarr_id, embargoed=self.embargoed)

    @classmethod
    def open(
        cls,
        location: StorageLocation,
        zarr_id: str,
        *,
        create: bool = False,
        embargoed: bool = False,
        config: icechunk.RepositoryConfig | None = None,
        reading: bool = False,
    ) -> ZarrRepository:
        """Open the repository of ``zarr_id``; with ``create``, make it if it does not exist.

        An existing repository is found under the public or the embargoed prefix; a new one is
        made under the prefix ``embargoed`` selects. ``reading``: it is only read (a reader's
        cheaper S3 client, :meth:`StorageLocation.icechunk_storage`).
        """
        zarr_id = validate_zarr_id(zarr_id)
        location.check_reachable()
        try:
            if location.arraylake is not None:
                return cls._open_arraylake(location, zarr_id, create=create, embargoed=embargoed, config=config)
            refused: icechunk.IcechunkError | None = None
            for area in (embargoed, not embargoed):
                storage = location.icechunk_storage(zarr_id, embargoed=area, reading=reading and not create)
                try:
                    found = icechunk.Repository.exists(storage)
                except icechunk.IcechunkError:
                    # Refused, or a fault? S3's own error code on the repo object decides.
                    # (Credentials scoped to one repository may not look under the other prefix.)
                    try:
                        found = repository_objects(location, zarr_id, embargoed=area).exists(REPO_OBJECT)
                    except AccessDeniedError as exc:
                        refused, found = refused or exc, False
                if found:
                    repo = icechunk.Repository.open(storage, config=config)
                    repo = _with_virtual_access(repo, location, zarr_id, storage, config)
                    return cls(location, zarr_id, repo, embargoed=area)
            if refused is not None and not create:
                raise AccessDeniedError(
                    f"access to the repository of {zarr_id} at {location.url} was refused: it is "
                    "private (embargoed) to these credentials, or does not exist"
                )
            if not create:
                raise _no_repository(location, zarr_id)
            storage = location.icechunk_storage(zarr_id, embargoed=embargoed)
            repo = icechunk.Repository.open_or_create(storage, config=config)
            return cls(location, zarr_id, repo, embargoed=embargoed)
        except DandiIcechunkError:
            raise
        except (icechunk.IcechunkError, OSError, ValueError) as exc:
            raise StorageLocationError(
                f"cannot open the repository of {zarr_id} at {location.url}: {first_line(exc)}"
            ) from None

    @classmethod
    def open_for_reading(cls, location: StorageLocation, zarr_id: str, *, embargoed: bool = False) -> ZarrRepository:
        """Open the repository of ``zarr_id`` to read it: on S3, as anyone reads the bucket when
        the bucket lets them (unsigned, through Icechunk's cheaper HTTP storage, and never more
        than the bucket policy shows anyone), else with ``location``'s own credentials.

        >>> ZarrRepository.open_for_reading(location, zarr_id).resolve(tag="dandiset/000123/0.260101.1200")
        """
        if location.kind == "s3" and location.arraylake is None and not location.anonymous:
            anyone = dataclasses.replace(location, credentials=None, credentials_provider=None, anonymous=True)
            try:
                return cls.open(anyone, zarr_id, embargoed=embargoed, reading=True)
            except DandiIcechunkError:
                pass
        return cls.open(location, zarr_id, embargoed=embargoed, reading=True)

    @classmethod
    def _open_arraylake(
        cls, location: StorageLocation, zarr_id: str, *, create: bool, embargoed: bool,
        config: icechunk.RepositoryConfig | None,
    ) -> ZarrRepository:
        """:meth:`open` for a location whose repositories Arraylake registers and opens."""
        repositories = location.arraylake
        assert repositories is not None
        for area in (embargoed, not embargoed):
            repo = repositories.open(location, zarr_id, embargoed=area, config=config)
            if repo is not None:
                # A migrated Zarr reads its own legacy objects, and no other Zarr's, with
                # this location's credentials (as in a bucket-backed location)
                repo = _with_virtual_access(repo, location, zarr_id, repo.storage, config)
                return cls(location, zarr_id, repo, embargoed=area)
        if not create:
            raise _no_repository(location, zarr_id)
        repo = repositories.register(location, zarr_id, embargoed=embargoed, config=config)
        return cls(location, zarr_id, repo, embargoed=embargoed)

    def resolve(
        self, *, snapshot_id: str | None = None, tag: str | None = None, branch: str | None = None
    ) -> str:
        """The snapshot ID that exactly one of ``snapshot_id``, ``tag`` or ``branch`` names
        (the tip of ``main`` when none is given)."""
        given = [x for x in (snapshot_id, tag, branch) if x is not None]
        if len(given) > 1:
            raise ValueError("give at most one of snapshot_id, tag and branch")
        if snapshot_id is not None:
            if not _SNAPSHOT_ID.fullmatch(snapshot_id):
                raise RefNotFoundError(
                    f"{snapshot_id!r} is not a snapshot ID (20 characters, 0-9 and A-Z); "
                    f"see `dandi-icechunk log {self.zarr_id}`"
                )
            with _icechunk_errors(f"snapshot {snapshot_id} of {self.zarr_id}"):
                self.icechunk.lookup_snapshot(snapshot_id)
            return snapshot_id
        if tag is not None:
            with _icechunk_errors(f"tag {tag!r} of {self.zarr_id}"):
                return self.icechunk.lookup_tag(tag)
        name = branch or DEFAULT_BRANCH
        with _icechunk_errors(f"branch {name!r} of {self.zarr_id}"):
            return self.icechunk.lookup_branch(name)

    def resolve_name(self, name: str) -> str:
        """The snapshot ID that ``name`` (a snapshot ID, a tag or a branch) stands for."""
        if _SNAPSHOT_ID.fullmatch(name):
            return self.resolve(snapshot_id=name)
        if name in self.icechunk.list_tags():
            return self.resolve(tag=name)
        if name in self.icechunk.list_branches():
            return self.resolve(branch=name)
        raise RefNotFoundError(
            f"{name!r} is no snapshot ID, tag or branch of {self.zarr_id}; "
            f"see `dandi-icechunk log {self.zarr_id}`"
        )

    def readonly_session(
        self, *, snapshot_id: str | None = None, tag: str | None = None, branch: str | None = None
    ) -> icechunk.Session:
        """A read-only session on one snapshot (see :meth:`resolve`)."""
        sid = self.resolve(snapshot_id=snapshot_id, tag=tag, branch=branch)
        return self.icechunk.readonly_session(snapshot_id=sid)

    def writable_session(self, branch: str = DEFAULT_BRANCH) -> icechunk.Session:
        """A writable session on the tip of ``branch``."""
        with _icechunk_errors(f"branch {branch!r} of {self.zarr_id}"):
            return self.icechunk.writable_session(branch)

    def commit_info(self, snapshot_id: str) -> CommitInfo | None:
        """The DANDI metadata of a snapshot (``None`` when it has none, e.g. the initial one)."""
        with _icechunk_errors(f"snapshot {snapshot_id} of {self.zarr_id}"):
            return CommitInfo.from_metadata(self.icechunk.lookup_snapshot(snapshot_id).metadata)

    def index(self, snapshot_id: str) -> DigestIndex:
        """The digest index of a snapshot (empty for snapshots with no DANDI metadata)."""
        info = self.commit_info(snapshot_id)
        return load_index(self.objects, info.index_id) if info else DigestIndex.empty()

    def index_reader(self, snapshot_id: str) -> IndexReader:
        """The digest index of a snapshot, read a shard at a time (see :class:`IndexReader`)."""
        info = self.commit_info(snapshot_id)
        return IndexReader.load(self.objects, info.index_id) if info else IndexReader.of(DigestIndex.empty())

    def tags_by_snapshot(self) -> dict[str, list[str]]:
        """Snapshot ID -> the tags pointing at it."""
        tags: dict[str, list[str]] = {}
        for tag in sorted(self.icechunk.list_tags()):
            tags.setdefault(self.icechunk.lookup_tag(tag), []).append(tag)
        return tags

    def history(self, branch: str = DEFAULT_BRANCH) -> list[SnapshotRecord]:
        """The snapshots of ``branch``, newest first."""
        tags = self.tags_by_snapshot()
        with _icechunk_errors(f"branch {branch!r} of {self.zarr_id}"):
            return [
                SnapshotRecord(
                    snapshot_id=s.id,
                    parent_id=s.parent_id,
                    written_at=s.written_at,
                    message=s.message,
                    info=CommitInfo.from_metadata(s.metadata),
                    tags=tuple(tags.get(s.id, ())),
                )
                for s in self.icechunk.ancestry(branch=branch)
            ]

    def commit(
        self,
        session: icechunk.Session,
        message: str,
        commit_info_for: Callable[[str], CommitInfo],
    ) -> str:
        """Commit ``session``, rebasing over concurrent commits that touched other chunks.

        ``commit_info_for(parent_snapshot_id)`` gives the metadata of the commit on top of that
        parent; it is called again after every rebase and may raise :class:`ConflictError`.
        A conflict on the same chunks raises :class:`ConflictError` and commits nothing.
        """
        while True:
            info = commit_info_for(session.snapshot_id)
            try:
                return session.commit(message, info.to_metadata(), allow_empty=True)
            except icechunk.ConflictError:
                try:
                    session.rebase(icechunk.ConflictDetector())
                except icechunk.RebaseFailedError as exc:
                    paths = sorted({str(c.path) for c in exc.conflicts})
                    raise ConflictError(
                        f"another upload to {self.zarr_id} committed changes to the same "
                        f"nodes/chunks ({', '.join(paths[:5])}); nothing was committed. "
                        "Check the new state with `dandi-icechunk log`, then run the upload again"
                    ) from None


def current_user() -> str:
    """Who is committing, for commit metadata."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"

"""Check that every published snapshot is intact, and repair it from the bucket's versions.

A published snapshot is intact when its tag still names it, the snapshot opens, every file of
it reads back with the MD5 recorded at upload, and its checksum and size are those of the
published metadata. Reading every file finds deleted and overwritten objects precisely.

Repair needs a versioned bucket (DANDI's is, and nobody may delete object versions there):
objects under Icechunk's write-once prefixes that were deleted or overwritten get their first
version back, and a ``repo`` object that lost a tag or a snapshot is rolled back to its newest
earlier version in which every publication of the repository is whole again. A migrated Zarr's
published snapshots also reference legacy objects outside the repository (``zarr/<zarr_id>/``),
pinned by ETag: the version with that ETag is held, an overwritten or deleted one is reported and
brought back.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import icechunk

from ..errors import AccessDeniedError, DandiIcechunkError
from ..location import StorageLocation
from ..objects import (
    DEFAULT_JOBS,
    REPO_OBJECT,
    ObjectVersion,
    VersionedObjects,
    repository_objects,
    versioned_objects,
    versioned_prefix,
)
from ..records import JsonRecord
from ..reference import SnapshotReference
from ..session import ZarrRepository
from ..snapshot_files import verify_snapshot

WRITE_ONCE_PREFIXES = (
    "chunks/", "manifests/", "snapshots/", "transactions/", "overwritten/", "dandi/index/",
)
"""Where every object is written once: any later version or delete marker is tampering."""


@dataclass(frozen=True)
class Publication:
    """A snapshot published in a Dandiset version, as its published metadata records it."""

    zarr_id: str
    snapshot_id: str
    tag: str | None
    zarr_checksum: str
    size: int
    path: str | None = None

    @classmethod
    def from_asset(cls, asset: Mapping[str, Any]) -> Publication:
        """From published asset metadata (as :func:`~dandi_icechunk.archive_hooks.publish_dandiset` returns)."""
        ref = SnapshotReference.from_asset(asset)
        return cls(
            zarr_id=ref.zarr_id,
            snapshot_id=ref.snapshot_id,
            tag=ref.tag,
            zarr_checksum=(asset.get("digest") or {}).get("dandi:dandi-zarr-checksum", ""),
            size=int(asset.get("contentSize") or 0),
            path=asset.get("path"),
        )


@dataclass(frozen=True)
class AuditReport(JsonRecord):
    """What an audit found (and, with repair, what it did)."""

    checked: int
    problems: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every publication is intact (after repair, if repair ran)."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, with ``ok``."""
        return {**super().to_json(), "ok": self.ok}


def audit_publications(
    publications: Iterable[Publication],
    location: StorageLocation,
    *,
    repair: bool = False,
    jobs: int = DEFAULT_JOBS,
) -> AuditReport:
    """Check every publication; with ``repair``, restore what can be restored, then check again."""
    by_zarr: dict[str, list[Publication]] = defaultdict(list)
    for publication in publications:
        by_zarr[publication.zarr_id].append(publication)
    problems: list[str] = []
    repairs: list[str] = []
    for zarr_id, pubs in sorted(by_zarr.items()):
        found = _damage(location, zarr_id, pubs, jobs)
        if found and repair:
            repairs.extend(_repair(location, zarr_id, pubs))
            found = _damage(location, zarr_id, pubs, jobs)
        problems.extend(found)
    return AuditReport(checked=sum(len(p) for p in by_zarr.values()), problems=problems, repairs=repairs)


def _check(
    location: StorageLocation, zarr_id: str, pubs: list[Publication], jobs: int, *, deep: bool
) -> list[str]:
    """Problems of ``pubs`` (all of one Zarr); ``deep`` also reads every file back."""
    try:
        repo = ZarrRepository.open(location, zarr_id)
    except DandiIcechunkError as exc:
        return [f"{zarr_id}: repository unreadable: {exc}"]
    problems = []
    for pub in pubs:
        where = f"{zarr_id} {pub.tag or ''} {pub.snapshot_id}".replace("  ", " ")
        try:
            if pub.tag is not None and repo.resolve(tag=pub.tag) != pub.snapshot_id:
                problems.append(f"{where}: tag {pub.tag} no longer names the published snapshot")
            info = repo.commit_info(pub.snapshot_id)
        except DandiIcechunkError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if info is None or (info.zarr_checksum, info.size) != (pub.zarr_checksum, pub.size):
            problems.append(f"{where}: snapshot metadata does not match the published checksum/size")
            continue
        if not deep:
            continue
        try:
            result = verify_snapshot(repo, snapshot_id=pub.snapshot_id, jobs=jobs)
        except DandiIcechunkError as exc:
            problems.append(f"{where}: cannot read the snapshot back: {exc}")
            continue
        problems.extend(f"{where}: {p}" for p in result.problems[:20])
        if result.actual_checksum != pub.zarr_checksum:
            problems.append(
                f"{where}: stored data gives checksum {result.actual_checksum}, "
                f"published {pub.zarr_checksum}"
            )
    return problems


def _damage(location: StorageLocation, zarr_id: str, pubs: list[Publication], jobs: int) -> list[str]:
    """Everything wrong with the publications of one repository: tampered write-once objects and
    legacy objects, then whatever reading every published snapshot back finds."""
    legacy = [f"{zarr_id}: legacy object {key} {what}" for key, what, _ in _legacy_damage(location, zarr_id, pubs)]
    return _tampered(location, zarr_id) + legacy + _check(location, zarr_id, pubs, jobs, deep=True)


def legacy_references(location: StorageLocation, zarr_id: str, snapshot_ids: Iterable[str]) -> dict[str, str]:
    """Key (under the legacy prefix of ``zarr_id``) -> pinned ETag of every legacy object the
    snapshots reference (a migrated Zarr's chunks that no upload replaced)."""
    if location.kind != "s3":
        return {}
    repo = ZarrRepository.open(location, zarr_id)
    container = location.legacy_container(zarr_id)
    if container not in (repo.icechunk.config.virtual_chunk_containers or {}):
        return {}  # never migrated
    pinned: dict[str, str] = {}
    for snapshot_id in snapshot_ids:
        locations = repo.icechunk.readonly_session(snapshot_id=snapshot_id).all_virtual_chunk_locations()
        if not locations:
            continue
        files = repo.index(snapshot_id).files
        for url in locations:
            if url.startswith(container):
                key = url[len(container):]
                pinned[key] = files[key].md5
    return pinned


def _legacy_damage(location: StorageLocation, zarr_id: str, pubs: list[Publication]) -> list[tuple[str, str, str | None]]:
    """(key, "overwritten" or "deleted", ID of the version with the pinned ETag or None) of each
    referenced legacy object whose latest version is not the pinned one (versioned buckets)."""
    try:
        pinned = legacy_references(location, zarr_id, {p.snapshot_id for p in pubs})
    except (DandiIcechunkError, icechunk.IcechunkError):
        return []  # an unreadable repository or snapshot is reported by _check
    objects = versioned_prefix(location, location.legacy_prefix(zarr_id)) if pinned else None
    if objects is None:
        return []
    histories: dict[str, list[ObjectVersion]] = defaultdict(list)
    for version in objects.versions(""):
        histories[version.key].append(version)
    damage: list[tuple[str, str, str | None]] = []
    for key, etag in sorted(pinned.items()):
        latest = next((v for v in histories[key] if v.is_latest), None)
        if latest is not None and not latest.is_delete_marker and latest.etag.strip('"') == etag:
            continue
        original = next((v.version_id for v in histories[key] if not v.is_delete_marker and v.etag.strip('"') == etag), None)
        damage.append((key, "deleted" if latest is None or latest.is_delete_marker else "overwritten", original))
    return damage


def _versioned(location: StorageLocation, zarr_id: str) -> VersionedObjects | None:
    """Version access to the prefix holding the repository of ``zarr_id``: where it opens; when
    it is too damaged to open, where its ``repo`` object has versions (public first). ``None``
    where the bucket keeps no versions."""
    try:
        embargoed = ZarrRepository.open(location, zarr_id).embargoed
        return versioned_objects(location, zarr_id, embargoed=embargoed)
    except DandiIcechunkError:  # e.g. its repo object was deleted or overwritten
        pass
    for embargoed in (False, True):
        objects = versioned_objects(location, zarr_id, embargoed=embargoed)
        if objects is None or any(True for _ in objects.versions(REPO_OBJECT)):
            return objects
    return versioned_objects(location, zarr_id)


def _tampered(location: StorageLocation, zarr_id: str) -> list[str]:
    """Write-once objects of the repository that were overwritten or deleted (versioned buckets;
    elsewhere reading everything back is the only check)."""
    try:
        objects = _versioned(location, zarr_id)
        damage = _write_once_damage(objects) if objects is not None else []
    except DandiIcechunkError as exc:
        return [f"{zarr_id}: cannot list object versions: {exc}"]
    return [f"{zarr_id}: {what} {key}" for key, what, _ in damage]


def _repair(location: StorageLocation, zarr_id: str, pubs: list[Publication]) -> list[str]:
    objects = _versioned(location, zarr_id)
    if objects is None:
        return [f"{zarr_id}: cannot repair: the bucket keeps no object versions"]
    repairs = _restore_write_once_objects(zarr_id, objects)
    legacy = versioned_prefix(location, location.legacy_prefix(zarr_id)) if location.kind == "s3" else None
    for key, what, version_id in _legacy_damage(location, zarr_id, pubs):
        if legacy is None or version_id is None:
            repairs.append(f"{zarr_id}: cannot repair {what} legacy object {key}: no version with its ETag is left")
            continue
        legacy.restore(key, version_id)
        repairs.append(f"{zarr_id}: restored {what} legacy object {key}")
    if _check(location, zarr_id, pubs, jobs=1, deep=False):
        repairs.extend(_roll_back_repo_object(location, zarr_id, pubs, objects))
    return repairs


@dataclass(frozen=True)
class ProtectResult(JsonRecord):
    """What :func:`protect_published_objects` held."""

    zarr_id: str
    objects_held: int
    bytes_held: int


def protect_published_objects(location: StorageLocation, zarr_id: str) -> ProtectResult:
    """Put an Object Lock legal hold on the first version of every write-once object of a
    repository (chunks, manifests, snapshots, transaction logs, digest indexes), and on the
    version of every legacy object a tagged (published) snapshot references.

    Icechunk does not tell which chunk objects a snapshot reaches, so this holds every object
    written so far: a superset of what the published snapshots reach. It grows with the
    repository, so the archive runs it after publishing (in the background, within the bucket's
    default-retention window), not inside the publish transaction. Idempotent.
    """
    repo = ZarrRepository.open(location, zarr_id)
    objects = versioned_objects(location, zarr_id, embargoed=repo.embargoed)
    if objects is None:
        raise DandiIcechunkError(
            f"cannot protect {zarr_id}: the bucket keeps no object versions (Object Lock needs "
            "a versioned bucket created with Object Lock enabled)"
        )
    held = size = 0
    for history in _write_once_histories(objects).values():
        if (first := _first_written(history)) is not None:
            objects.legal_hold(first.key, first.version_id)
            held += 1
            size += first.size
    pinned = legacy_references(location, zarr_id, repo.tags_by_snapshot())
    legacy = versioned_prefix(location, location.legacy_prefix(zarr_id)) if pinned else None
    for version in legacy.versions("") if legacy is not None else ():
        if not version.is_delete_marker and pinned.get(version.key) == version.etag.strip('"'):
            legacy.legal_hold(version.key, version.version_id)
            held += 1
            size += version.size
    return ProtectResult(zarr_id=repo.zarr_id, objects_held=held, bytes_held=size)


def _write_once_histories(objects: VersionedObjects) -> dict[str, list[ObjectVersion]]:
    """Every version and delete marker of each write-once object, newest first (S3's order)."""
    histories: dict[str, list[ObjectVersion]] = defaultdict(list)
    for prefix in WRITE_ONCE_PREFIXES:
        for version in objects.versions(prefix):
            histories[version.key].append(version)
    return histories


def _first_written(history: list[ObjectVersion]) -> ObjectVersion | None:
    """The first version written (S3 lists newest first, and timestamps may tie: the last)."""
    return next((v for v in reversed(history) if not v.is_delete_marker), None)


def _write_once_damage(objects: VersionedObjects) -> list[tuple[str, str, str]]:
    """(key, "deleted" or "overwritten", first version ID) of every write-once object whose
    latest version is not its first."""
    damage = []
    for key, history in sorted(_write_once_histories(objects).items()):
        original = _first_written(history)
        latest = next((v for v in history if v.is_latest), None)
        if original is None or (
            latest is not None and not latest.is_delete_marker and latest.etag == original.etag
        ):
            continue  # untouched, or restored (a copy of the first version is the latest)
        what = "deleted" if latest is None or latest.is_delete_marker else "overwritten"
        damage.append((key, what, original.version_id))
    return damage


def _restore_write_once_objects(zarr_id: str, objects: VersionedObjects) -> list[str]:
    """Give every deleted or overwritten write-once object its first version back."""
    repairs = []
    for key, what, version_id in _write_once_damage(objects):
        objects.restore(key, version_id)
        repairs.append(f"{zarr_id}: restored {what} {key}")
    return repairs


def _roll_back_repo_object(
    location: StorageLocation, zarr_id: str, pubs: list[Publication], objects: VersionedObjects
) -> list[str]:
    """Bring back the newest earlier ``repo`` object in which every publication is whole."""
    history = [  # newest first, as S3 lists them
        v for v in objects.versions(REPO_OBJECT) if v.key == REPO_OBJECT and not v.is_delete_marker
    ]
    for version in history:
        if version.is_latest:
            continue
        objects.restore(REPO_OBJECT, version.version_id)
        if not _check(location, zarr_id, pubs, jobs=1, deep=False):
            return [f"{zarr_id}: rolled the repo object back to version {version.version_id}"]
    return [f"{zarr_id}: no earlier repo object has every publication; needs an operator"]


def check_embargoed_private(
    location: StorageLocation, zarr_ids: Iterable[str], *, sample: int = 20
) -> list[str]:
    """Prove that anonymous readers cannot read the repositories of the embargoed ``zarr_ids``:
    the ``repo`` object and up to ``sample`` other objects of each are fetched without
    credentials, and every one that comes back is a problem (the bucket policy lacks the
    embargo statements of :mod:`dandi_icechunk.archive.policy`)."""
    anonymous = dataclasses.replace(location, credentials=None, credentials_provider=None, anonymous=True)
    problems = []
    for zarr_id in zarr_ids:
        keys = [REPO_OBJECT] + [
            key for key, _, _ in itertools.islice(repository_objects(location, zarr_id, embargoed=True).list_with_times(), sample)
            if key != REPO_OBJECT
        ]
        public = repository_objects(anonymous, zarr_id, embargoed=True)
        readable = []
        for key in keys:
            try:
                if public.get(key) is not None:
                    readable.append(key)
            except AccessDeniedError:
                continue
        if readable:
            problems.append(
                f"embargoed Zarr {zarr_id}: anyone can read {len(readable)} of {len(keys)} objects tried "
                f"(e.g. {readable[0]}); add the embargo statements to the bucket policy"
            )
    return problems

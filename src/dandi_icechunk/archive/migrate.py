"""Migrate a Zarr the archive stored before Icechunk (objects under ``zarr/<zarr_id>/``) into an
Icechunk repository without copying a chunk byte.

Each chunk becomes a virtual reference to its existing object, pinned by ETag (reads send
``If-Match`` and fail if the object was overwritten); the metadata documents, zero-byte files and
files of no array are read (small) and stored as an upload stores them, so Zarr v2 stays v2 and
``export`` gives the same files. The checksum recomputed from the listing (the archive's
``dandi-zarr-checksum`` is computed from ETags) must equal the one the archive recorded, and the
listing must not change while the repository is written, or nothing is committed. The legacy
objects and their URLs are untouched.

>>> migrate_zarr(location, zarr_id, expected_checksum=archive_recorded_checksum)
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import icechunk
from zarr.buffer import cpu

from .. import aio
from ..chunk_layout import manifest_splitting
from ..errors import DandiIcechunkError, InvalidArgumentError, RepositoryNotFoundError, first_line
from ..hierarchy import Hierarchy, is_document, node_key
from ..index import DigestIndex, FileDigest, store_index
from ..location import StorageLocation, validate_zarr_id
from ..objects import prefix_objects
from ..progress import NoProgress, Progress
from ..records import JsonRecord
from ..reuse import register_checksum
from ..session import DEFAULT_BRANCH, CommitInfo, ZarrRepository, current_user

_MD5 = re.compile(r"[0-9a-f]{32}")
LegacyListing = dict[str, tuple[str, int]]
"""A legacy Zarr's objects: key (relative to ``zarr/<zarr_id>/``) -> (MD5 ETag, size)."""


class MigrationError(DandiIcechunkError):
    """A legacy Zarr cannot be migrated as it is: nothing was committed."""


@dataclass(frozen=True)
class MigrationResult(JsonRecord):
    """What a migration made: one snapshot whose chunks reference the legacy objects."""

    zarr_id: str
    repository: str
    snapshot_id: str
    zarr_checksum: str
    file_count: int
    size: int
    virtual_chunks: int
    stored_files: int
    stored_bytes: int


def migrate_zarr(
    location: StorageLocation,
    zarr_id: str,
    *,
    expected_checksum: str,
    embargoed: bool = False,
    dandiset: str | None = None,
    user: str | None = None,
    listing: LegacyListing | None = None,
    recheck: bool = True,
) -> MigrationResult:
    """Make the legacy Zarr ``zarr_id`` at ``location`` a repository (its ``main`` branch), with
    its chunks referenced in place. Raises :class:`MigrationError` (nothing committed) when the
    listing's checksum is not ``expected_checksum``, an ETag is no MD5 (a multipart upload), the
    Zarr is empty or changes meanwhile, or the repository already holds an upload. Run again
    after a failure: a repository left without a commit is taken over.

    ``listing`` (from an S3 Inventory, :func:`inventory_listings`) replaces listing the
    objects; with ``recheck`` they are listed once more before the commit, and must not differ."""
    zarr_id = validate_zarr_id(zarr_id)
    if location.kind != "s3":
        raise InvalidArgumentError("legacy Zarrs live in the archive's S3 bucket; give an s3:// location")
    legacy = prefix_objects(location, location.legacy_prefix(zarr_id))
    if listing is None:
        listing = legacy_listing(location, zarr_id)
    elif not listing:
        raise MigrationError(f"the inventory lists no objects under {location.legacy_prefix(zarr_id)}: nothing to migrate")
    files = {key: FileDigest(etag, size) for key, (etag, size) in listing.items()}
    checksum = DigestIndex(None, files).zarr_checksum()
    if checksum != expected_checksum:
        raise MigrationError(
            f"the objects of Zarr {zarr_id} have checksum {checksum}, the archive recorded "
            f"{expected_checksum}: the Zarr changed or is incomplete; nothing was migrated"
        )
    documents = {k: _read(legacy, k) for k, d in files.items() if is_document(k) or d.size == 0}
    hierarchy = Hierarchy.from_documents(documents)
    chunks, stray = hierarchy.chunk_keys(k for k in files if k not in documents)
    documents.update({k: _read(legacy, k) for k in stray})
    index = DigestIndex(hierarchy.zarr_format, files, documents)

    config = icechunk.RepositoryConfig(manifest=icechunk.ManifestConfig(splitting=manifest_splitting(hierarchy)))
    config.set_virtual_chunk_container(location.legacy_container_config(zarr_id))
    repository = _repository(location, zarr_id, embargoed, config)
    session = repository.writable_session(DEFAULT_BRANCH)
    base = session.snapshot_id
    container = location.legacy_container(zarr_id)

    async def write_nodes() -> None:
        for path in sorted(hierarchy.nodes, key=lambda p: (p.count("/"), p) if p else (-1, p)):
            await session.store.set(node_key(path), cpu.Buffer.from_bytes(hierarchy.nodes[path].icechunk_document))

    aio.run(write_nodes())
    for key, target in chunks.items():
        etag, size = listing[key]
        session.store.set_virtual_ref(target, container + key, offset=0, length=size, checksum=f'"{etag}"')
    if recheck and legacy_listing(location, zarr_id) != listing:
        raise MigrationError(f"Zarr {zarr_id} changed while it was being migrated; nothing was migrated, run again")

    def info_for(parent: str) -> CommitInfo:
        if parent != base:
            raise MigrationError(f"someone committed to {zarr_id} during its migration; nothing was migrated")
        return CommitInfo(
            zarr_checksum=checksum, file_count=index.file_count, size=index.size,
            index_id=store_index(repository.objects, index), zarr_format=index.zarr_format,
            user=user or current_user(), dandiset=dandiset,
        )

    snapshot_id = repository.commit(session, f"Migrate Zarr {zarr_id} in place ({len(chunks)} chunks referenced)", info_for)
    register_checksum(location, checksum, zarr_id, snapshot_id, embargoed=repository.embargoed)
    return MigrationResult(
        zarr_id=zarr_id, repository=repository.url, snapshot_id=snapshot_id, zarr_checksum=checksum,
        file_count=index.file_count, size=index.size, virtual_chunks=len(chunks),
        stored_files=len(documents), stored_bytes=sum(len(v) for v in documents.values()),
    )


def migrate_many(
    location: StorageLocation,
    zarrs: Iterable[tuple[str, str, bool]],
    results: Path,
    *,
    listings: Mapping[str, LegacyListing | MigrationError] | None = None,
    recheck: bool = True,
    jobs: int = 4,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Migrate many legacy Zarrs (``(zarr_id, recorded checksum, embargoed)``), ``jobs`` at a
    time, writing one result file per Zarr in ``results`` (``<zarr_id>.json``: its snapshot, or
    why not). Resumable: a Zarr whose result file says it migrated is skipped; refused ones are
    tried again. ``listings`` (from :func:`inventory_listings`) replace listing the bucket.
    Returns how many migrated, were refused, were skipped."""
    results.mkdir(parents=True, exist_ok=True)
    entries = list(zarrs)
    todo = [e for e in entries if not _migrated(results / f"{e[0]}.json")]
    progress = progress or NoProgress()
    counts = {"migrated": 0, "refused": 0, "skipped": len(entries) - len(todo)}

    def one(entry: tuple[str, str, bool]) -> bool:
        zarr_id, checksum, embargoed = entry
        try:
            listing = None if listings is None else listings.get(zarr_id, MigrationError(
                f"the inventory lists no objects of Zarr {zarr_id}; nothing was migrated"))
            if isinstance(listing, MigrationError):
                raise listing
            done = migrate_zarr(location, zarr_id, expected_checksum=checksum, embargoed=embargoed,
                                listing=listing, recheck=recheck)
            record = {"migrated": True, **done.to_json()}
        except DandiIcechunkError as exc:
            record = {"zarr_id": zarr_id, "migrated": False, "error": first_line(exc)}
        partial = results / f"{zarr_id}.json.partial"
        partial.write_text(json.dumps(record, indent=2))
        os.replace(partial, results / f"{zarr_id}.json")
        progress.advance(1, 0)
        return bool(record["migrated"])

    progress.start("migrating", len(todo), 0)
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for migrated in pool.map(one, todo):
                counts["migrated" if migrated else "refused"] += 1
    finally:
        progress.finish()
    return counts


def _migrated(result: Path) -> bool:
    try:
        return bool(json.loads(result.read_text()).get("migrated"))
    except (OSError, ValueError):
        return False


def legacy_listing(location: StorageLocation, zarr_id: str) -> LegacyListing:
    """key -> (MD5 ETag, size) of every object of the legacy Zarr (ListObjectsV2)."""
    entries = prefix_objects(location, location.legacy_prefix(zarr_id)).listing()  # type: ignore[attr-defined]
    return _checked(zarr_id, location, [(e["Key"], e["ETag"], int(e["Size"])) for e in entries])


def _checked(zarr_id: str, location: StorageLocation, entries: Iterable[tuple[str, str, int]]) -> LegacyListing:
    """The listing, refusing what a migration cannot pin: no objects, ETags that are no MD5."""
    found: LegacyListing = {}
    multipart: list[str] = []
    for key, etag, size in entries:
        etag = etag.strip('"')
        if not _MD5.fullmatch(etag):
            multipart.append(key)
        found[key] = (etag, size)
    if not found:
        raise MigrationError(f"no objects under {location.legacy_prefix(zarr_id)}: nothing to migrate")
    if multipart:
        raise MigrationError(
            f"{len(multipart)} object(s) of Zarr {zarr_id} have no MD5 ETag (multipart uploads; first: "
            f"{sorted(multipart)[0]}): their checksum cannot be checked from the listing; nothing was migrated"
        )
    return found


def inventory_listings(
    location: StorageLocation, rows: Iterable[Mapping[str, str]]
) -> dict[str, LegacyListing | MigrationError]:
    """Each legacy Zarr's listing from S3 Inventory rows (``Key`` URL-encoded, ``ETag``, ``Size``,
    and ``IsLatest``/``IsDeleteMarker`` when the inventory holds all versions), or the reason it
    cannot be migrated as listed (a latest delete marker: an object deleted; a multipart ETag)."""
    root = location.legacy_root + "/"
    entries: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    deleted: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        key = unquote(row["Key"])
        if not key.startswith(root) or row.get("IsLatest", "true").lower() != "true":
            continue
        zarr_id, _, path = key[len(root):].partition("/")
        if row.get("IsDeleteMarker", "false").lower() == "true":
            deleted[zarr_id].append(path)
        else:
            entries[zarr_id].append((path, row["ETag"], int(row["Size"])))
    listings: dict[str, LegacyListing | MigrationError] = {}
    for zarr_id in sorted(entries.keys() | deleted.keys()):
        if deleted[zarr_id]:
            listings[zarr_id] = MigrationError(
                f"{len(deleted[zarr_id])} object(s) of Zarr {zarr_id} were deleted (delete markers; first: "
                f"{sorted(deleted[zarr_id])[0]}): its recorded checksum cannot hold; nothing was migrated"
            )
            continue
        try:
            listings[zarr_id] = _checked(zarr_id, location, entries[zarr_id])
        except MigrationError as exc:
            listings[zarr_id] = exc
    return listings


def _read(legacy: object, key: str) -> bytes:
    data = legacy.get(key)  # type: ignore[attr-defined]
    if data is None:
        raise MigrationError(f"{key} disappeared during the migration; nothing was migrated, run again")
    return bytes(data)


def _repository(
    location: StorageLocation, zarr_id: str, embargoed: bool, config: icechunk.RepositoryConfig
) -> ZarrRepository:
    """A new repository, or one an interrupted migration left without any upload."""
    try:
        existing = ZarrRepository.open(location, zarr_id, config=config)
    except RepositoryNotFoundError:
        existing = None
    if existing is not None:
        if existing.commit_info(existing.resolve()) is not None:
            raise MigrationError(f"Zarr {zarr_id} is already an Icechunk repository with uploads; nothing to migrate")
        existing.icechunk.save_config()
        return existing
    repository = ZarrRepository.open(location, zarr_id, create=True, embargoed=embargoed, config=config)
    repository.icechunk.save_config()
    return repository

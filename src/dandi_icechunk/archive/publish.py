"""Publish a Dandiset version: tag each Zarr's draft snapshot and record it in the metadata.

For every Zarr asset the Dandiset's draft snapshot (the one last finalized, see
:mod:`dandi_icechunk.archive.ledger`; else the tip of its draft branch) must be what the draft
metadata says (checksum and size); it is tagged ``dandiset/<dandiset>/<version>`` and recorded in
the returned metadata (see :mod:`dandi_icechunk.reference`).

Three steps, so that the archive can keep its database and the bucket in step:

- :func:`check_publishable` has no side effects: the archive runs it while validating a draft and
  before it locks the Dandiset, so a problem is a validation error, not a stuck publish;
- :func:`prepare_publish` computes the published metadata and writes nothing but repairs of refs
  another writer moved; the archive stores the metadata inside its publish transaction;
- :meth:`PreparedPublish.commit` makes the tags and the write-once records, after the archive's
  transaction commits: a rolled-back version leaves no tag behind.

:func:`publish_dandiset` does all three (the command line). Idempotent: after a crash at any
point, a retry gets the same result without a second tag.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import icechunk

from ..errors import DandiIcechunkError, MissingExtraError, PublishError, first_line
from ..location import StorageLocation
from ..reference import ZARR_MEDIA_TYPE, SnapshotReference, asset_zarr_id, with_snapshot
from ..session import CommitInfo, ZarrRepository, publish_tag
from .ledger import draft_branch, record_publication, recorded_drafts, restore_refs

_DANDISET_ID = re.compile(r"\d{6}")
_NOT_A_DANDISET_ID = "{!r} is not a Dandiset ID (six digits, e.g. 000123)"
_VERSION = re.compile(r"0\.\d{6}\.\d{4}")
CHECKSUM_KEY = "dandi:dandi-zarr-checksum"
_PARALLEL_ZARRS = 16


@dataclass(frozen=True)
class _Plan:
    """One Zarr asset to publish: where it is in the list, its repository, and its snapshot."""

    position: int
    repository: ZarrRepository
    snapshot_id: str
    info: CommitInfo
    tagged: bool  # the tag already exists (a retry)


@dataclass(frozen=True)
class PreparedPublish:
    """A publish computed but not yet made: :attr:`published` is the metadata of every asset (in
    the order given), :meth:`commit` makes the tags."""

    tag: str
    published: list[dict[str, Any]]
    _plans: tuple[_Plan, ...]
    _location: StorageLocation

    def commit(self) -> None:
        """Tag each Zarr's snapshot and record the publication (write-once). Safe to repeat."""
        def commit_one(plan: _Plan) -> None:
            if not plan.tagged:
                _create_tag(plan.repository, plan.snapshot_id, self.tag)
            # After the tag: a crash in between leaves a tag that GC keeps anyway; a retry records.
            record_publication(self._location, plan.repository.zarr_id, self.tag, plan.snapshot_id)

        with ThreadPoolExecutor(max_workers=min(_PARALLEL_ZARRS, max(1, len(self._plans)))) as pool:
            list(pool.map(commit_one, self._plans))


def check_publishable(
    dandiset_id: str,
    assets: Sequence[Mapping[str, Any]],
    *,
    location: StorageLocation,
    zarr_ids: Mapping[str, str] | None = None,
) -> list[str]:
    """Why the Zarr assets among ``assets`` (draft metadata) cannot be published: one line per
    problem, empty when they can. Reads the bucket and nothing else; writes nothing."""
    if not _DANDISET_ID.fullmatch(dandiset_id):
        return [_NOT_A_DANDISET_ID.format(dandiset_id)]
    plans, problems = _plan(assets, None, location, dandiset_id, zarr_ids, repair=False)
    return problems or _published(assets, plans, None, location)[1]


def prepare_publish(
    dandiset_id: str,
    version: str,
    assets: Sequence[Mapping[str, Any]],
    *,
    location: StorageLocation,
    zarr_ids: Mapping[str, str] | None = None,
) -> PreparedPublish:
    """Compute the published metadata of every asset in ``assets`` without tagging anything.

    ``zarr_ids`` maps each Zarr asset's ``path`` to its zarr_id, as the archive has them in hand
    (``{a.path: a.zarr.zarr_id for a in version.assets.filter(zarr__isnull=False)}``); without
    it the zarr_id is read from the asset's S3 ``contentUrl`` (``.../zarr/<zarr_id>/``), which
    only a command-line user should rely on. Non-Zarr assets are returned unchanged. Raises
    :class:`PublishError` naming every problem (no snapshot, snapshot not matching the draft's
    digest/contentSize, unreadable repository, invalid metadata).
    """
    if not _DANDISET_ID.fullmatch(dandiset_id):
        raise PublishError(_NOT_A_DANDISET_ID.format(dandiset_id))
    if not _VERSION.fullmatch(version):
        raise PublishError(f"{version!r} is not a published version (0.YYMMDD.HHMM)")
    tag = publish_tag(dandiset_id, version)
    plans, problems = _plan(assets, tag, location, dandiset_id, zarr_ids, repair=True)
    if problems:
        raise PublishError(
            f"cannot publish Dandiset {dandiset_id} version {version}; nothing was tagged:\n  "
            + "\n  ".join(problems)
        )
    published, problems = _published(assets, plans, tag, location)
    if problems:
        raise PublishError("published metadata would not validate:\n  " + "\n  ".join(problems))
    return PreparedPublish(tag, published, tuple(plans), location)


def publish_dandiset(
    dandiset_id: str,
    version: str,
    assets: Sequence[Mapping[str, Any]],
    *,
    location: StorageLocation,
    zarr_ids: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Publish the Zarr assets among ``assets`` and return the published metadata of every asset
    (:func:`prepare_publish`, then :meth:`PreparedPublish.commit`): a refusal tags nothing."""
    prepared = prepare_publish(dandiset_id, version, assets, location=location, zarr_ids=zarr_ids)
    prepared.commit()
    return prepared.published


def _plan(
    assets: Sequence[Mapping[str, Any]],
    tag: str | None,
    location: StorageLocation,
    dandiset_id: str,
    zarr_ids: Mapping[str, str] | None,
    *,
    repair: bool,
) -> tuple[list[_Plan], list[str]]:
    """Each Zarr asset's plan, or the problem with it (in the order of ``assets``); the Zarrs
    are read in parallel, as a Dandiset may hold hundreds."""
    zarr_assets = [(i, a) for i, a in enumerate(assets) if a.get("encodingFormat") == ZARR_MEDIA_TYPE]
    with ThreadPoolExecutor(max_workers=min(_PARALLEL_ZARRS, max(1, len(zarr_assets)))) as pool:
        outcomes = list(pool.map(
            lambda item: _plan_one(*item, tag, location, dandiset_id, zarr_ids, repair=repair), zarr_assets
        ))
    return [o for o in outcomes if isinstance(o, _Plan)], [o for o in outcomes if isinstance(o, str)]


def _plan_one(
    position: int,
    asset: Mapping[str, Any],
    tag: str | None,
    location: StorageLocation,
    dandiset_id: str,
    zarr_ids: Mapping[str, str] | None,
    *,
    repair: bool,
) -> _Plan | str:
    name = asset.get("path") or asset.get("id") or f"asset #{position}"
    try:
        if zarr_ids is None:
            zarr_id = asset_zarr_id(asset)
        elif (zarr_id := zarr_ids.get(str(asset.get("path")))) is None:
            return f"{name}: the archive gave no zarr_id for this Zarr asset's path"
        repository = ZarrRepository.open(location, zarr_id)
        drafts = recorded_drafts(location, repository.zarr_id)
        if repair:
            restore_refs(repository, drafts)  # what another Dandiset's uploader moved
        existing = _tagged_snapshot(repository, tag) if tag else None
        draft = drafts.get(dandiset_id)
        snapshot_id = existing or (
            # exactly what was last finalized; later commits are an upload not yet finalized
            draft.snapshot_id if draft
            else repository.resolve(branch=draft_branch(repository, dandiset_id, drafts))
        )
        info = repository.commit_info(snapshot_id)
    except DandiIcechunkError as exc:
        return f"{name}: {exc}"
    except icechunk.IcechunkError as exc:  # reading refs failed: the storage, not the draft
        return f"{name}: reading the repository failed ({first_line(exc)}); run again"
    if info is None:
        return f"{name}: Zarr {zarr_id} has no uploaded snapshot; upload it first"
    expected = (asset.get("digest") or {}).get(CHECKSUM_KEY)
    if expected != info.zarr_checksum or asset.get("contentSize") != info.size:
        return (
            f"{name}: the draft says checksum {expected} and size {asset.get('contentSize')}, "
            f"but {'the tagged' if existing else 'the newest'} snapshot {snapshot_id} of Zarr "
            f"{zarr_id} has {info.zarr_checksum} and {info.size}; wait for the upload to "
            "finish and the draft metadata to be updated"
        )
    return _Plan(position, repository, snapshot_id, info, tagged=existing is not None)


def _tagged_snapshot(repository: ZarrRepository, tag: str) -> str | None:
    return repository.icechunk.lookup_tag(tag) if tag in repository.icechunk.list_tags() else None


def _create_tag(repository: ZarrRepository, snapshot_id: str, tag: str) -> None:
    try:
        repository.icechunk.create_tag(tag, snapshot_id)
    except icechunk.IcechunkError as exc:
        # A concurrent retry may have made the same tag: that is success, anything else is not.
        if _tagged_snapshot(repository, tag) != snapshot_id:
            raise PublishError(
                f"cannot tag snapshot {snapshot_id} of {repository.zarr_id} as {tag}: {exc}"
            ) from None


def complete_publication(location: StorageLocation, zarr_id: str, tag: str, snapshot_id: str) -> bool:
    """Make the tag and the record of a publication the archive committed but whose
    :meth:`PreparedPublish.commit` did not finish (the bucket was down); whether the tag was
    missing. Idempotent; a tag naming another snapshot is refused (:class:`PublishError`)."""
    repository = ZarrRepository.open(location, zarr_id)
    missing = _tagged_snapshot(repository, tag) is None
    if missing:
        _create_tag(repository, snapshot_id, tag)
    elif _tagged_snapshot(repository, tag) != snapshot_id:
        raise PublishError(f"tag {tag} of {zarr_id} names another snapshot than the published {snapshot_id}")
    record_publication(location, repository.zarr_id, tag, snapshot_id)
    return missing


def _published(
    assets: Sequence[Mapping[str, Any]], plans: Sequence[_Plan], tag: str | None, location: StorageLocation
) -> tuple[list[dict[str, Any]], list[str]]:
    """The published metadata of every asset (others as they are), and why any would not
    validate."""
    published = [dict(copy.deepcopy(a)) for a in assets]
    for plan in plans:
        published[plan.position] = _published_asset(assets[plan.position], plan, tag, location)
    return published, [p for i, a in enumerate(published) if (p := _schema_problem(a, assets[i]))]


def _published_asset(
    asset: Mapping[str, Any], plan: _Plan, tag: str | None, location: StorageLocation
) -> dict[str, Any]:
    repository = plan.repository
    reference = SnapshotReference.in_repository(
        location, repository.zarr_id, plan.snapshot_id, embargoed=repository.embargoed, tag=tag
    )
    published = copy.deepcopy(dict(asset))
    published["digest"] = {**(asset.get("digest") or {}), CHECKSUM_KEY: plan.info.zarr_checksum}
    published["contentSize"] = plan.info.size
    published["relatedResource"] = with_snapshot(asset.get("relatedResource"), reference)
    return published


def _schema_problem(published: Mapping[str, Any], draft: Mapping[str, Any]) -> str | None:
    """Why ``published`` fails dandischema validation or its round trip (None when fine).

    The installed dandischema's models validate offline for every schemaVersion it accepts;
    its JSON-schema validation would download the schema of any other version."""
    if published.get("encodingFormat") != ZARR_MEDIA_TYPE:
        return None
    try:
        from dandischema.metadata import validate
        from dandischema.models import PublishedAsset
    except ImportError:
        raise MissingExtraError("validating published metadata", "archive") from None

    name = published.get("path") or published.get("id")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate(dict(published), schema_key="PublishedAsset")
            round_trip = PublishedAsset(**published).model_dump(mode="json", exclude_none=True)
    except Exception as exc:  # dandischema raises pydantic and jsonschema errors
        return f"{name}: {exc}"
    if SnapshotReference.from_asset(round_trip) != SnapshotReference.from_asset(published):
        return f"{name}: the snapshot reference does not survive the dandischema model"
    return None

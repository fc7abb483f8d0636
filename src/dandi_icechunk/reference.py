"""Where a published Zarr asset's snapshot is recorded in DANDI asset metadata.

dandischema's ``digest`` keys are a closed enum and unknown top-level keys are dropped by the
models, so the snapshot goes into a ``relatedResource`` entry (a dandischema ``Resource``),
which validates and survives a round trip through the models::

    {"schemaKey": "Resource",
     "identifier": "icechunk:snapshot/<SNAPSHOT_ID>",
     "name": "dandiset/<DANDISET>/<VERSION>",          # the tag made at publish
     "repository": "<storage URL of the repository>",  # s3://bucket/zarr-icechunk/<zarr_id>?... or file:///...
     "url": "<https URL of the repository>",           # when the bucket is reachable over http(s)
     "relation": "dcite:IsVersionOf",
     "resourceType": "dcite:Dataset"}

That one entry is enough to open the exact snapshot: repository + snapshot ID. See
``docs/published-metadata.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import NotAZarrAssetError
from .location import StorageLocation

ZARR_MEDIA_TYPE = "application/x-zarr"
_IDENTIFIER_PREFIX = "icechunk:snapshot/"
_LEGACY_ZARR_URL = re.compile(r"/zarr/([0-9a-fA-F-]{36})/?$")
_REPOSITORY_URL = re.compile(r"/zarr-icechunk(?:-embargoed)?/([0-9a-fA-F-]{36})/?$")


@dataclass(frozen=True)
class SnapshotReference:
    """A snapshot of a Zarr asset's repository, as recorded in published asset metadata."""

    repository: str
    zarr_id: str
    snapshot_id: str
    tag: str | None = None
    url: str | None = None

    @classmethod
    def in_repository(
        cls, location: StorageLocation, zarr_id: str, snapshot_id: str, *,
        embargoed: bool = False, tag: str | None = None,
    ) -> SnapshotReference:
        """The reference to ``snapshot_id`` of the repository of ``zarr_id`` at ``location``."""
        return cls(
            repository=location.repository_url(zarr_id, embargoed=embargoed), zarr_id=zarr_id,
            snapshot_id=snapshot_id, tag=tag, url=location.http_url(zarr_id, embargoed=embargoed),
        )

    def to_resource(self) -> dict[str, Any]:
        """The dandischema ``Resource`` dict recorded in ``relatedResource``."""
        resource: dict[str, Any] = {
            "schemaKey": "Resource",
            "identifier": f"{_IDENTIFIER_PREFIX}{self.snapshot_id}",
            "repository": self.repository,
            "relation": "dcite:IsVersionOf",
            "resourceType": "dcite:Dataset",
        }
        if self.tag:
            resource["name"] = self.tag
        if self.url:
            resource["url"] = self.url
        return resource

    @classmethod
    def from_asset(cls, asset: Mapping[str, Any]) -> SnapshotReference:
        """The snapshot reference in published asset metadata (raise if there is none)."""
        if asset.get("encodingFormat") != ZARR_MEDIA_TYPE:
            raise NotAZarrAssetError(
                f"asset {asset.get('path') or asset.get('id')!r} is not a Zarr asset "
                f"(encodingFormat {asset.get('encodingFormat')!r})"
            )
        for resource in asset.get("relatedResource") or []:
            identifier = str(resource.get("identifier") or "")
            if identifier.startswith(_IDENTIFIER_PREFIX):
                repository = str(resource["repository"])
                return cls(
                    repository=repository,
                    zarr_id=repository_zarr_id(repository),
                    snapshot_id=identifier[len(_IDENTIFIER_PREFIX):],
                    tag=resource.get("name"),
                    url=resource.get("url"),
                )
        raise NotAZarrAssetError(
            f"asset {asset.get('path') or asset.get('id')!r} names no Icechunk snapshot: it is "
            "a draft asset, or was published before Zarrs were published as snapshots"
        )


def is_snapshot_resource(resource: Mapping[str, Any]) -> bool:
    """Whether a ``relatedResource`` entry is a snapshot reference."""
    return str(resource.get("identifier") or "").startswith(_IDENTIFIER_PREFIX)


def with_snapshot(
    related: Iterable[Mapping[str, Any]] | None, reference: SnapshotReference | None
) -> list[dict[str, Any]]:
    """``relatedResource`` entries with any snapshot reference replaced by ``reference`` (or
    dropped, when it is None)."""
    kept = [dict(r) for r in related or [] if not is_snapshot_resource(r)]
    return kept + ([reference.to_resource()] if reference is not None else [])


def repository_zarr_id(repository_url: str) -> str:
    """The ``zarr_id`` at the end of a repository URL."""
    match = _REPOSITORY_URL.search(urlsplit(repository_url).path)
    if not match:
        raise NotAZarrAssetError(f"{repository_url!r} is not the URL of a Zarr repository")
    return match.group(1).lower()


def asset_zarr_id(asset: Mapping[str, Any]) -> str:
    """The ``zarr_id`` of a Zarr asset: the last element of its S3 ``contentUrl`` (``.../zarr/<id>/``)."""
    urls: Sequence[str] = asset.get("contentUrl") or []
    for url in urls:
        match = _LEGACY_ZARR_URL.search(urlsplit(str(url)).path)
        if match:
            return match.group(1).lower()
    raise NotAZarrAssetError(
        f"asset {asset.get('path') or asset.get('id')!r} has no S3 contentUrl ending in "
        "/zarr/<zarr_id>/, so its zarr_id is unknown"
    )

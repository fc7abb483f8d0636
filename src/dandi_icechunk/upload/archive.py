"""Uploading through a DANDI archive that runs the dandi-icechunk adapter: the archive decides
where the Zarr goes (prefix, branch) and vends credentials for its repository only; the uploader
uses what it is given, then asks the archive to finalize.

>>> upload = begin_archive_upload("https://api.dandiarchive.org/api", zarr_id, api_key=key)
>>> upload_zarr("sample.ome.zarr", upload.location, zarr_id, branch=upload.branch,
...             embargoed=upload.embargoed, dedup=False)
>>> finalize_archive_upload("https://api.dandiarchive.org/api", zarr_id, api_key=key)
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import ArchiveRequestError, CredentialError, PlainUploadOnlyError
from ..location import S3Credentials, StorageLocation, validate_zarr_id


@dataclass(frozen=True)
class ArchiveUpload:
    """Where to upload a Zarr, as the archive decided: ``location`` carries credentials that the
    archive renews while the upload runs."""

    zarr_id: str
    dandiset: str
    branch: str
    embargoed: bool
    location: StorageLocation


def _request(method: str, url: str, api_key: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"token {api_key}")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()[:500]
        raise ArchiveRequestError(f"{method} {url}: HTTP {exc.code}: {detail}", exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ArchiveRequestError(f"{method} {url}: the archive is unreachable ({exc}); run again") from None
    return json.loads(payload) if payload else None


def _credentials(data: dict[str, Any]) -> S3Credentials:
    return S3Credentials(
        data["access_key_id"], data["secret_access_key"], data.get("session_token"),
        datetime.fromisoformat(data["expires_at"]) if data.get("expires_at") else None,
    )


class ArchiveCredentials:
    """Upload credentials from the archive: the ones given at begin-upload, then new ones from
    its credentials endpoint whenever asked again (Icechunk asks shortly before they expire).
    Picklable: Icechunk pickles credential providers."""

    def __init__(self, url: str, api_key: str, first: S3Credentials) -> None:
        self.url, self.api_key, self._first = url, api_key, first

    def __call__(self) -> S3Credentials:
        first, self._first = self._first, None
        if first is not None and (first.expires_at is None or first.expires_at > datetime.now(first.expires_at.tzinfo)):
            return first
        try:
            return _credentials(_request("POST", self.url, self.api_key))
        except ArchiveRequestError as exc:
            raise CredentialError(f"cannot renew upload credentials: {exc}") from None


def begin_archive_upload(api_url: str, zarr_id: str, *, api_key: str) -> ArchiveUpload:
    """Ask the archive at ``api_url`` (``https://HOST/api``) to begin an Icechunk upload of
    ``zarr_id`` (made with ``POST /zarr/``): it marks the Zarr pending and says where to write.
    Raises :class:`PlainUploadOnlyError` when the archive has no such endpoint, or keeps this
    Zarr a plain one."""
    zarr_id = validate_zarr_id(zarr_id)
    try:
        answer = _request("POST", f"{api_url.rstrip('/')}/zarr/{zarr_id}/icechunk/upload/", api_key)
    except ArchiveRequestError as exc:
        if exc.status == 409:  # a Zarr that holds files uploaded with presigned URLs
            raise PlainUploadOnlyError(str(exc), exc.status) from None
        if exc.status != 404 or "No ZarrArchive matches" in str(exc):
            raise
        raise PlainUploadOnlyError(f"{api_url} does not offer Icechunk uploads", exc.status) from None
    provider = ArchiveCredentials(answer["credentials_url"], api_key, _credentials(answer["credentials"]))
    location = dataclasses.replace(StorageLocation.parse(answer["storage"]), credentials_provider=provider)
    return ArchiveUpload(zarr_id, answer["dandiset"], answer["branch"], answer["embargoed"], location)


def finalize_archive_upload(api_url: str, zarr_id: str, *, api_key: str) -> None:
    """Tell the archive the upload is done: it checks and records the new snapshot (see
    :func:`archive_zarr_state` for the outcome)."""
    _request("POST", f"{api_url.rstrip('/')}/zarr/{validate_zarr_id(zarr_id)}/finalize/", api_key)


def archive_zarr_state(api_url: str, zarr_id: str, *, api_key: str) -> dict[str, Any]:
    """The archive's view of an Icechunk Zarr: status, last finalize error, each Dandiset's draft."""
    return _request("GET", f"{api_url.rstrip('/')}/zarr/{validate_zarr_id(zarr_id)}/icechunk/", api_key)

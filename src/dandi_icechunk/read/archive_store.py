"""A read-only Zarr store over the DANDI archive's files endpoint: embargoed Zarrs read with a
DANDI API key, through the archive, never with bucket keys.

The archive serves the files of one snapshot of an Icechunk Zarr at
``/api/zarr/{zarr_id}/files/?snapshot=...`` to users who may see its Dandiset (the owners, while
it is embargoed). Every read is an HTTP request to the archive, so this is the route for private
data; public data reads faster straight from the bucket.

>>> ds = open_dataset(draft_asset, dandi_api_key=key)     # dandi_icechunk.read.open
>>> store = ArchiveFilesStore("https://api.dandiarchive.org/api", zarr_id, snapshot_id, key)
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest

from ..errors import AccessDeniedError, DandiIcechunkError
from ..location import validate_zarr_id

if TYPE_CHECKING:  # zarr names these types in its Store API only
    from zarr.core.buffer import Buffer, BufferPrototype


class ArchiveFilesStore(Store):
    """The files of snapshot ``snapshot_id`` of ``zarr_id``, as the archive at ``api_url``
    (``https://HOST/api``) serves them to the holder of ``api_key``. Read-only."""

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, api_url: str, zarr_id: str, snapshot_id: str, api_key: str | None) -> None:
        super().__init__(read_only=True)
        self.api_url, self.zarr_id = api_url.rstrip("/"), validate_zarr_id(zarr_id)
        self.snapshot_id, self.api_key = snapshot_id, api_key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArchiveFilesStore) and (
            self.api_url, self.zarr_id, self.snapshot_id, self.api_key
        ) == (other.api_url, other.zarr_id, other.snapshot_id, other.api_key)

    def __repr__(self) -> str:
        return f"ArchiveFilesStore({self.api_url!r}, {self.zarr_id!r}, {self.snapshot_id!r})"

    def _url(self, **params: str) -> str:
        return f"{self.api_url}/zarr/{self.zarr_id}/files/?" + urlencode({**params, "snapshot": self.snapshot_id})

    def _request(self, url: str, method: str = "GET", headers: dict[str, str] | None = None) -> bytes | None:
        """The body, or None for 404/416; raises for refusals and unreachable archives."""
        request = urllib.request.Request(url, method=method, headers=headers or {})
        if self.api_key:
            request.add_header("Authorization", f"token {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 416):
                return None
            detail = exc.read().decode(errors="replace").strip()[:300]
            if exc.code in (401, 403):
                raise AccessDeniedError(
                    f"the archive refused to serve Zarr {self.zarr_id} ({exc.code}: {detail}); give the "
                    "DANDI API key of someone allowed to see its Dandiset"
                ) from None
            raise DandiIcechunkError(f"the archive answered {exc.code} for Zarr {self.zarr_id}: {detail}") from None
        except OSError as exc:
            raise DandiIcechunkError(f"the archive at {self.api_url} is unreachable ({exc})") from None

    def check_readable(self) -> None:
        """Raise one clear error unless the archive lists this snapshot to this key."""
        if self._request(self._url(limit="1")) is None:
            raise AccessDeniedError(
                f"the archive does not show snapshot {self.snapshot_id} of Zarr {self.zarr_id} to this "
                "key: it is private (embargoed) to its owners, or no such snapshot"
            )

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        headers = {}
        if isinstance(byte_range, RangeByteRequest):
            headers["Range"] = f"bytes={byte_range.start}-{byte_range.end - 1}"
        elif isinstance(byte_range, OffsetByteRequest):
            headers["Range"] = f"bytes={byte_range.offset}-"
        elif isinstance(byte_range, SuffixByteRequest):
            headers["Range"] = f"bytes=-{byte_range.suffix}"
        data = await asyncio.to_thread(self._request, self._url(prefix=key, download="true"), "GET", headers)
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._request, self._url(prefix=key), "HEAD") is not None

    async def set(self, key: str, value: Buffer) -> None:
        raise DandiIcechunkError("the archive's files are read-only")

    async def delete(self, key: str) -> None:
        raise DandiIcechunkError("the archive's files are read-only")

    async def list(self) -> AsyncIterator[str]:
        async for key in self.list_prefix(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        url: str | None = self._url(prefix=prefix)
        while url:
            body = await asyncio.to_thread(self._request, url)
            page: dict[str, Any] = json.loads(body) if body else {"results": [], "next": None}
            for entry in page["results"]:
                if entry["Key"].startswith(prefix):  # the archive's prefix is a plain string prefix
                    yield entry["Key"]
            url = page["next"]

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        base = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        seen: set[str] = set()
        async for key in self.list_prefix(base):
            child = key[len(base):].split("/", 1)[0]
            if child not in seen:
                seen.add(child)
                yield child

"""A plain-Zarr HTTP view of immutable snapshots, for tools that do not speak Icechunk.

``GET /<zarr_id>/<snapshot_id or tag>/<key>`` returns the file ``key`` exactly as it was
uploaded (Zarr v2 stays v2). Tags containing ``/`` (``dandiset/000123/0.260101.1200``) are
written as they are. A path ending in ``/`` (or naming a directory) lists its children as HTML
links, the listing fsspec's HTTP filesystem reads. Responses carry the file's MD5 as ETag and
are cacheable forever (a snapshot never changes); single byte ranges are served with 206.
Only GET, HEAD and OPTIONS are allowed; every response carries CORS headers (any origin, ETag,
Content-Range and Content-Length exposed), so browser viewers (Neuroglancer, vizarr) can read it.
On S3, a repository the bucket lets anyone read is read as anyone reads it (Icechunk's HTTP
storage, unsigned), so the view never shows more than the bucket policy shows anyone (objects
tagged ``embargoed=true`` stay hidden), whatever its own credentials may read; the embargo check
on the repository's prefix comes on top.

    dandi-icechunk serve --port 8000
    zarr.open_group("http://127.0.0.1:8000/<zarr_id>/<snapshot_id>/", mode="r")
"""

from __future__ import annotations

import asyncio
import html
import re
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..errors import DandiIcechunkError, RepositoryNotFoundError
from ..hierarchy import is_document
from ..location import StorageLocation
from ..session import ZarrRepository
from ..snapshot_files import READ_CHUNK_REFS, SnapshotFiles, byte_range

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SNAPSHOT_ID = re.compile(r"[0-9A-Z]{20}")
_CACHE_SIZE = 8  # snapshots kept open; each holds its index root and at most 16 shards
_IMMUTABLE = "public, max-age=31536000, immutable"
_READS = ("GET", "HEAD")
_METHODS = "GET, HEAD, OPTIONS"
# a reader's own headers, and those the Fetch standard lets any page send to any origin
_REQUEST_HEADERS = ("Range", "If-None-Match", "Accept", "Accept-Language", "Content-Language", "Content-Type")
_CORS = [(b"access-control-allow-origin", b"*"),
         (b"access-control-expose-headers", b"ETag, Content-Range, Content-Length, Accept-Ranges")]


class _Snapshots:
    """A small LRU of opened snapshots."""

    def __init__(self, location: StorageLocation) -> None:
        self.location = location
        self._cache: OrderedDict[tuple[str, str], SnapshotFiles] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, zarr_id: str, ref: str) -> SnapshotFiles | None:
        with self._lock:
            if (zarr_id, ref) in self._cache:
                self._cache.move_to_end((zarr_id, ref))
                return self._cache[(zarr_id, ref)]
        return None

    def get(self, zarr_id: str, ref: str) -> SnapshotFiles:
        if (found := self.cached(zarr_id, ref)) is not None:
            return found
        repo = ZarrRepository.open_for_reading(self.location, zarr_id)
        if repo.embargoed:
            # The view is anonymous: an embargoed Zarr is answered exactly as a missing one.
            raise RepositoryNotFoundError(f"no public Zarr {zarr_id} here")
        sid = repo.resolve(snapshot_id=ref) if _SNAPSHOT_ID.fullmatch(ref) else repo.resolve(tag=ref)
        snapshot = SnapshotFiles.open(repo, sid, chunk_refs=READ_CHUNK_REFS)
        with self._lock:  # loading above is not serialised; only the LRU's bookkeeping is
            self._cache[(zarr_id, ref)] = snapshot
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return snapshot


def _split(path: str) -> tuple[str, str, str]:
    """``zarr_id/ref/key`` -> (zarr_id, ref, key); a ``dandiset/<id>/<version>`` tag is one ref."""
    parts = path.split("/")
    if len(parts) < 2:
        raise DandiIcechunkError("give /<zarr_id>/<snapshot_id or tag>/<key>")
    take = 4 if parts[1] == "dandiset" else 2
    return parts[0], "/".join(parts[1:take]), "/".join(parts[take:])


def create_app(location: StorageLocation) -> ASGIApp:
    """The ASGI application serving the snapshots of the repositories at ``location``.

    A bare ASGI callable: no framework between the server and the lookup, since a viewer's
    every chunk is one request (``docs/reading.md``, the view's speed)."""
    snapshots = _Snapshots(location)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            status, headers, body = await _answer(snapshots, scope)
            await send({"type": "http.response.start", "status": status, "headers": headers + _CORS})
            await send({"type": "http.response.body", "body": body})

    return app


_Reply = tuple[int, list[tuple[bytes, bytes]], bytes]


def _reply(status: int, body: bytes | str = b"", headers: dict[str, str] | None = None,
           length: int | None = None) -> _Reply:
    """A response; text bodies are plain text, ``length`` is a HEAD answer's Content-Length."""
    fields = dict(headers or {})
    if isinstance(body, str):
        body = body.encode()
        fields.setdefault("Content-Type", "text/plain; charset=utf-8")
    if status not in (204, 304):  # these have no body, and say nothing of its length
        fields["Content-Length"] = str(len(body) if length is None else length)
    return status, [(k.lower().encode(), v.encode()) for k, v in fields.items()], body


async def _answer(snapshots: _Snapshots, scope: Scope) -> _Reply:
    method = scope["method"]
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    if method == "OPTIONS":
        return _preflight(headers)
    if method not in _READS:
        return _reply(405, "read-only: only GET and HEAD", {"Allow": _METHODS})
    try:
        zarr_id, ref, key = _split(scope["path"].lstrip("/"))
        # storage is read off the event loop; what is in memory is answered in place
        snapshot = snapshots.cached(zarr_id, ref)
        if snapshot is None:
            snapshot = await asyncio.to_thread(snapshots.get, zarr_id, ref)
    except DandiIcechunkError as exc:
        return _reply(404, str(exc))
    digest = None
    if key and not key.endswith("/"):
        digest = snapshot.digest(key) if snapshot.index.in_memory(key) else await asyncio.to_thread(snapshot.digest, key)
    if digest is None and await asyncio.to_thread(snapshot.is_directory, key):
        path = scope.get("root_path", "") + scope["path"]
        return await asyncio.to_thread(_listing, snapshot, key.rstrip("/"), path)
    if digest is None:
        return _reply(404, f"{key} is not in snapshot {snapshot.snapshot_id}")
    etag = f'"{digest.md5}"'
    fields = {"ETag": etag, "Cache-Control": _IMMUTABLE, "Accept-Ranges": "bytes"}
    if headers.get("if-none-match") == etag:
        return _reply(304, headers=fields)
    fields["Content-Type"] = "application/json" if is_document(key) else "application/octet-stream"
    span = byte_range(headers.get("range"), digest.size)
    if isinstance(span, str):  # "invalid"
        return _reply(416, headers={"Content-Range": f"bytes */{digest.size}"})
    if method == "HEAD":
        return _reply(200, headers=fields, length=digest.size)
    data = await snapshot.read(key)
    if data is None:
        return _reply(500, f"{key} is missing from the repository; run dandi-icechunk audit")
    if span is None:
        return _reply(200, data, fields)
    start, end = span
    fields["Content-Range"] = f"bytes {start}-{end}/{digest.size}"
    return _reply(206, data[start : end + 1], fields)


def _preflight(headers: dict[str, str]) -> _Reply:
    """A CORS preflight (any origin may GET and HEAD, sending Range, If-None-Match and the
    safelisted headers); a plain OPTIONS is told what is allowed."""
    method = headers.get("access-control-request-method")
    if "origin" not in headers or method is None:
        return _reply(204, headers={"Allow": _METHODS})
    asked = {h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",") if h.strip()}
    if method not in _READS or not asked <= {h.lower() for h in _REQUEST_HEADERS}:
        return _reply(400, f"CORS: only GET and HEAD, with the headers {', '.join(_REQUEST_HEADERS)}")
    return _reply(200, headers={
        "Access-Control-Allow-Methods": _METHODS, "Access-Control-Allow-Headers": ", ".join(_REQUEST_HEADERS),
        "Access-Control-Max-Age": "86400",
    })


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: each event is acknowledged."""
    while True:
        event = (await receive())["type"]
        await send({"type": f"{event}.complete"})
        if event == "lifespan.shutdown":
            return


def app_from_environment() -> ASGIApp:
    """The application for the location ``$DANDI_ICECHUNK_STORAGE`` names, read as
    :meth:`~dandi_icechunk.location.StorageLocation.for_reading` reads: the factory each process
    of ``dandi-icechunk serve --workers N`` calls, or any ASGI server's.

        uvicorn --factory dandi_icechunk.read.serve:app_from_environment --workers 4
    """
    return create_app(StorageLocation.resolve().for_reading())


def _listing(snapshot: SnapshotFiles, directory: str, path: str) -> _Reply:
    prefix = f"{directory}/" if directory else ""
    children = sorted(
        {k[len(prefix):].split("/")[0] + ("/" if "/" in k[len(prefix):] else "") for k in snapshot.list(prefix=prefix)}
    )
    base = path if path.endswith("/") else path + "/"
    links = "\n".join(f'<a href="{html.escape(base + c)}">{html.escape(c)}</a><br>' for c in children)
    page = f"<html><body>\n{links}\n</body></html>"
    return _reply(200, page.encode(), {"Content-Type": "text/html; charset=utf-8", "Cache-Control": _IMMUTABLE})

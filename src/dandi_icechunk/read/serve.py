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

import html
import re
import threading
from collections import OrderedDict

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..errors import DandiIcechunkError, RepositoryNotFoundError
from ..hierarchy import is_document
from ..location import StorageLocation
from ..session import ZarrRepository
from ..snapshot_files import READ_CHUNK_REFS, SnapshotFiles, byte_range

_SNAPSHOT_ID = re.compile(r"[0-9A-Z]{20}")
_CACHE_SIZE = 8  # snapshots kept open; each holds its index root and at most 16 shards
_IMMUTABLE = "public, max-age=31536000, immutable"
_EXPOSED = ("ETag", "Content-Range", "Content-Length", "Accept-Ranges")


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


def create_app(location: StorageLocation) -> Starlette:
    """The ASGI application serving the snapshots of the repositories at ``location``."""
    snapshots = _Snapshots(location)

    async def serve(request: Request) -> Response:
        if request.method == "OPTIONS":  # a preflight is answered by the CORS middleware
            return Response(status_code=204, headers={"Allow": "GET, HEAD, OPTIONS"})
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("read-only: only GET and HEAD", 405, headers={"Allow": "GET, HEAD, OPTIONS"})
        try:
            zarr_id, ref, key = _split(request.path_params["path"])
            # storage is read off the event loop; what is in memory is answered in place
            snapshot = snapshots.cached(zarr_id, ref)
            if snapshot is None:
                snapshot = await run_in_threadpool(snapshots.get, zarr_id, ref)
        except DandiIcechunkError as exc:
            return PlainTextResponse(str(exc), 404)
        digest = None
        if key and not key.endswith("/"):
            in_memory = snapshot.index.in_memory(key)
            digest = snapshot.digest(key) if in_memory else await run_in_threadpool(snapshot.digest, key)
        if digest is None and await run_in_threadpool(snapshot.is_directory, key):
            return await run_in_threadpool(_listing, snapshot, key.rstrip("/"), request)
        if digest is None:
            return PlainTextResponse(f"{key} is not in snapshot {snapshot.snapshot_id}", 404)
        etag = f'"{digest.md5}"'
        headers = {"ETag": etag, "Cache-Control": _IMMUTABLE, "Accept-Ranges": "bytes"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        media = "application/json" if is_document(key) else "application/octet-stream"
        span = byte_range(request.headers.get("range"), digest.size)
        if isinstance(span, str):  # "invalid"
            return Response(status_code=416, headers={"Content-Range": f"bytes */{digest.size}"})
        if request.method == "HEAD":
            return Response(status_code=200, media_type=media, headers={**headers, "Content-Length": str(digest.size)})
        data = await snapshot.read(key)
        if data is None:
            return PlainTextResponse(f"{key} is missing from the repository; run dandi-icechunk audit", 500)
        if span is None:
            return Response(data, media_type=media, headers=headers)
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{digest.size}"
        return Response(data[start : end + 1], status_code=206, media_type=media, headers=headers)

    cors = Middleware(
        CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "HEAD", "OPTIONS"],
        allow_headers=["Range", "If-None-Match"], expose_headers=list(_EXPOSED), max_age=86400,
    )
    methods = ["GET", "HEAD", "OPTIONS", "PUT", "POST", "DELETE", "PATCH"]
    return Starlette(routes=[Route("/{path:path}", serve, methods=methods)], middleware=[cors])


def app_from_environment() -> Starlette:
    """The application for the location ``$DANDI_ICECHUNK_STORAGE`` names, read as
    :meth:`~dandi_icechunk.location.StorageLocation.for_reading` reads: the factory each process
    of ``dandi-icechunk serve --workers N`` calls, or any ASGI server's.

        uvicorn --factory dandi_icechunk.read.serve:app_from_environment --workers 4
    """
    return create_app(StorageLocation.resolve().for_reading())


def _listing(snapshot: SnapshotFiles, directory: str, request: Request) -> Response:
    prefix = f"{directory}/" if directory else ""
    children = sorted(
        {k[len(prefix):].split("/")[0] + ("/" if "/" in k[len(prefix):] else "") for k in snapshot.list(prefix=prefix)}
    )
    base = request.url.path if request.url.path.endswith("/") else request.url.path + "/"
    links = "\n".join(f'<a href="{html.escape(base + c)}">{html.escape(c)}</a><br>' for c in children)
    return HTMLResponse(f"<html><body>\n{links}\n</body></html>", headers={"Cache-Control": _IMMUTABLE})

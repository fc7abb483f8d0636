"""A local stand-in for Earthmover's Arraylake service, for tests only.

**This is a test double.** Earthmover's hosted service cannot be reached from here, so this
serves just the HTTP calls the real ``arraylake`` client (1.7) makes to find, register and open
Icechunk repositories: the signed-in user, the org's bucket configs, repo records (create,
import, get, list, delete) and the one-call ``open`` answer with the bucket and its
credentials. Its answers are built from ``arraylake.types``, so the client parses them as it
parses the service's. The repositories themselves are real Icechunk repositories in the S3
bucket the stand-in's bucket config names (the tests' SeaweedFS): every data path is real.

What it does not model: RBAC (any holder of the token may do anything in the org), the
schedule of Arraylake's GC (:meth:`ArraylakeStandIn.run_scheduled_gc` runs it once, as this
stand-in reads the repo's optimization config), the catalog and web app, and repo prefixes
relative to a bucket prefix (a repo's prefix is its key prefix in the bucket, as the client
uses it).

>>> with ArraylakeStandIn(s3_server) as service:          # doctest: +SKIP
...     client = arraylake.Client(service_uri=service.url, token=service.token)
...     repo = client.create_repo(f"{service.org}/demo", bucket_config_nickname=service.nickname)
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import icechunk
import uvicorn
from arraylake.types import (
    Author,
    AWSCustomerManagedRoleAuth,
    BucketResponse,
    GCDeleteOlderThan,
    HmacAuth,
    OpenRepoResponse,
    PaginatedResponse,
    Repo,
    RepoCreateBody,
    RepoImportBody,
    RepoModifyRequest,
    RepoOperationMode,
    RepoOperationStatusResponse,
    S3Credentials,
    UserInfo,
    VirtualChunkCredentials,
)
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import S3Server

Auth = Literal["hmac", "delegated"]


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(by_alias=True), status_code=status, media_type="application/json")


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class ArraylakeStandIn:
    """The stand-in service on 127.0.0.1 (a free port), in a thread; a context manager.

    ``auth`` chooses the bucket config: ``"hmac"`` (the bucket's keys are in the config, as for
    an S3-compatible bucket) or ``"delegated"`` (a customer-managed role: credentials are vended
    per repo and per bucket, expiring after ``credential_seconds``). ``traffic`` records every
    answered request as ``(unix time, method, path, response body bytes)`` (``calls``: as
    ``(method, path)``), and ``vended`` counts the delegated credentials handed out.
    """

    def __init__(
        self,
        s3: S3Server,
        *,
        org: str = "dandi",
        nickname: str = "dandi-bucket",
        prefix: str = "",
        auth: Auth = "hmac",
        credential_seconds: int = 3600,
    ) -> None:
        self.s3 = s3
        self.org = org
        self.nickname = nickname
        self.token = f"ema_{uuid.uuid4().hex}"
        self.credential_seconds = credential_seconds
        self.traffic: list[tuple[float, str, str, int]] = []
        self.vended = 0
        self.user = UserInfo(id=uuid.uuid4(), first_name="Stand", family_name="In", email="standin@example.org")
        now = datetime.now(UTC)
        auth_config: Any = (
            HmacAuth(method="hmac", access_key_id=s3.access_key_id, secret_access_key=s3.secret_access_key)
            if auth == "hmac"
            else AWSCustomerManagedRoleAuth(
                method="aws_customer_managed_role", external_customer_id="000000000000",
                external_role_name="dandi-arraylake",
            )
        )
        self.bucket = BucketResponse(
            id=uuid.uuid4(), nickname=nickname, platform="s3" if auth == "delegated" else "s3-compatible",
            name=s3.bucket, prefix=prefix, created=now, updated=now, is_default=True,
            extra_config={"endpoint_url": s3.endpoint_url, "region_name": "us-east-1", "use_ssl": False,
                          "force_path_style": True},
            auth_config=auth_config,
        )
        self.repos: dict[str, Repo] = {}
        self.containers: dict[str, dict[str, str]] = {}  # repo -> authorized container -> bucket
        self._lock = threading.Lock()
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- the HTTP routes -------------------------------------------------------------------

    def _app(self) -> Starlette:
        routes = [
            Route("/user", self._user),
            Route("/user/diagnostics", self._diagnostics, methods=["POST"]),
            Route("/orgs/{org}/buckets", self._buckets),
            Route("/orgs/{org}/buckets/{bucket_id}", self._bucket),
            Route("/orgs/{org}/buckets/{bucket_id}/credentials", self._bucket_credentials),
            Route("/orgs/{org}/repos/paginated", self._list_repos),
            Route("/orgs/{org}/repos", self._create_repo, methods=["POST"]),
            Route("/orgs/{org}/repos/import", self._import_repo, methods=["POST"]),
            Route("/orgs/{org}/{name}", self._change_repo, methods=["DELETE", "PATCH"]),
            Route("/repos/{org}/{name}", self._get_repo),
            Route("/repos/{org}/{name}/open", self._open_repo),
            Route("/repos/{org}/{name}/bucket-credentials", self._repo_credentials),
            Route("/repos/icechunk/{org}/{name}/virtual-chunk-containers", self._containers, methods=["GET", "PATCH"]),
        ]
        for route in routes:
            route.app = self._guarded(route.endpoint)
        return Starlette(routes=routes)

    def _guarded(self, endpoint: Any) -> Any:
        """``endpoint`` behind the token check (and the org check), recording each call."""

        async def app(scope: Any, receive: Any, send: Any) -> None:
            request = Request(scope, receive)
            if request.headers.get("authorization") != f"Bearer {self.token}":
                response: Response = _error(401, "Not authenticated")
            elif request.path_params.get("org", self.org) != self.org:
                response = _error(404, "org not found")
            else:
                response = await endpoint(request)
            with self._lock:
                self.traffic.append((time.time(), request.method, request.url.path, len(response.body)))
            await response(scope, receive, send)

        return app

    @property
    def calls(self) -> list[tuple[str, str]]:
        """Every answered request as ``(method, path)``, in order."""
        with self._lock:
            return [(method, path) for _, method, path, _ in self.traffic]

    async def _user(self, request: Request) -> Response:
        return _json(self.user)

    async def _diagnostics(self, request: Request) -> Response:
        return JSONResponse({})

    async def _buckets(self, request: Request) -> Response:
        return Response(f"[{self.bucket.model_dump_json()}]", media_type="application/json")

    async def _bucket(self, request: Request) -> Response:
        if request.path_params["bucket_id"] != str(self.bucket.id):
            return _error(404, "bucket not found")
        return _json(self.bucket)

    async def _bucket_credentials(self, request: Request) -> Response:
        if request.path_params["bucket_id"] != str(self.bucket.id):
            return _error(404, "bucket not found")
        return self._credentials()

    async def _list_repos(self, request: Request) -> Response:
        page, size = int(request.query_params.get("page", 1)), int(request.query_params.get("size", 50))
        with self._lock:
            items = sorted(self.repos.values(), key=lambda r: r.name)
        pages = max(1, -(-len(items) // size))
        chunk = items[(page - 1) * size: page * size]
        return _json(PaginatedResponse[Repo](items=chunk, total=len(items), page=page, size=size, pages=pages))

    async def _create_repo(self, request: Request) -> Response:
        body = RepoCreateBody.model_validate_json(await request.body())
        return self._register(body.name, body.prefix or f"{uuid.uuid4().hex}-{body.name}", body.bucket_nickname)

    async def _import_repo(self, request: Request) -> Response:
        body = RepoImportBody.model_validate_json(await request.body())
        return self._register(body.name, body.prefix, body.bucket_nickname)

    def _register(self, name: str, prefix: str, nickname: str | None) -> Response:
        if nickname not in (None, self.nickname):
            return _error(404, f"bucket config {nickname!r} not found")
        now = datetime.now(UTC)
        repo = Repo(
            _id=uuid.uuid4().bytes[:12], org=self.org, name=name, created=now, updated=now,
            created_by=self.user.id, bucket=self.bucket, prefix=prefix, status=self._status(),
        )
        with self._lock:
            if name in self.repos:
                return _error(409, f"repo {self.org}/{name} already exists")
            self.repos[name] = repo
        return _json(repo, 201)

    def register_only(self, name: str, prefix: str) -> None:
        """Record the repo ``name`` at ``prefix`` with no repository made there, as a client
        that crashed between registering and creating leaves it."""
        assert self._register(name, prefix, None).status_code == 201

    async def _change_repo(self, request: Request) -> Response:
        name = request.path_params["name"]
        with self._lock:
            if name not in self.repos:
                return _error(404, "repo not found")
            if request.method == "DELETE":
                del self.repos[name]
                self.containers.pop(name, None)
                return Response(status_code=204)
            change = RepoModifyRequest.model_validate_json(await request.body())
            if change.optimization_config is not None:
                self.repos[name] = self.repos[name].model_copy(update={"optimization_config": change.optimization_config})
        return Response(status_code=200)

    def run_scheduled_gc(self, name: str, now: datetime | None = None) -> icechunk.GCSummary:
        """Run the expiration and GC the repo's optimization config schedules, once, as this
        stand-in reads Arraylake's settings: refs and ``extra_gc_roots`` (snapshot IDs) are
        roots; versions older than ``expire_versions_older_than`` expire; dangling objects
        older than ``dangling_chunks`` are deleted."""
        repo = self.repos[name]
        gc, expiration = repo.optimization_config.gc_config, repo.optimization_config.expiration_config
        assert gc is not None and gc.enabled and expiration is not None and expiration.enabled
        assert isinstance(gc.dangling_chunks, GCDeleteOlderThan)
        now = now or datetime.now(UTC)
        ic = icechunk.Repository.open(self._storage(repo.prefix))
        roots = [f"gc-root/{sid}" for sid in sorted(gc.extra_gc_roots)]
        for branch, sid in zip(roots, sorted(gc.extra_gc_roots), strict=True):
            ic.create_branch(branch, sid)
        try:
            ic.expire_snapshots(older_than=now - expiration.expire_versions_older_than)
            return ic.garbage_collect(now - gc.dangling_chunks.date)
        finally:
            for branch in roots:
                ic.delete_branch(branch)

    async def _get_repo(self, request: Request) -> Response:
        repo = self.repos.get(request.path_params["name"])
        return _json(repo) if repo else _error(404, "repo not found")

    async def _open_repo(self, request: Request) -> Response:
        repo = self.repos.get(request.path_params["name"])
        if repo is None:
            return _error(404, "repo not found")
        vccs = {  # every container a repo writer authorized, in this stand-in's one bucket
            prefix: VirtualChunkCredentials.from_bucket(self.org, self.bucket, self._vend())
            for prefix in self.containers.get(repo.name, {})
        }
        return _json(OpenRepoResponse(
            repo_bucket=self.bucket, repo_prefix=repo.prefix,
            repo_credentials=self._vend(), virtual_chunk_credentials=vccs,
            author=self.user.as_author() if self.user else Author(email="standin@example.org"),
            principal_id=str(self.user.id), status=self._status(),
        ))

    async def _containers(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.repos:
            return _error(404, "repo not found")
        with self._lock:
            containers = self.containers.setdefault(name, {})
            if request.method == "PATCH":
                change = json.loads(await request.body())
                if set(change.get("add", {}).values()) - {self.nickname}:
                    return _error(404, "bucket config not found")
                containers.update(change.get("add", {}))
                for prefix in change.get("remove", []):
                    containers.pop(prefix, None)
            return JSONResponse(dict(containers))

    async def _repo_credentials(self, request: Request) -> Response:
        if request.path_params["name"] not in self.repos:
            return _error(404, "repo not found")
        return self._credentials()

    # -- helpers ---------------------------------------------------------------------------

    def _credentials(self) -> Response:
        if isinstance(self.bucket.auth_config, HmacAuth):
            return _error(400, "this bucket uses HMAC keys; no credentials are vended")
        return _json(self._vend())

    def _vend(self) -> S3Credentials:
        """The HMAC keys (which do not expire), or fresh delegated credentials."""
        hmac = isinstance(self.bucket.auth_config, HmacAuth)
        with self._lock:
            self.vended += not hmac
        expiration = None if hmac else datetime.now(UTC) + timedelta(seconds=self.credential_seconds)
        return S3Credentials(
            aws_access_key_id=self.s3.access_key_id, aws_secret_access_key=self.s3.secret_access_key,
            aws_session_token=None, expiration=expiration,
        )

    def _storage(self, prefix: str) -> icechunk.Storage:
        return icechunk.s3_storage(
            bucket=self.s3.bucket, prefix=prefix, endpoint_url=self.s3.endpoint_url, region="us-east-1",
            allow_http=True, force_path_style=True, access_key_id=self.s3.access_key_id,
            secret_access_key=self.s3.secret_access_key,
        )

    @staticmethod
    def _status() -> RepoOperationStatusResponse:
        return RepoOperationStatusResponse(mode=RepoOperationMode.ONLINE, initiated_by={})

    # -- running ---------------------------------------------------------------------------

    def __enter__(self) -> ArraylakeStandIn:
        config = uvicorn.Config(self._app(), host="127.0.0.1", port=0, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the Arraylake stand-in did not start")
            time.sleep(0.05)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)

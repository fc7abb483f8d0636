"""dandi-cli's own ``dandi upload``, with each Zarr asset uploaded as one Icechunk commit.

dandi-cli maps Zarr directories to :class:`dandi.files.ZarrAsset` through a class table
(``DandiFileFactory.CLASSES``) and has no plugin mechanism; :func:`icechunk_zarr_assets` swaps
in :class:`IcechunkZarrAsset` for the duration of an upload, so that everything else (NWB
files, ``-i``, API keys, ``--existing``, ``--validation``, ``-J``, pyout progress) is dandi-cli's
own. ``dandi-icechunk dandi-upload ARGS`` runs ``dandi upload ARGS`` this way.

For each Zarr asset: the archive is asked to begin an upload (it says where, on which branch,
and vends credentials for that repository only), the changed chunks are committed, the archive
finalizes, and its checksum must equal the local one before the asset is created or updated.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import ArchiveRequestError, MissingExtraError

try:
    import requests
    from dandi.dandiapi import RemoteAsset, RemoteDandiset, RemoteZarrAsset, set_asset_schema_key
    from dandi.files import ZarrAsset
    from dandi.files._private import DandiFileFactory, DandiFileType
except ImportError:  # pragma: no cover - the "upload" extra
    raise MissingExtraError("uploading with dandi-cli", "upload") from None

from .archive import archive_zarr_state, begin_archive_upload, finalize_archive_upload
from .commit import UploadResult, upload_zarr

_FINALIZE_POLL_S = 0.5
_FINALIZE_TIMEOUT_S = 3600


class _QueueProgress:
    """Upload progress as dandi-cli's status dicts, handed from the upload thread."""

    def __init__(self, statuses: queue.Queue[dict[str, Any]]) -> None:
        self.statuses, self.total, self.done = statuses, 0, 0

    def start(self, label: str, files: int, nbytes: int) -> None:
        self.total, self.done = nbytes, 0
        self.statuses.put({"status": "initiating upload", "size": nbytes, "message": label})

    def advance(self, files: int, nbytes: int) -> None:
        self.done += nbytes
        if self.total:
            self.statuses.put({"status": "uploading", "progress": 100 * self.done / self.total,
                               "current": self.done})

    def finish(self) -> None:
        pass


def _api_key(dandiset: RemoteDandiset) -> str:
    header = dandiset.client.session.headers.get("Authorization", "")
    if not header.startswith("token "):
        raise ArchiveRequestError("an Icechunk upload needs a DANDI API key: set DANDI_API_KEY")
    return str(header.removeprefix("token "))


class IcechunkZarrAsset(ZarrAsset):
    """A local Zarr that dandi-cli uploads as one Icechunk commit through the archive."""

    def iter_upload(
        self,
        dandiset: RemoteDandiset,
        metadata: dict[str, Any],
        jobs: int | None = None,
        replacing: RemoteAsset | None = None,
        zarr_mode: str = "full",
    ) -> Iterator[dict[str, Any]]:
        if str(zarr_mode) not in ("full", "ZarrMode.FULL"):
            raise ArchiveRequestError(
                f"{self.path}: --zarr-mode patch is not supported for Icechunk uploads yet (an "
                "upload commits the local Zarr as it is); run without it"
            )
        asset_path = metadata.setdefault("path", self.path)
        set_asset_schema_key(metadata)
        client, api_key = dandiset.client, _api_key(dandiset)
        yield {"status": "producing asset"}
        zarr_id = replacing.zarr if isinstance(replacing, RemoteZarrAsset) else self._new_zarr(dandiset, asset_path)
        upload = begin_archive_upload(client.api_url, zarr_id, api_key=api_key)
        result: UploadResult | None = None
        for status in self._commit(upload, zarr_id, jobs):
            if "result" in status:
                result = status["result"]
            else:
                yield status
        assert result is not None
        yield {"status": "server calculating checksum"}
        finalize_archive_upload(client.api_url, zarr_id, api_key=api_key)
        checksum = self._finalized(client.api_url, zarr_id, api_key, upload.dandiset)
        if checksum != result.zarr_checksum:
            raise ArchiveRequestError(
                f"{asset_path}: the archive computed checksum {checksum} but the local "
                f"Zarr has {result.zarr_checksum}; upload again"
            )
        body = {"metadata": metadata, "zarr_id": zarr_id}
        if replacing is not None:
            data = client.put(replacing.api_path, json=body)
        else:
            data = client.post(f"{dandiset.version_api_path}assets/", json=body)
        asset = RemoteAsset.from_data(dandiset, data)
        if result.snapshot_id is None and replacing is not None:
            yield {"status": "skipped", "message": "identical", "asset": asset}
        else:
            yield {"status": "done", "asset": asset}

    def _new_zarr(self, dandiset: RemoteDandiset, name: str) -> str:
        try:
            return str(dandiset.client.post("/zarr/", json={"name": name, "dandiset": dandiset.identifier})["zarr_id"])
        except requests.HTTPError as exc:
            if exc.response is None or "Zarr already exists" not in exc.response.text:
                raise
            # a Zarr made by an earlier, interrupted run and never attached to an asset
            (existing,) = dandiset.client.paginate("/zarr/", params={"dandiset": dandiset.identifier, "name": name})
            return str(existing["zarr_id"])

    def _commit(self, upload: Any, zarr_id: str, jobs: int | None) -> Iterator[dict[str, Any]]:
        """Run the upload in a thread, relaying its progress as status dicts; the last item
        carries the result under ``"result"``."""
        statuses: queue.Queue[dict[str, Any]] = queue.Queue()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = upload_zarr(
                    self.filepath, upload.location, zarr_id, branch=upload.branch,
                    embargoed=upload.embargoed, dedup=False, jobs=jobs or 5,
                    progress=_QueueProgress(statuses), dandiset=upload.dandiset,
                )
            except BaseException as exc:  # handed to the generator's thread
                outcome["error"] = exc
            finally:
                statuses.put({})

        worker = threading.Thread(target=run, name=f"icechunk-upload-{zarr_id[:8]}", daemon=True)
        worker.start()
        while status := statuses.get():
            yield status
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        yield {"result": outcome["result"]}

    @staticmethod
    def _finalized(api_url: str, zarr_id: str, api_key: str, dandiset_id: str) -> str | None:
        """The checksum the archive recorded for the Dandiset's draft, once finalized."""
        deadline = time.monotonic() + _FINALIZE_TIMEOUT_S
        while time.monotonic() < deadline:
            state = archive_zarr_state(api_url, zarr_id, api_key=api_key)
            if state["status"] == "Complete":
                return next((d["checksum"] for d in state["drafts"] if d["dandiset"] == dandiset_id), None)
            if state["status"] == "Pending" and state["finalize_error"]:
                raise ArchiveRequestError(f"the archive refused to finalize Zarr {zarr_id}: {state['finalize_error']}")
            time.sleep(_FINALIZE_POLL_S)
        raise ArchiveRequestError(f"the archive did not finalize Zarr {zarr_id} within an hour; run again")


@contextmanager
def icechunk_zarr_assets() -> Iterator[None]:
    """While inside, dandi-cli treats every local Zarr as an :class:`IcechunkZarrAsset`."""
    original = DandiFileFactory.CLASSES
    DandiFileFactory.CLASSES = {**original, DandiFileType.ZARR: IcechunkZarrAsset}
    try:
        yield
    finally:
        DandiFileFactory.CLASSES = original

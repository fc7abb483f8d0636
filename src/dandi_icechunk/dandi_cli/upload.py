"""dandi-cli's Zarr assets, uploaded as one Icechunk commit each through the archive.

For each Zarr asset: the archive is asked to begin an upload (it says where, on which branch,
and vends credentials for that repository only), the changed chunks are committed (with
``--zarr-mode patch``, files missing locally are kept), the archive finalizes, and its checksum
must equal the local one before the asset is created or updated. An archive that does not run
the dandi-icechunk adapter gets dandi-cli's own upload. Local digests are cached as dandi-cli
caches its own (``DANDI_CACHE=ignore`` turns the cache off), so an unchanged Zarr is not hashed
again.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ArchiveRequestError, PlainUploadOnlyError, MissingExtraError

try:
    from dandi.dandiapi import RemoteAsset, RemoteDandiset, RemoteZarrAsset, set_asset_schema_key
    from dandi.files import ZarrAsset
    from dandi.files.bids import ZarrBIDSAsset
except ImportError:  # pragma: no cover - the "upload" extra
    raise MissingExtraError("uploading with dandi-cli", "upload") from None

from ..upload.archive import archive_zarr_state, begin_archive_upload, finalize_archive_upload
from ..upload.commit import UploadResult, upload_zarr
from ..upload.digest_cache import DigestCache

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


class IcechunkZarrUpload:
    """What makes a dandi-cli Zarr asset upload as one Icechunk commit (mixed into dandi-cli's
    own Zarr asset classes, plain and BIDS)."""

    filepath: Path
    path: str

    def iter_upload(
        self,
        dandiset: RemoteDandiset,
        metadata: dict[str, Any],
        jobs: int | None = None,
        replacing: RemoteAsset | None = None,
        zarr_mode: str = "full",
    ) -> Iterator[dict[str, Any]]:
        asset_path = metadata.setdefault("path", self.path)
        set_asset_schema_key(metadata)
        client, api_key = dandiset.client, _api_key(dandiset)
        yield {"status": "producing asset"}
        zarr_id = replacing.zarr if isinstance(replacing, RemoteZarrAsset) else self._new_zarr(dandiset, asset_path)
        try:
            upload = begin_archive_upload(client.api_url, zarr_id, api_key=api_key)
        except PlainUploadOnlyError:
            yield from super().iter_upload(dandiset, metadata, jobs, replacing, zarr_mode)  # type: ignore[misc]
            return
        result: UploadResult | None = None
        for status in self._commit(upload, zarr_id, jobs, delete_missing=str(zarr_mode) != "patch"):
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
            # The draft asset now at this path: the archive gives a published one a new draft asset
            # when its Zarr changes.
            current = dandiset.get_asset_by_path(asset_path)
            data = client.put(current.api_path, json=body)
        else:
            data = client.post(f"{dandiset.version_api_path}assets/", json=body)
        asset = RemoteAsset.from_data(dandiset, data)
        if result.snapshot_id is None and replacing is not None:
            yield {"status": "skipped", "message": "identical", "asset": asset}
        else:
            yield {"status": "done", "asset": asset}

    def _new_zarr(self, dandiset: RemoteDandiset, name: str) -> str:
        """The Zarr of this path: one an earlier, interrupted run made (and never attached to an
        asset), or a new one."""
        client, params = dandiset.client, {"dandiset": dandiset.identifier, "name": name}
        for existing in client.paginate("/zarr/", params=params):
            return str(existing["zarr_id"])
        return str(client.post("/zarr/", json=params)["zarr_id"])

    def _commit(self, upload: Any, zarr_id: str, jobs: int | None, *, delete_missing: bool) -> Iterator[dict[str, Any]]:
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
                    delete_missing=delete_missing,
                    digest_cache=None if os.environ.get("DANDI_CACHE") == "ignore" else DigestCache.default(),
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


class IcechunkZarrAsset(IcechunkZarrUpload, ZarrAsset):
    """A local Zarr that dandi-cli uploads as one Icechunk commit through the archive."""


class IcechunkZarrBIDSAsset(IcechunkZarrUpload, ZarrBIDSAsset):
    """A Zarr inside a BIDS dataset, uploaded as one Icechunk commit through the archive."""

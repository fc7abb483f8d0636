"""Export a snapshot to a directory as the files that were uploaded (Zarr v2 stays v2)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import DandiIcechunkError, IntegrityError
from ..objects import DEFAULT_JOBS
from ..progress import NoProgress, Progress
from ..records import JsonRecord
from ..session import ZarrRepository
from ..snapshot_files import read_snapshot_files


@dataclass(frozen=True)
class ExportResult(JsonRecord):
    """What an export wrote."""

    zarr_id: str
    snapshot_id: str
    destination: str
    file_count: int
    size: int
    zarr_checksum: str


def export_snapshot(
    repository: ZarrRepository,
    destination: str | Path,
    *,
    snapshot_id: str | None = None,
    tag: str | None = None,
    branch: str | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
) -> ExportResult:
    """Write one snapshot (default: tip of ``main``) to ``destination`` as the uploaded files.

    ``destination`` must not exist. Files are written to ``destination.partial`` and renamed
    at the end, so an interrupted export never leaves a half-written Zarr under its name.
    """
    dest = Path(destination)
    if dest.exists():
        raise DandiIcechunkError(f"{dest} already exists; give a new directory to export into")
    sid = repository.resolve(snapshot_id=snapshot_id, tag=tag, branch=branch)
    index = repository.index(sid)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    missing: list[str] = []

    def write(key: str, data: bytes | None) -> None:
        if data is None:
            missing.append(key)
            return
        path = partial / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    read_snapshot_files(repository, sid, index, write, jobs, progress or NoProgress())
    if missing:
        raise IntegrityError(
            f"snapshot {sid} of {repository.zarr_id} lacks {len(missing)} chunk(s) "
            f"(first: {sorted(missing)[0]}); nothing was exported. Run `dandi-icechunk verify`"
        )
    os.replace(partial, dest)
    return ExportResult(
        zarr_id=repository.zarr_id,
        snapshot_id=sid,
        destination=str(dest),
        file_count=index.file_count,
        size=index.size,
        zarr_checksum=index.zarr_checksum(),
    )

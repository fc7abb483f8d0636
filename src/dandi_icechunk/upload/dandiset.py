"""The Zarr assets of a Dandiset directory, found as ``dandi upload`` finds them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidZarrError, MissingExtraError

_ZARR_SUFFIXES = (".zarr", ".ngff")
_DANDISET_ZARR_NAMESPACE = uuid.UUID("6f1c6f7e-0c1b-4a8f-9a3e-2d8f3b1e7c55")


@dataclass(frozen=True)
class DandisetZarr:
    """A Zarr asset found in a Dandiset directory."""

    asset_path: str
    filepath: Path
    zarr_id: str


def find_dandiset_zarrs(dandiset_dir: str | Path) -> tuple[str, list[DandisetZarr]]:
    """The Dandiset ID and the Zarr assets in a Dandiset directory, found as ``dandi upload`` does.

    Without an archive to assign them, each Zarr's ``zarr_id`` is derived from the Dandiset ID
    and the asset path (UUID5), so running again maps each Zarr to the same repository.
    """
    try:
        from dandi.dandiset import Dandiset
        from dandi.files import ZarrAsset, find_dandi_files
    except ImportError:
        raise MissingExtraError("finding the Zarr assets of a Dandiset directory", "upload") from None

    root = Path(dandiset_dir)
    try:
        dandiset_id = Dandiset(root).identifier
    except Exception as exc:  # dandi raises ValueError and YAML errors for a broken dandiset.yaml
        raise InvalidZarrError(f"{root}/dandiset.yaml cannot be read as Dandiset metadata: {exc}")
    zarrs = [
        DandisetZarr(
            asset_path=f.path,
            filepath=f.filepath,
            zarr_id=str(uuid.uuid5(_DANDISET_ZARR_NAMESPACE, f"{dandiset_id}/{f.path}")),
        )
        for f in find_dandi_files(root, dandiset_path=root)
        if isinstance(f, ZarrAsset)
    ]
    if not zarrs:
        raise InvalidZarrError(
            f"the Dandiset directory {root} holds no Zarr asset (a directory ending in "
            f"{' or '.join(_ZARR_SUFFIXES)})"
        )
    return dandiset_id, sorted(zarrs, key=lambda z: z.asset_path)

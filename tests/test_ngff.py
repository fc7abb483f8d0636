"""OME-NGFF in xarray, written at test time by the ``ome-zarr`` package (0.4 on Zarr v2, 0.5 on
Zarr v3), compared with what ``ome-zarr`` itself reads from the same files (issue 14)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from click.testing import CliRunner
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_image

from dandi_icechunk import open_dataset
from dandi_icechunk.archive_hooks import publish_dandiset
from dandi_icechunk.cli import main
from dandi_icechunk.errors import NotAZarrAssetError
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.testing import draft_zarr_asset, make_zarr_v3
from dandi_icechunk.upload import upload_zarr

FORMATS = {"0.4": (FormatV04(), 2), "0.5": (FormatV05(), 3)}


def _write_ngff(path: Path, version: str) -> Path:
    fmt, zarr_format = FORMATS[version]
    data = np.random.default_rng(7).integers(0, 4000, (2, 8, 64, 64), dtype=np.uint16)
    root = zarr.group(store=parse_url(str(path), mode="w", fmt=fmt).store, zarr_format=zarr_format)
    write_image(data, root, axes="czyx", fmt=fmt, storage_options={"chunks": (1, 4, 32, 32)})
    return path


def _ome_zarr_levels(path: Path) -> list[np.ndarray]:
    [image, *_] = list(Reader(parse_url(str(path)))())
    return [np.asarray(level) for level in image.data]


def _published(location: StorageLocation, src: Path, zarr_id: str) -> dict:
    result = upload_zarr(src, location, zarr_id, dedup=False)
    asset = draft_zarr_asset(zarr_id, src.name, result.zarr_checksum, result.size)
    [record] = publish_dandiset("000123", "0.260101.1200", [asset], location=location)
    return record


@pytest.fixture(autouse=True)
def _reader_credentials(s3_location: StorageLocation, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test bucket is private: readers sign with its credentials, as an owner would."""
    assert s3_location.credentials is not None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_location.credentials.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_location.credentials.secret_access_key)


@pytest.fixture(params=list(FORMATS))
def ngff(
    request: pytest.FixtureRequest, tmp_path: Path, s3_location: StorageLocation
) -> tuple[dict, list[np.ndarray]]:
    """Published metadata of an NGFF image of this format, and its levels as ome-zarr reads them."""
    src = _write_ngff(tmp_path / f"img-{request.param}.ome.zarr", request.param)
    return _published(s3_location, src, str(uuid.uuid4())), _ome_zarr_levels(src)


def test_open_datatree_gives_every_level_with_ngff_axes_and_scales(ngff: tuple[dict, list[np.ndarray]]) -> None:
    record, expected = ngff
    tree = xr.open_datatree(record, engine="dandi-icechunk")
    levels = [child for child in tree.children.values()]
    assert len(levels) == len(expected) > 1
    for i, (node, values) in enumerate(zip(levels, expected)):
        image = node.dataset["image"]
        assert image.dims == ("c", "z", "y", "x")
        np.testing.assert_array_equal(image.values, values)
        assert "c" not in node.dataset.coords  # a channel axis gets no coordinate
        assert float(node.dataset["x"][1] - node.dataset["x"][0]) == pytest.approx(2.0**i)
    assert tree.attrs["multiscales"][0]["datasets"][0]["path"] == next(iter(tree.children))


def test_open_dataset_gives_one_level_by_group_or_the_full_resolution(ngff: tuple[dict, list[np.ndarray]]) -> None:
    record, expected = ngff
    full = xr.open_dataset(record, engine="dandi-icechunk")
    np.testing.assert_array_equal(full["image"].values, expected[0])
    tree = xr.open_datatree(record, engine="dandi-icechunk")
    second = list(tree.children)[1]
    level = xr.open_dataset(record, engine="dandi-icechunk", group=second, decode_times=False, mask_and_scale=False)
    np.testing.assert_array_equal(level["image"].values, expected[1])


def test_xarray_chunks_give_lazy_dask_arrays(ngff: tuple[dict, list[np.ndarray]]) -> None:
    pytest.importorskip("dask")
    record, expected = ngff
    ds = xr.open_dataset(record, engine="dandi-icechunk", chunks={})
    assert ds["image"].chunks is not None
    np.testing.assert_array_equal(ds["image"].values, expected[0])


def test_the_list_publish_writes_and_assets_yaml_are_read_by_asset_path(
    s3_location: StorageLocation, tmp_path: Path
) -> None:
    zids = [str(uuid.uuid4()), str(uuid.uuid4())]
    srcs = [make_zarr_v3(tmp_path / "a.zarr", seed=1), make_zarr_v3(tmp_path / "b.zarr", seed=2)]
    assets = []
    for zid, src in zip(zids, srcs):
        result = upload_zarr(src, s3_location, zid, dedup=False)
        assets.append(draft_zarr_asset(zid, src.name, result.zarr_checksum, result.size))
    (tmp_path / "assets.json").write_text(json.dumps(assets))
    published = tmp_path / "published.json"
    env = {"DANDI_ICECHUNK_STORAGE": s3_location.url}
    result = CliRunner().invoke(
        main, ["publish", "--dandiset", "000123", "--version", "0.260101.1200", str(tmp_path / "assets.json"), "--json"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    published.write_text(result.output)
    with pytest.raises(NotAZarrAssetError, match="asset_path"):
        open_dataset(str(published))
    b = open_dataset(str(published), asset_path="b.zarr")
    np.testing.assert_array_equal(b["data"].values, zarr.open_group(str(srcs[1]), mode="r")["data"][:])
    as_yaml = tmp_path / "assets.yaml"
    as_yaml.write_text(yaml.safe_dump(json.loads(published.read_text())))
    a = xr.open_dataset(str(as_yaml), engine="dandi-icechunk", asset_path="a.zarr")
    np.testing.assert_array_equal(a["data"].values, zarr.open_group(str(srcs[0]), mode="r")["data"][:])

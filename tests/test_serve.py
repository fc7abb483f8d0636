"""The plain-Zarr HTTP view and the zarr-manifests export."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import numpy as np
import pytest
import uvicorn
import zarr

from dandi_icechunk.archive_hooks import publish_dandiset
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.read import open_zarr
from dandi_icechunk.read.manifest import snapshot_manifest
from dandi_icechunk.read.serve import create_app
from dandi_icechunk.reference import SnapshotReference
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.snapshot_files import READ_CHUNK_REFS, SnapshotFiles
from dandi_icechunk.testing import draft_zarr_asset, free_port, make_ome_zarr_v2
from dandi_icechunk.upload import upload_zarr

from .conftest import chunk_objects, reference_checksum, tiny_chunk_zarr, tree_bytes


@pytest.fixture
def published(location: StorageLocation, zarr_id: str, tmp_path: Path) -> tuple[Path, SnapshotReference]:
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr", separator=".")
    upload_zarr(src, location, zarr_id)
    repo = ZarrRepository.open(location, zarr_id)
    info = repo.commit_info(repo.resolve())
    assert info is not None
    asset = draft_zarr_asset(zarr_id, src.name, info.zarr_checksum, info.size)
    [record] = publish_dandiset("000123", "0.260101.1200", [asset], location=location)
    return src, SnapshotReference.from_asset(record)


@pytest.fixture
def server(location: StorageLocation) -> Iterator[str]:
    """The HTTP view on 127.0.0.1 (a free port), in a thread."""
    with serving(location) as url:
        yield url


@contextlib.contextmanager
def serving(location: StorageLocation) -> Iterator[str]:
    """The HTTP view of ``location`` on 127.0.0.1 (a free port), in a thread, while in the block."""
    config = uvicorn.Config(create_app(location), host="127.0.0.1", port=0, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not instance.started:
        assert time.monotonic() < deadline, "the HTTP view did not start"
        time.sleep(0.05)
    port = instance.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        thread.join(timeout=10)


def _get(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive) and body of one request."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_unmodified_zarr_python_reads_the_http_view_with_the_same_values(
    published: tuple[Path, SnapshotReference], server: str, location: StorageLocation
) -> None:
    src, ref = published
    base = f"{server}/{ref.zarr_id}/{ref.snapshot_id}/"
    over_http = zarr.open_group(base, mode="r", zarr_format=2)
    through_icechunk = open_zarr(ref, credentials=location.credentials)
    assert over_http.attrs["multiscales"] == through_icechunk.attrs["multiscales"]
    for level in ("0", "1"):
        np.testing.assert_array_equal(over_http[level][:], through_icechunk[level][:])
    by_tag = zarr.open_group(f"{server}/{ref.zarr_id}/{ref.tag}/", mode="r", zarr_format=2)
    np.testing.assert_array_equal(by_tag["0"][:], through_icechunk["0"][:])


def test_files_come_back_as_uploaded_with_etags_ranges_and_listings(
    published: tuple[Path, SnapshotReference], server: str
) -> None:
    src, ref = published
    base = f"{server}/{ref.zarr_id}/{ref.snapshot_id}"
    files = tree_bytes(src)
    status, headers, body = _get(f"{base}/0/.zarray")
    assert (status, body) == (200, files["0/.zarray"])  # v2 stays v2, byte for byte
    assert headers["Content-Type"].startswith("application/json")
    status, headers, body = _get(f"{base}/0/0.0.0")
    assert (status, body) == (200, files["0/0.0.0"])
    assert headers["Content-Type"] == "application/octet-stream"
    assert "immutable" in headers["Cache-Control"]
    etag = headers["ETag"]
    assert _get(f"{base}/0/0.0.0", headers={"If-None-Match": etag})[0] == 304

    status, headers, body = _get(f"{base}/0/0.0.0", headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, files["0/0.0.0"][10:20], f"bytes 10-19/{len(files['0/0.0.0'])}")
    assert _get(f"{base}/0/0.0.0", headers={"Range": "bytes=-5"})[2] == files["0/0.0.0"][-5:]
    assert _get(f"{base}/0/0.0.0", headers={"Range": "bytes=999999-"})[0] == 416

    status, headers, body = _get(f"{base}/0/0.0.0", method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, str(len(files["0/0.0.0"])), b"")
    assert _get(f"{base}/0/9.9.9")[0] == 404
    assert _get(f"{server}/{ref.zarr_id}/AAAAAAAAAAAAAAAAAAAA/.zgroup")[0] == 404
    assert _get(f"{server}/{uuid.uuid4()}/{ref.snapshot_id}/.zgroup")[0] == 404
    for method in ("PUT", "POST", "DELETE"):
        assert _get(f"{base}/0/0.0.0", method=method)[0] == 405

    status, _, listing = _get(f"{base}/")
    assert status == 200 and b'href="/' in listing and b">0/<" in listing and b">.zgroup<" in listing


def test_manifest_lists_every_file_with_size_and_md5(
    published: tuple[Path, SnapshotReference], location: StorageLocation, tmp_path: Path
) -> None:
    src, ref = published
    document = snapshot_manifest(ZarrRepository.open(location, ref.zarr_id), ref.snapshot_id)
    assert document["fields"] == ["versionId", "lastModified", "size", "ETag"]
    files = tree_bytes(src)
    assert document["statistics"]["entries"] == len(files)
    assert document["statistics"]["zarrChecksum"] == reference_checksum(src)
    for key, data in files.items():
        node = document["entries"]
        for part in key.split("/"):
            node = node[part]
        assert node[0] == ref.snapshot_id
        assert node[2:] == [len(data), hashlib.md5(data).hexdigest()]
    json.dumps(document)


def test_browsers_may_read_cross_origin_with_cors_and_preflight(
    published: tuple[Path, SnapshotReference], server: str
) -> None:
    src, ref = published
    base = f"{server}/{ref.zarr_id}/{ref.snapshot_id}"
    origin = {"Origin": "http://viewer.example"}
    status, headers, _ = _get(f"{base}/0/0.0.0", headers={**origin, "Range": "bytes=0-9"})
    assert status == 206 and headers["Access-Control-Allow-Origin"] == "*"
    exposed = {h.strip().lower() for h in headers["Access-Control-Expose-Headers"].split(",")}
    assert {"etag", "content-range", "content-length"} <= exposed
    status, headers, _ = _get(
        f"{base}/0/0.0.0", method="OPTIONS",
        headers={**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range,accept"},
    )
    assert status == 200 and "GET" in headers["Access-Control-Allow-Methods"]
    assert "range" in headers["Access-Control-Allow-Headers"].lower()
    assert _get(f"{base}/0/0.0.0", method="OPTIONS")[0] == 204  # a plain OPTIONS, no preflight
    for refused in ({"Access-Control-Request-Method": "PUT"},
                    {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}):
        status, headers, body = _get(f"{base}/0/0.0.0", method="OPTIONS", headers={**origin, **refused})
        assert status == 400 and "Access-Control-Allow-Methods" not in headers and b"only GET and HEAD" in body


def test_tensorstore_reads_the_http_view_with_the_same_values(
    published: tuple[Path, SnapshotReference], server: str
) -> None:
    tensorstore = pytest.importorskip("tensorstore")
    src, ref = published
    spec = {"driver": "zarr", "kvstore": f"{server}/{ref.zarr_id}/{ref.snapshot_id}/0/"}
    values = tensorstore.open(spec, read=True).result().read().result()
    np.testing.assert_array_equal(values, zarr.open_array(str(src / "0"), mode="r")[:])


_PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
(async () => {
  const base = "%s";
  try {
    const meta = await (await fetch(base + "/.zattrs")).json();
    const chunk = await fetch(base + "/0/0.0.0", {headers: {Range: "bytes=0-15"}});
    const body = new Uint8Array(await chunk.arrayBuffer());
    document.getElementById("out").textContent = ["RESULT", chunk.status,
      chunk.headers.get("Content-Range"), chunk.headers.get("ETag") !== null, body.length,
      "multiscales" in meta].join(" ");
  } catch (e) { document.getElementById("out").textContent = "FAILED " + e; }
})();
</script></body></html>"""


def test_a_browser_page_on_another_origin_fetches_metadata_and_a_chunk(
    published: tuple[Path, SnapshotReference], server: str, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    _, ref = published
    (tmp_path / "page.html").write_text(_PAGE % f"{server}/{ref.zarr_id}/{ref.snapshot_id}")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    page_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=page_server.serve_forever, daemon=True).start()
    try:
        page = f"http://localhost:{page_server.server_address[1]}/page.html"  # another origin
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom", page],
            capture_output=True, text=True, timeout=120,
        ).stdout
    finally:
        page_server.shutdown()
    assert "RESULT 206 bytes 0-15/" in dom and "true 16 true" in dom, dom[-500:]


def test_a_snapshot_with_a_sharded_index_is_served_from_its_shards(server: str, location: StorageLocation) -> None:
    from dandi_icechunk.testing import synthetic_snapshot

    zarr_id, snapshot = synthetic_snapshot(location, 20_000)
    base = f"{server}/{zarr_id}/{snapshot}"
    status, headers, _ = _get(f"{base}/0/c/17/345", method="HEAD")
    assert (status, headers["Content-Length"]) == (200, "25000")
    assert headers["ETag"] == f'"{hashlib.md5((17_345).to_bytes(8, "big")).hexdigest()}"'
    assert _get(f"{base}/0/c/20/0", method="HEAD")[0] == 404
    status, _, body = _get(f"{base}/0/c/19/")
    assert status == 200 and body.count(b"<a href=") == 1000


def test_chunks_kept_inside_manifests_are_served_byte_for_byte(
    location: StorageLocation, zarr_id: str, tmp_path: Path, server: str
) -> None:
    src = tiny_chunk_zarr(tmp_path / "tiny.zarr", 64, seed=3)
    sid = upload_zarr(src, location, zarr_id).snapshot_id
    assert not chunk_objects(location, zarr_id)  # all inline
    for key, data in tree_bytes(src).items():
        assert _get(f"{server}/{zarr_id}/{sid}/{key}")[2] == data
    status, _, body = _get(f"{server}/{zarr_id}/{sid}/5", headers={"Range": "bytes=100-199"})
    assert (status, body) == (206, (src / "5").read_bytes()[100:200])
    over_http = zarr.open_array(f"{server}/{zarr_id}/{sid}/", mode="r", zarr_format=2)
    np.testing.assert_array_equal(over_http[:], zarr.open_array(str(src), mode="r")[:])


def test_each_open_snapshot_keeps_a_bounded_number_of_chunk_refs(
    location: StorageLocation, zarr_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Icechunk keeps up to 15 M chunk refs of the manifests it reads, with the bytes of chunks
    kept inside them: the view, open on up to 8 snapshots for anyone, keeps 20,000 each."""
    sid = upload_zarr(make_ome_zarr_v2(tmp_path / "s.ome.zarr"), location, zarr_id).snapshot_id
    opened: list[int | None] = []
    open_snapshot = SnapshotFiles.open

    def recorded(*args, chunk_refs=None, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(chunk_refs)
        return open_snapshot(*args, chunk_refs=chunk_refs, **kwargs)

    monkeypatch.setattr(SnapshotFiles, "open", recorded)
    with serving(location) as url:
        assert _get(f"{url}/{zarr_id}/{sid}/0/.zarray")[0] == 200
    assert opened == [READ_CHUNK_REFS] and READ_CHUNK_REFS <= 20_000


def test_serve_with_workers_answers_from_worker_processes_of_the_storage_given(tmp_path: Path) -> None:
    location = StorageLocation(kind="file", bucket=str(tmp_path / "bucket"))
    src = make_ome_zarr_v2(tmp_path / "s.ome.zarr", separator=".")
    zid = str(uuid.uuid4())
    snapshot = upload_zarr(src, location, zid).snapshot_id
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DANDI_ICECHUNK_STORAGE"}
    with (tmp_path / "serve.log").open("wb") as log:
        view = subprocess.Popen(
            [sys.executable, "-m", "dandi_icechunk", "--storage", location.url, "serve", "--port", str(port), "--workers", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        url = f"http://127.0.0.1:{port}/{zid}/{snapshot}/0/.zarray"
        deadline = time.monotonic() + 60
        while True:
            assert view.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                status, _, body = _get(url)
                break
            except OSError:
                assert time.monotonic() < deadline, "the view with 2 workers did not start"
                time.sleep(0.2)
        assert status == 200 and body == (src / "0" / ".zarray").read_bytes()
        workers = [p for p in Path("/proc").glob("[0-9]*") if _parent_pid(p) == view.pid]
        assert len(workers) >= 2, workers  # the 2 worker processes of uvicorn's (the view's own process)
    finally:
        view.terminate()
        view.wait(timeout=30)


def _parent_pid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None

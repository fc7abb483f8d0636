from pathlib import Path

import pytest

from dandi_icechunk.errors import InvalidZarrIdError, StorageLocationError
from dandi_icechunk.location import S3Credentials, StorageLocation, validate_zarr_id


def test_s3_url_gives_bucket_prefix_endpoint_and_region() -> None:
    loc = StorageLocation.parse("s3://dandiarchive/some/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-2")
    assert (loc.kind, loc.bucket, loc.prefix) == ("s3", "dandiarchive", "some/prefix")
    assert (loc.endpoint_url, loc.region) == ("http://127.0.0.1:9000", "us-east-2")
    assert StorageLocation.parse(loc.url) == loc


def test_repositories_live_apart_from_legacy_zarr_prefix_and_embargoed_ones_apart_again() -> None:
    loc = StorageLocation.parse("s3://dandiarchive")
    zid = "2b1f5f4c-3c35-4a3e-9a6c-1b9bb5d6b0c1"
    public = loc.repository_prefix(zid)
    private = loc.repository_prefix(zid, embargoed=True)
    assert public == f"zarr-icechunk/{zid}"
    assert private == f"zarr-icechunk-embargoed/{zid}"
    assert not public.startswith("zarr/") and not private.startswith(public)


def test_the_http_url_of_a_repository_is_what_anonymous_readers_fetch_on_each_kind_of_s3(tmp_path: Path) -> None:
    zid = "2b1f5f4c-3c35-4a3e-9a6c-1b9bb5d6b0c1"
    local = StorageLocation.parse("s3://dandiarchive/p?endpoint_url=http://127.0.0.1:9000/")
    assert local.http_url(zid) == f"http://127.0.0.1:9000/dandiarchive/p/zarr-icechunk/{zid}/"
    assert StorageLocation.parse("s3://dandiarchive").http_url(zid, embargoed=True) == (
        f"https://dandiarchive.s3.amazonaws.com/zarr-icechunk-embargoed/{zid}/")
    assert StorageLocation.parse("s3://dandiarchive?region=us-east-2").http_url(zid) == (
        f"https://dandiarchive.s3.amazonaws.com/zarr-icechunk/{zid}/")  # the form of DANDI's contentUrls
    assert StorageLocation.parse(tmp_path.as_uri()).http_url(zid) is None


def test_file_url_is_an_absolute_local_bucket(tmp_path: Path) -> None:
    loc = StorageLocation.parse(tmp_path.as_uri())
    assert (loc.kind, loc.bucket) == ("file", str(tmp_path))


def test_environment_variable_then_embedded_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DANDI_ICECHUNK_STORAGE", "s3://from-env")
    assert StorageLocation.resolve().bucket == "from-env"
    assert StorageLocation.resolve("s3://explicit").bucket == "explicit"
    monkeypatch.delenv("DANDI_ICECHUNK_STORAGE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    default = StorageLocation.resolve()
    assert default.kind == "file"
    assert Path(default.bucket) == tmp_path / "dandi-icechunk" / "bucket"


@pytest.mark.parametrize(
    "url, message",
    [
        ("gs://bucket", "not supported"),
        ("s3:///prefix", "names no bucket"),
        ("s3://b?endpoint=http://x", "unknown option"),
        ("s3://b?endpoint_url=ftp://x", "must be an http"),
        ("file://host/path", "file:///ABSOLUTE/PATH"),
    ],
)
def test_malformed_storage_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(StorageLocationError, match=message):
        StorageLocation.parse(url)


def test_zarr_id_must_be_a_uuid_and_is_canonicalized() -> None:
    assert validate_zarr_id("2B1F5F4C-3C35-4A3E-9A6C-1B9BB5D6B0C1") == "2b1f5f4c-3c35-4a3e-9a6c-1b9bb5d6b0c1"
    with pytest.raises(InvalidZarrIdError, match="is not a zarr_id"):
        validate_zarr_id("my-zarr")


def test_s3_endpoint_that_does_not_answer_fails_fast() -> None:
    loc = StorageLocation.parse("s3://b?endpoint_url=http://127.0.0.1:9")
    with pytest.raises(StorageLocationError, match="does not answer"):
        loc.check_reachable(timeout=2)


def _fixed_credentials() -> S3Credentials:  # a provider is pickled with the storage: module level
    return S3Credentials("key", "secret")


@pytest.mark.parametrize("credentials", ["static", "refreshable", "from the environment"])
def test_readers_with_keys_get_icechunks_object_store_s3_client_and_the_rest_its_aws_sdk_client(credentials: str) -> None:
    """The object_store client costs about 30 % less CPU per chunk read (benchmarks/read_routes.py);
    it neither refreshes credentials nor reads the AWS config files, nor writes here."""
    location = StorageLocation(kind="s3", bucket="b", endpoint_url="http://127.0.0.1:9")
    if credentials == "static":
        location = StorageLocation(kind="s3", bucket="b", endpoint_url="http://127.0.0.1:9",
                                   credentials=S3Credentials("key", "secret"))
    elif credentials == "refreshable":
        location = StorageLocation(kind="s3", bucket="b", endpoint_url="http://127.0.0.1:9",
                                   credentials_provider=_fixed_credentials)
    zarr_id = "00000000-0000-4000-8000-000000000000"

    def client(storage: object) -> str:
        return next(line for line in repr(storage).splitlines() if line.startswith("type:"))

    reader = "type: S3" if credentials == "static" else "type: S3 (native)"
    assert client(location.icechunk_storage(zarr_id, reading=True)) == reader
    assert client(location.icechunk_storage(zarr_id)) == "type: S3 (native)"

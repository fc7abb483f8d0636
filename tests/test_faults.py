"""Network faults between us and S3 (a proxy that cuts responses and answers 503): reads are
retried where safe, and what still fails is one line, never a traceback (issue 11, item 10)."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from dandi_icechunk.archive_hooks import publish_dandiset
from dandi_icechunk.cli import main
from dandi_icechunk.errors import PublishError, StorageLocationError
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.snapshot_files import verify_snapshot
from dandi_icechunk.testing import S3Server, draft_zarr_asset, make_zarr_v3
from dandi_icechunk.testing.faults import run_fault_proxy
from dandi_icechunk.upload import upload_zarr


def _uploaded(server: S3Server, tmp_path: Path) -> tuple[StorageLocation, str]:
    location = server.location(prefix=f"t-{uuid.uuid4().hex[:8]}")
    zarr_id = str(uuid.uuid4())
    upload_zarr(make_zarr_v3(tmp_path / "a.zarr"), location, zarr_id, dedup=False)
    return location, zarr_id


def test_a_digest_index_response_cut_short_is_read_again(s3_server: S3Server, tmp_path: Path) -> None:
    uploaded, zarr_id = _uploaded(s3_server, tmp_path)
    cuts = itertools.count()

    def decide(method: str, path: str) -> str | None:
        return "cut" if "/dandi/index/" in path and next(cuts) < 2 else None

    with run_fault_proxy(s3_server.endpoint_url, decide) as (proxy, counts):
        location = dataclasses.replace(uploaded, endpoint_url=proxy)
        assert verify_snapshot(ZarrRepository.open(location, zarr_id)).ok
    assert counts == {"cut": 2}


def test_verify_with_every_index_read_cut_is_one_line(s3_server: S3Server, tmp_path: Path) -> None:
    uploaded, zarr_id = _uploaded(s3_server, tmp_path)
    with run_fault_proxy(s3_server.endpoint_url, lambda m, p: "cut" if "/dandi/index/" in p else None) as (proxy, _):
        storage = dataclasses.replace(uploaded, endpoint_url=proxy).url
        env = {"AWS_ACCESS_KEY_ID": s3_server.access_key_id, "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key}
        result = CliRunner().invoke(main, ["--storage", storage, "verify", zarr_id], env=env)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: reading s3://") and result.output.count("\n") == 1
    assert "Traceback" not in result.output


@pytest.mark.stress  # Icechunk retries each 503 with backoff for about a minute before it gives up
def test_publish_with_the_storage_failing_is_a_refusal_not_a_traceback(s3_server: S3Server, tmp_path: Path) -> None:
    location = s3_server.location(prefix=f"t-{uuid.uuid4().hex[:8]}")
    zarr_id = str(uuid.uuid4())
    result = upload_zarr(make_zarr_v3(tmp_path / "a.zarr"), location, zarr_id, dedup=False)
    asset = draft_zarr_asset(zarr_id, "a.zarr", result.zarr_checksum, result.size)
    with run_fault_proxy(s3_server.endpoint_url, lambda m, p: "503" if m == "GET" else None) as (proxy, _):
        failing = dataclasses.replace(location, endpoint_url=proxy)
        with pytest.raises((PublishError, StorageLocationError)) as refused:
            publish_dandiset("000123", "0.260101.1200", [asset], location=failing)
    assert "\n  " not in str(refused.value).split("\n", 1)[0]
    assert ZarrRepository.open(location, zarr_id).icechunk.list_tags() == set()  # nothing tagged


@pytest.mark.stress
def test_random_faults_never_leave_a_broken_repository(s3_server: S3Server, tmp_path: Path) -> None:
    """Upload, verify, publish and audit through a proxy failing 15 % of requests (503, reset,
    cut): every run either succeeds or fails with our one-line error, and afterwards, without
    faults, the tip verifies and every publication audits clean."""
    import random

    import zarr

    from dandi_icechunk.archive.audit import Publication, audit_publications
    from dandi_icechunk.errors import DandiIcechunkError

    rng = random.Random(11)
    location = s3_server.location(prefix=f"t-{uuid.uuid4().hex[:8]}")
    zarr_id = str(uuid.uuid4())
    src = make_zarr_v3(tmp_path / "a.zarr", chunks=(4, 16, 16))
    publications: list[Publication] = []
    outcomes = {"ok": 0, "refused": 0}

    def decide(method: str, path: str) -> str | None:
        return rng.choice(["503", "reset", "cut"]) if rng.random() < 0.15 else None

    with run_fault_proxy(s3_server.endpoint_url, decide) as (proxy, counts):
        flaky = dataclasses.replace(location, endpoint_url=proxy)
        for round_ in range(6):
            zarr.open_group(str(src), mode="r+")["data"][0:4, 0:16, 0:16] = round_
            try:
                result = upload_zarr(src, flaky, zarr_id, dedup=False)
                repo = ZarrRepository.open(flaky, zarr_id)
                verify_snapshot(repo)
                asset = draft_zarr_asset(zarr_id, "a.zarr", result.zarr_checksum, result.size)
                [record] = publish_dandiset("000123", f"0.26010{round_ + 1}.1200", [asset], location=flaky)
                publications.append(Publication.from_asset(record))
                audit_publications(publications, flaky)
                outcomes["ok"] += 1
            except DandiIcechunkError as exc:
                assert "\n" not in str(exc).split(":\n")[0]
                outcomes["refused"] += 1
    assert sum(counts.values()) > 20, counts
    repo = ZarrRepository.open(location, zarr_id)
    assert verify_snapshot(repo).ok
    assert audit_publications(publications, location).ok
    print(f"faults injected {counts}; runs {outcomes}")

"""Random sequences of the archive's operations on one Zarr shared by two Dandisets, against
the model of :mod:`dandi_icechunk.testing.model` (real Icechunk, real SeaweedFS)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dandi_icechunk.archive.audit import Publication
from dandi_icechunk.archive.gc import collect_garbage
from dandi_icechunk.archive.ledger import draft_branch, recorded_drafts
from dandi_icechunk.archive_hooks import (
    attach_zarr_to_dandiset,
    finalize_upload,
    publish_dandiset,
    unembargo_dandiset_zarrs,
)
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.session import ZarrRepository
from dandi_icechunk.testing import S3Server, draft_zarr_asset, make_zarr_v3
from dandi_icechunk.testing.model import ArchiveModel, check_invariants
from dandi_icechunk.testing.strategies import CHUNKS, SHAPE, Edit, dandisets, edits
from dandi_icechunk.upload import upload_zarr
from dandi_icechunk.upload.digest_cache import DigestCache

from .conftest import reference_checksum

OWNER = "000101"


class SharedZarrMachine(RuleBasedStateMachine):
    location: StorageLocation

    def __init__(self) -> None:
        super().__init__()
        self.model = ArchiveModel()
        self.zarr_id = str(uuid.uuid4())
        self.work = Path(tempfile.mkdtemp())
        self.versions = 0
        self.cache = DigestCache(self.work / "cache")

    def teardown(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    @initialize(embargoed=st.booleans())
    def first_upload(self, embargoed: bool) -> None:
        src = make_zarr_v3(self.work / OWNER, shape=SHAPE, chunks=CHUNKS, seed=uuid.UUID(self.zarr_id).int % 1009)
        upload_zarr(src, self.location, self.zarr_id, embargoed=embargoed, dedup=False, digest_cache=self.cache)
        finalize_upload(self.zarr_id, location=self.location, dandiset_id=OWNER)
        self.model.embargoed = embargoed
        self.model.drafts[OWNER] = np.asarray(zarr.open_group(str(src), mode="r")["data"][:])

    @rule(dandiset=dandisets, edit=edits())
    def upload_and_finalize(self, dandiset: str, edit: Edit) -> None:
        if dandiset not in self.model.drafts:
            return
        src = self.work / dandiset
        if not src.exists():
            shutil.copytree(self.work / OWNER, src)
            zarr.open_group(str(src), mode="r+")["data"][:] = self.model.drafts[dandiset]
        data = self.model.drafts[dandiset].copy()
        edit.apply(data)
        zarr.open_group(str(src), mode="r+")["data"][:] = data
        repo = ZarrRepository.open(self.location, self.zarr_id)
        branch = draft_branch(repo, dandiset, recorded_drafts(self.location, self.zarr_id))
        # each Dandiset's directory re-uploaded with its digest cache: the checksum computed again
        # only above the chunks that changed (a chunk edited to the fill value is a file removed)
        result = upload_zarr(src, self.location, self.zarr_id, branch=branch, dandiset=dandiset, dedup=False,
                             digest_cache=self.cache)
        assert result.zarr_checksum == reference_checksum(src)
        finalize_upload(self.zarr_id, location=self.location, dandiset_id=dandiset)
        self.model.drafts[dandiset] = data

    @precondition(lambda self: not self.model.embargoed)
    @rule(dandiset=dandisets)
    def publish(self, dandiset: str) -> None:
        if dandiset not in self.model.drafts:
            return
        self.versions += 1
        version = f"0.2601{self.versions:02d}.1200"
        repo = ZarrRepository.open(self.location, self.zarr_id)
        info = repo.commit_info(recorded_drafts(self.location, self.zarr_id)[dandiset].snapshot_id)
        assert info is not None
        asset = draft_zarr_asset(self.zarr_id, "z.zarr", info.zarr_checksum, info.size)
        [record] = publish_dandiset(dandiset, version, [asset], location=self.location)
        publication = Publication.from_asset(record)
        assert publication.tag is not None
        self.model.published[publication.tag] = (publication, self.model.drafts[dandiset].copy())

    @precondition(lambda self: "000202" not in self.model.drafts and not self.model.embargoed)
    @rule()
    def attach_second_dandiset(self) -> None:
        attachment = attach_zarr_to_dandiset(self.zarr_id, "000202", location=self.location)
        assert attachment.snapshot_id == recorded_drafts(self.location, self.zarr_id)[OWNER].snapshot_id
        self.model.drafts["000202"] = self.model.drafts[OWNER].copy()

    @precondition(lambda self: self.model.embargoed)
    @rule()
    def unembargo(self) -> None:
        unembargo_dandiset_zarrs([self.zarr_id], location=self.location)
        self.model.embargoed = False

    @rule(days=st.integers(0, 3))
    def gc(self, days: int) -> None:
        collect_garbage(
            self.location, self.zarr_id, restore_window=timedelta(days=days),
            now=datetime.now(UTC) + timedelta(days=4),
        )

    @invariant()
    def everything_promised_holds(self) -> None:
        if self.model.drafts:
            check_invariants(self.model, self.location, self.zarr_id)


@pytest.mark.parametrize("home", ["bucket", "arraylake"])
@pytest.mark.parametrize("steps, examples", [pytest.param(6, 4, id="quick"), pytest.param(15, 15, id="long", marks=pytest.mark.stress)])
def test_archive_operations_in_random_order_keep_every_promise(
    s3_server: S3Server, steps: int, examples: int, home: str, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """On a bucket location, and on an Arraylake one (repositories registered and opened
    through the real client, against the local stand-in for Earthmover's service)."""
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        if home == "bucket":
            SharedZarrMachine.location = s3_server.location(prefix=prefix)
        else:
            pytest.importorskip("arraylake", reason="the arraylake extra is not installed")
            monkeypatch.setenv("ARRAYLAKE_CONFIG", str(tmp_path / "arraylake-config"))
            from dandi_icechunk.testing.arraylake_service import ArraylakeStandIn

            service = stack.enter_context(ArraylakeStandIn(s3_server, prefix=prefix))
            monkeypatch.setenv("ARRAYLAKE_TOKEN", service.token)
            SharedZarrMachine.location = StorageLocation.parse(
                f"arraylake://{service.org}/{service.nickname}?service_uri={service.url}"
            )
        run_state_machine_as_test(SharedZarrMachine, settings=settings(
            max_examples=examples, stateful_step_count=steps, deadline=None,
            suppress_health_check=list(HealthCheck),
        ))

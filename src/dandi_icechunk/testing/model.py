"""A model of what the archive promises about one Zarr shared by Dandisets, and its invariants.

The model holds, in plain NumPy, what each Dandiset's draft and each published version must
read back as; :func:`check_invariants` compares the real repository with it. Stateful tests
drive both with random sequences of upload, finalize, publish, attach, unembargo, gc and audit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import zarr

from ..archive.audit import Publication, audit_publications
from ..archive.ledger import recorded_drafts
from ..location import StorageLocation
from ..session import ZarrRepository
from ..snapshot_files import verify_snapshot


@dataclass
class ArchiveModel:
    """Expected state: each Dandiset's draft (finalized) and every published version."""

    drafts: dict[str, np.ndarray] = field(default_factory=dict)
    published: dict[str, tuple[Publication, np.ndarray]] = field(default_factory=dict)
    embargoed: bool = False

    def publications(self) -> list[Publication]:
        """Every publication made so far."""
        return [p for p, _ in self.published.values()]


def _read(repository: ZarrRepository, snapshot_id: str) -> np.ndarray:
    store = repository.icechunk.readonly_session(snapshot_id=snapshot_id).store
    return np.asarray(zarr.open_group(store, mode="r")["data"][:])


def check_invariants(model: ArchiveModel, location: StorageLocation, zarr_id: str) -> None:
    """Raise ``AssertionError`` unless the repository is what ``model`` says.

    - every published version reads back exactly, by its snapshot and by its tag;
    - every Dandiset's finalized draft reads back exactly, and verifies;
    - the audit finds nothing wrong;
    - the repository is where the embargo says (never under both prefixes).
    """
    repository = ZarrRepository.open(location, zarr_id)
    assert repository.embargoed == model.embargoed, "the repository is under the wrong prefix"
    for tag, (publication, expected) in model.published.items():
        assert repository.resolve(tag=tag) == publication.snapshot_id, f"tag {tag} moved"
        np.testing.assert_array_equal(_read(repository, publication.snapshot_id), expected, err_msg=tag)
    drafts = recorded_drafts(location, repository.zarr_id)
    for dandiset_id, expected in model.drafts.items():
        draft = drafts[dandiset_id]
        np.testing.assert_array_equal(_read(repository, draft.snapshot_id), expected, err_msg=dandiset_id)
        assert verify_snapshot(repository, snapshot_id=draft.snapshot_id).ok
    report = audit_publications(model.publications(), location)
    assert report.ok, report.problems

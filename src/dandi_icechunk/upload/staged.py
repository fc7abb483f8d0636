"""Uploads of more chunks than one Icechunk session should hold: written in batches on a
scratch branch, then put on the upload's branch at once.

Icechunk keeps every chunk reference written in a session until the commit, and builds the
manifests at the commit: about 420 bytes a chunk at the commit's peak, 584 MB for DANDI's
1.3 M-file Zarr (`docs/upload-memory.md`); and the bytes of chunks kept inside the manifests
(`docs/tiny-chunks.md`). An upload that writes more than :data:`STAGE_CHUNKS` chunks, or more
than :data:`STAGE_INLINE_BYTES` of inline chunks in the splits it writes (an update reads
them too), writes them in batches, in grid order (so each batch fills its own manifest
splits), into a scratch branch made at the upload's base (:data:`SCRATCH_BRANCH_PREFIX`). Each
batch is committed there by amending the one before, so the scratch branch holds one snapshot
over the base whatever the number of batches; the last is amended with the upload's message and
metadata, and the upload's branch is moved to it only if it is still at the base. Readers see
the whole upload at once or nothing of it, as with one commit. If another upload moved the
branch meanwhile, nothing is committed (:class:`ConflictError`) and the next run starts from
the new tip. The scratch branch is deleted when the upload ends, whatever the outcome; one a
killed process left behind is removed by ``gc``.
"""

from __future__ import annotations

from typing import Any

import icechunk
import numpy as np

from ..errors import ConflictError
from ..session import ZarrRepository
from .allocator import release_free_memory

STAGE_CHUNKS = 200_000
"""Most chunks written into one Icechunk session (about 85 MB of Icechunk's memory at its commit)."""
STAGE_INLINE_BYTES = 16 * 1024 * 1024
"""Most bytes of chunks stored inline (in the manifests) written into one session: Icechunk holds
them until the commit, and about as much again while it writes the manifests."""


def cached_chunk_refs(inline_max: int) -> int:
    """Chunk refs of the manifests it writes and reads an upload's Icechunk keeps in memory: a
    batch's, or as many as :data:`STAGE_INLINE_BYTES` of chunks of up to ``inline_max`` bytes."""
    return min(STAGE_CHUNKS, STAGE_INLINE_BYTES // inline_max)


def batch_ends(held: np.ndarray) -> list[int]:
    """Where each batch of the chunks written ends, given the bytes Icechunk holds for each until
    the commit (``held``, in the order they are written: the inline chunks of each split it
    writes, :func:`~dandi_icechunk.chunk_layout.split_bytes`, so batches end between splits): at most
    :data:`STAGE_CHUNKS` chunks and :data:`STAGE_INLINE_BYTES` held a batch (a lone chunk is a
    batch). One batch, however empty: it makes the nodes.

    >>> batch_ends(np.array([100] * 5))
    [5]
    """
    total = np.cumsum(held)
    ends: list[int] = []
    start = 0
    while start < len(total):
        before = int(total[start - 1]) if start else 0
        fits = int(np.searchsorted(total, before + STAGE_INLINE_BYTES, side="right"))
        start = min(start + STAGE_CHUNKS, max(fits, start + 1), len(total))
        ends.append(start)
    return ends or [0]


class StagedUpload:
    """One upload staged on the scratch branch ``scratch`` (:func:`~dandi_icechunk.session.scratch_branch`),
    and the session its next batch is written into.

    >>> with scratch_branch(repository.icechunk, base_snapshot_id) as scratch:
    ...     staged = StagedUpload(repository, "main", base_snapshot_id, scratch)
    ...     write(staged.session, first_batch); staged.stage()
    ...     write(staged.session, last_batch); staged.publish("Upload x", metadata)
    'JG1QH...'
    """

    def __init__(self, repository: ZarrRepository, branch: str, base: str, scratch: str) -> None:
        self._repository = repository
        self.branch = branch
        self.base = base
        self.scratch = scratch
        self._staged = False
        self.session = repository.writable_session(self.scratch)

    def stage(self) -> None:
        """Commit the batch written into :attr:`session`; the next batch gets a new session."""
        self._commit("a batch of an upload in progress (never on a branch of record)", None)
        release_free_memory()  # and what the commit built, before the next batch's writes
        self.session = self._repository.writable_session(self.scratch)

    def publish(self, message: str, metadata: dict[str, Any]) -> str:
        """Commit the last batch with ``message`` and ``metadata`` and move the upload's branch
        to that snapshot, if the branch is still at the base; the new snapshot's ID."""
        snapshot_id = self._commit(message, metadata)
        try:
            self._repository.icechunk.reset_branch(self.branch, snapshot_id, from_snapshot_id=self.base)
        except icechunk.ConflictError:
            raise ConflictError(
                f"another upload committed to branch {self.branch!r} of {self._repository.zarr_id} "
                "while this one ran; nothing was committed. Check the new state with "
                "`dandi-icechunk log`, then run the upload again"
            ) from None
        return snapshot_id

    def _commit(self, message: str, metadata: dict[str, Any] | None) -> str:
        release_free_memory()  # what the batch's reads and writes left, before Icechunk's commit
        if self._staged:
            return self.session.amend(message, metadata=metadata, allow_empty=True)
        self._staged = True
        return self.session.commit(message, metadata, allow_empty=True)

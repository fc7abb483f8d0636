"""Which Zarrs are Icechunk repositories, and each Dandiset's draft of them.

``IcechunkZarr``: one row per Zarr stored as a repository (a Zarr without one is plain, as
before). ``IcechunkDraft``: the snapshot last finalized for one Dandiset (its branch, checksum,
size), which that Dandiset's draft asset names and its next publish tags; a Zarr reused in
another Dandiset has one row per Dandiset, so each keeps its own draft state.
"""

from __future__ import annotations

from django.db import models


class IcechunkZarr(models.Model):
    zarr_archive = models.OneToOneField(
        "zarr.ZarrArchive", primary_key=True, related_name="icechunk", on_delete=models.CASCADE
    )
    created = models.DateTimeField(auto_now_add=True)
    finalize_error = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return str(self.zarr_archive.zarr_id)


class IcechunkDraft(models.Model):
    zarr = models.ForeignKey(IcechunkZarr, related_name="drafts", on_delete=models.CASCADE)
    dandiset = models.ForeignKey("api.Dandiset", related_name="icechunk_drafts", on_delete=models.CASCADE)
    branch = models.CharField(max_length=255)
    snapshot_id = models.CharField(max_length=20, blank=True, default="")
    checksum = models.CharField(max_length=512, blank=True, default="")
    size = models.BigIntegerField(default=0)
    file_count = models.BigIntegerField(default=0)
    modified = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["zarr", "dandiset"], name="icechunk-draft-per-dandiset")
        ]

    def __str__(self) -> str:
        return f"{self.zarr} in {self.dandiset_id}: {self.snapshot_id or 'nothing finalized'}"

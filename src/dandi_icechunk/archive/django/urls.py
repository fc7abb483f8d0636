from __future__ import annotations

from dandiapi.zarr.models import ZarrArchive
from django.urls import re_path

from .views import begin_upload_view, credentials_view, migrate_view, state_view

_ZARR = rf"^api/zarr/(?P<zarr_id>{ZarrArchive.UUID_REGEX})/icechunk/"

urlpatterns = [
    re_path(_ZARR + r"$", state_view, name="icechunk-zarr"),
    re_path(_ZARR + r"upload/$", begin_upload_view, name="icechunk-begin-upload"),
    re_path(_ZARR + r"credentials/$", credentials_view, name="icechunk-credentials"),
    re_path(_ZARR + r"migrate/$", migrate_view, name="icechunk-migrate"),
]

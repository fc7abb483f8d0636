from __future__ import annotations

from django.apps import AppConfig


class IcechunkConfig(AppConfig):
    name = "dandi_icechunk.archive.django"
    label = "dandi_icechunk"
    verbose_name = "Icechunk Zarrs"
    default_auto_field = "django.db.models.BigAutoField"

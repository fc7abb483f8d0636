"""The Django app that makes dandi-archive's Zarrs Icechunk repositories.

Install it beside dandi-archive (``pip install dandi-icechunk[archive]``), apply the patch in
``integrations/dandi-archive/`` and add the app::

    INSTALLED_APPS += ["dandi_icechunk.archive.django"]

Then a Zarr whose upload begins with ``POST /api/zarr/{zarr_id}/icechunk/upload/`` is an
Icechunk repository; every other Zarr keeps working as before. Settings are in
:mod:`.conf`, the models (one row per Icechunk Zarr, one per Dandiset draft of it) in
:mod:`.models`, what the archive's hooks do in :mod:`.services`, the endpoints in
:mod:`.views`, scheduled work in :mod:`.tasks`. See ``docs/archive-operators.md``.
"""

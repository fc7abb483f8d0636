"""The archive's side: publish, protect, audit, garbage-collect, vend credentials, embargo.

The archive calls these through the facade :mod:`dandi_icechunk.archive_hooks`; the modules
here are its implementation: :mod:`.publish`, :mod:`.audit` (audit, repair, legal holds),
:mod:`.gc`, :mod:`.credentials` (scoped upload credentials), :mod:`.embargo` (unembargo).
"""

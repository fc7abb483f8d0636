"""The ``dandi-icechunk`` command line, one module per caller.

:mod:`.main` holds the command group; :mod:`.upload` (uploaders), :mod:`.read` (readers),
:mod:`.archive` (what the archive runs) and :mod:`.dandi` (dandi-cli's own commands, with
Icechunk Zarrs) add their commands to it.
"""

from . import archive, dandi, read, upload
from .main import main

__all__ = ["archive", "dandi", "main", "read", "upload"]

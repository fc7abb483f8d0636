"""The ``dandi-icechunk`` command line, one module per caller.

:mod:`.main` holds the command group; :mod:`.upload` (uploaders), :mod:`.read` (readers) and
:mod:`.archive` (what the archive runs) add their commands to it.
"""

from . import archive, read, upload
from .main import main

__all__ = ["archive", "main", "read", "upload"]

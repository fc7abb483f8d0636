"""Two malloc arenas for the uploading process, where glibc would make up to 8 a core.

glibc gives each thread that allocates at once with another an arena of its own, and memory
freed in one arena is not reused for another thread's allocations. An upload allocates from
Python's thread, the hashing threads and Icechunk's runtime threads; each staged batch's commit
builds larger structures than the one before (`docs/upload-memory.md`), in whichever arena its
thread has, so the peak grew batch after batch. Limited to two arenas, freed memory is reused.
A ``MALLOC_ARENA_MAX`` in the environment is respected; elsewhere than glibc nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap the process's malloc arenas at ``arenas`` (threads started later share them);
    whether it was done (glibc, and no ``MALLOC_ARENA_MAX`` set)."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))

"""The uploading process's malloc (glibc): two arenas, and free memory handed back.

glibc gives each thread that allocates at once with another an arena of its own, and memory
freed in one arena is not reused for another thread's allocations. An upload allocates from
Python's thread, the hashing threads and Icechunk's runtime threads; each staged batch's commit
builds larger structures than the one before (`docs/upload-memory.md`), in whichever arena its
thread has, so the peak grew batch after batch. Limited to two arenas, freed memory is reused.
A ``MALLOC_ARENA_MAX`` in the environment is respected; elsewhere than glibc nothing is done.

Freed memory in the middle of an arena stays in the process until ``malloc_trim``: the listing
dropped before the commit (~190 MB at 1.3 M files) would otherwise still count under the
commit's own peak.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Any

_M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


@functools.cache
def _libc_function(name: str) -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc (musl has neither)
        return None


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap the process's malloc arenas at ``arenas`` (threads started later share them);
    whether it was done (glibc, and no ``MALLOC_ARENA_MAX`` set)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def release_free_memory() -> None:
    """Hand the memory malloc holds free back to the system (``malloc_trim``)."""
    if (trim := _libc_function("malloc_trim")) is not None:
        trim(0)

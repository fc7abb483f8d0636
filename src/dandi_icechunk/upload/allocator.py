"""The uploading process's malloc (glibc): two arenas, fixed thresholds, and free memory handed back.

glibc gives each thread that allocates at once with another an arena of its own, and memory
freed in one arena is not reused for another thread's allocations. An upload allocates from
Python's thread, the hashing threads and Icechunk's runtime threads; each staged batch's commit
builds larger structures than the one before (`docs/upload-memory.md`), in whichever arena its
thread has, so the peak grew batch after batch. Limited to two arenas, freed memory is reused.

glibc also raises its thresholds as the process frees large blocks: blocks of up to 32 MiB then
come from the heap instead of their own mappings, and up to 64 MiB free at the top of the heap
stays in the process. Icechunk's commits allocate and free such blocks (a staged upload's
transaction log is 1.3 M chunks long by its last batch), so the heap between commits grew by up
to 100 MB, a different amount each run. The thresholds are fixed instead: blocks from 32 MiB get
their own mapping, and more than 16 MiB free at the top of the heap goes back at once. Lower
ones cost time (a page fault for each page of each block again). Measured at 1.3 M files
(`docs/upload-memory.md`): a peak of 475-494 MiB instead of 530-588, in the same time.

Freed memory in the middle of an arena stays in the process until ``malloc_trim``: the listing
dropped before the commit (~190 MB at 1.3 M files) would otherwise still count under the
commit's own peak.

A setting of the user's environment (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``) wins; elsewhere than glibc nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Any

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's malloc.h
ARENAS = 2
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024


@functools.cache
def _libc_function(name: str) -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc (musl has neither)
        return None


def tune_malloc() -> list[str]:
    """Cap the process's malloc arenas at :data:`ARENAS` (threads started later share them) and
    fix its thresholds at :data:`MMAP_THRESHOLD` and :data:`TRIM_THRESHOLD`; the settings made
    (named as their environment variables: those set in the environment are left alone)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return []
    settings = (
        ("MALLOC_ARENA_MAX", _M_ARENA_MAX, ARENAS),
        ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    )
    return [name for name, option, value in settings if name not in os.environ and mallopt(option, value)]


def release_free_memory() -> None:
    """Hand the memory malloc holds free back to the system (``malloc_trim``)."""
    if (trim := _libc_function("malloc_trim")) is not None:
        trim(0)

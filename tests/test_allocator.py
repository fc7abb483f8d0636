import subprocess
import sys
from pathlib import Path

import pytest

from dandi_icechunk.testing import make_zarr_v3

_ARENAS_BEFORE_AND_AFTER_THREADS = """
import ctypes, os, sys, tempfile, threading, uuid, zlib
from dandi_icechunk.location import StorageLocation
from dandi_icechunk.upload import upload_zarr

def arenas():
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    with tempfile.NamedTemporaryFile() as out:
        stream = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
        return open(out.name).read().count("<heap nr=")

before = arenas()  # importing numpy, zarr and icechunk starts threads of their own
if sys.argv[1] == "after an upload":  # of a Zarr made beforehand: its writer's threads take arenas too
    zarr, tmp = sys.argv[2], tempfile.mkdtemp()
    upload_zarr(zarr, StorageLocation(kind="file", bucket=tmp + "/bucket"), str(uuid.uuid4()), dedup=False)
    before = arenas()

def work():  # zlib allocates its state with malloc, outside the GIL
    data = os.urandom(1 << 18)
    for _ in range(20):
        zlib.compress(data, 1)

threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(before, arenas())
"""


def _numbers_printed(script: str, *args: str) -> list[float]:
    """What ``script`` prints, run with ``args`` in a fresh Python with no ``MALLOC_*`` variable set."""
    run = subprocess.run([sys.executable, "-c", script, *args], env={"PATH": "", "PYTHONPATH": ":".join(sys.path)},
                         capture_output=True, text=True, check=True)
    return [float(n) for n in run.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_an_upload_process_allocates_from_two_malloc_arenas_however_many_threads_allocate(tmp_path: Path) -> None:
    zarr = make_zarr_v3(tmp_path / "a.zarr", shape=(4, 8, 8), chunks=(1, 8, 8))
    before, after = _numbers_printed(_ARENAS_BEFORE_AND_AFTER_THREADS, "alone", str(zarr))
    assert after > max(before, 2)  # the threads make glibc add arenas
    before, after = _numbers_printed(_ARENAS_BEFORE_AND_AFTER_THREADS, "after an upload", str(zarr))
    assert after <= max(before, 2)  # and none once an upload has limited them


_RSS_BEFORE_AND_AFTER_RELEASE = """
from dandi_icechunk.upload.allocator import release_free_memory

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

blocks = [bytes(2000) for _ in range(100_000)]  # 200 MB from malloc, not Python's small-object pools
kept = blocks[::50]  # what stays pins the heap: the rest is freed in the middle of it
del blocks
before = rss_mb()
release_free_memory()
print(before, rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_memory_freed_in_the_middle_of_the_heap_goes_back_to_the_system_when_released() -> None:
    before, after = _numbers_printed(_RSS_BEFORE_AND_AFTER_RELEASE)
    assert after < before - 100  # MB of the 196 freed


_HEAP_TOP_AFTER_LARGE_FREES = """
import ctypes, sys
from dandi_icechunk.upload.allocator import tune_malloc

if sys.argv[1] == "tuned":  # none of them set in the environment: all three made
    assert tune_malloc() == ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

def used(size):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    return block

libc.free(used(30 << 20))  # a large block freed: glibc's own thresholds rise to 30 and 60 MiB
blocks = [used(1 << 20) for _ in range(48)]  # from the top of the heap
before = rss_mb()
for block in reversed(blocks):
    libc.free(block)
print(before, rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_an_upload_process_hands_back_free_heap_top_whatever_large_blocks_it_freed_before() -> None:
    before, after = _numbers_printed(_HEAP_TOP_AFTER_LARGE_FREES, "glibc's defaults")
    assert after > before - 8  # the 48 MiB freed stay in the process
    before, after = _numbers_printed(_HEAP_TOP_AFTER_LARGE_FREES, "tuned")
    assert after < before - 30  # MiB of the 48 freed

"""A selector process keeps large buffers in glibc's heap, unless the environment says
otherwise."""

from __future__ import annotations

import subprocess
import sys

import pytest

from selector_service.allocator import keep_large_buffers

# A process allocates a 1 MiB block and counts glibc's mmap'd blocks (mallinfo2.hblks) before
# and after: one more by default, none once the threshold is raised (the block is in the heap).
PROBE = """
import ctypes, sys
from selector_service.allocator import keep_large_buffers
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
if sys.argv[1] == "raised":
    assert keep_large_buffers()
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
after = libc.mallinfo2().hblks
libc.free(block)
print(after - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.parametrize(("mode", "want"), [("default", "1"), ("raised", "0")])
def test_a_1_mib_block_is_mapped_by_default_and_in_the_heap_once_raised(mode: str,
                                                                        want: str) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"} | _pythonpath())
    assert out.stdout.strip() == want


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_large_buffers() is sys.platform.startswith("linux")  # nothing to set


def _pythonpath() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME")}

"""``benchmarks/speed.py``'s ``--malloc tuned``: large blocks stay on glibc's heap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

# Counts glibc's mmapped blocks (mallinfo2().hblks) while one 64 MiB block is held.
PROBE = """
import ctypes, sys
sys.path.insert(0, {benchmarks!r})
import speed
tuned = speed.tune_malloc() if sys.argv[1] == "tuned" else None
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
        "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
before = libc.mallinfo2().hblks
block = libc.malloc(64 * 1024 * 1024)
print(tuned, libc.mallinfo2().hblks - before)
libc.free(ctypes.c_void_p(block))
"""


def probe(mode: str) -> str:
    code = PROBE.format(benchmarks=str(BENCHMARKS))
    run = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tuned_malloc_keeps_a_64_mib_block_on_the_heap():
    assert probe("default") == ["None", "1"]  # above glibc's threshold: its own mapping
    assert probe("tuned") == ["True", "0"]  # under the 256 MiB threshold: from the heap

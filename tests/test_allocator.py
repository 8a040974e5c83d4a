"""The CPU allocator setting: freed activation-sized blocks stay in the process for reuse."""

import subprocess
import sys

import pytest

PROBE = """
import sys, torch
from supermask.compat import keep_freed_memory
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
before = rss_kib()
block = torch.ones(64 * 2**20 // 4)  # 64 MiB, above glibc's default mmap threshold
del block
print(applied, rss_kib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_stay_in_the_process_only_when_asked():
    def probe(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.split()
        return out[0] == "True", int(out[1])

    applied, kept_kib = probe("keep")
    if not applied:
        pytest.skip("not glibc")
    _, default_kib = probe("default")
    assert kept_kib >= 60 * 1024  # the 64 MiB block is still mapped, ready for the next step
    assert default_kib < 16 * 1024  # by default glibc unmaps it at once

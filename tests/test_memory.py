"""A build hands what a stage freed back to the system: on glibc, freed tensors the size
of a large model's weight matrices stay in the heap (and resident) until trimmed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgecompress import memory

# In a fresh process: what the heap holds depends on everything allocated before.
SCENARIO = """
import json, torch
from edgecompress import memory
from edgecompress.runtime.memory import current_rss_bytes
mib = 2**20
# A freed 16 MiB tensor (mmapped) lifts glibc's mmap threshold: the 8 MiB ones after it
# come from the heap, as a large model's weight copies do.
big = torch.ones(4 * mib)
del big
freed, kept = [], []
for _ in range(48):  # a live tensor after each freed one: holes the heap cannot shrink
    freed.append(torch.ones(2 * mib))
    kept.append(torch.ones(1024))
before = current_rss_bytes()
del freed
after_free = current_rss_bytes()
memory.release()
print(json.dumps([before, after_free, current_rss_bytes()]))
"""


@pytest.mark.skipif(memory._libc() is None, reason="malloc_trim is glibc's (Linux only)")
def test_release_returns_freed_tensors_to_the_system() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    before, after_free, after_release = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    # 48 x 8 MiB = 384 MiB freed: still resident after del, gone after release.
    assert before - after_free < 100 * mib, (before, after_free)
    assert after_free - after_release > 300 * mib, (after_free, after_release)

"""glibc's allocator tuned for a training loop (raypar.malloc): large blocks freed at the end of a step stay with the
process, so the next step does not fault its pages in again."""
import os
import subprocess
import sys

import pytest

STEPS = """
import sys
import torch
from raypar.malloc import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None

def faults():
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])     # minor page faults so far

def step():                        # a step's pattern: large tensors made, written, all freed at its end
    held = [torch.empty(2**19).fill_(1.0) for _ in range(8)]     # 8 x 2 MiB
    del held

step(); step()
before = faults()
for _ in range(10):
    step()
print(took, (faults() - before) / 10)
"""


def _faults_per_step(mode: str, **env) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, **env})
    took, per_step = out.stdout.split()
    return took, float(per_step)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_freed_memory_is_kept_for_the_next_step():
    took, kept = _faults_per_step("keep")
    _, default = _faults_per_step("default")
    assert took == "True"
    assert default > 100             # part of the 16 MiB given back to the system and faulted in again each step
    assert kept < default / 10, (kept, default)
    took, opted_out = _faults_per_step("keep", RAYPAR_KEEP_FREED_MEMORY="0")      # the opt-out: glibc's defaults
    assert took == "False" and opted_out > 100

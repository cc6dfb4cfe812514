"""Freed memory kept in the process for the next step: glibc's allocator tuned for a training loop.

A training step allocates and frees the same large tensors every step: activations, gradients, the interface tensors
a process receives. glibc serves a block above its mmap threshold with a fresh mapping and gives freed memory at the
top of its heap back to the system once more than its trim threshold lies free there (both start at 128 KiB and rise
as large blocks come and go). Either way the next step writes to new pages, and each 4 KiB page costs a page fault
that zeroes it. Keeping a step's freed memory for the next step removes most of those faults
(``benchmarks/throughput/page_faults.py``; figures in
benchmarks/throughput/README.md).

The price: freed memory stays with each process, up to ``TRIM_THRESHOLD`` at the top of each of glibc's heaps (a few per cent of peak RSS). ``RAYPAR_KEEP_FREED_MEMORY=0`` in a process's environment leaves glibc's defaults
alone there (for a measurement, or a process short of memory). A time profile (``PararealNet(balance="time")``,
``raypar plan``) keeps freed memory in its process too, as the run it times will. Each process reads the variable
from its own environment: for the fine actors on a cluster, set it where ``ray start`` runs or in the job's
``runtime_env``.
"""
from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20                      # the largest glibc takes on a 64-bit machine
TRIM_THRESHOLD = 128 * 2**20


def keep_freed_memory() -> bool:
    """Serve blocks up to ``MMAP_THRESHOLD`` from the heap and keep up to ``TRIM_THRESHOLD`` of freed memory there,
    in this process from now on. True where it took effect (glibc); elsewhere, or with
    ``RAYPAR_KEEP_FREED_MEMORY=0``, nothing changes."""
    if os.environ.get("RAYPAR_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt         # the C library this process runs on
    except (OSError, AttributeError, TypeError):   # none to load (Windows), or one without mallopt (macOS)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    took = [mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)]   # (musl: 0, 0)
    return all(took)

"""Freed memory kept in the process for the next step: glibc's allocator tuned for a training loop.

A training step allocates and frees the same large tensors every step: activations, gradients, the interface tensors
a process receives. glibc serves a block above its mmap threshold with a fresh mapping and gives freed memory at the
top of its heap back to the system once more than its trim threshold lies free there (both start at 128 KiB and rise
as large blocks come and go). A thread other than the main one allocates from an arena of its own, made of heaps of
at most ``HEAP_SIZE``; glibc unmaps such a heap the moment all of it is free, whatever the trim threshold, unless the
heap before it lacks ``M_TOP_PAD`` of room. Ray Train runs the training function in a thread of its own, so the
driver's step, once it needs more than one heap, may unmap whole heaps and fault them in again every step.
Either way the next step writes to new pages, and each 4 KiB page costs a page fault that zeroes it. Keeping a step's
freed memory for the next step removes most of those faults (``benchmarks/throughput/page_faults.py``; figures in
benchmarks/throughput/README.md and benchmarks/train-path/README.md).

The price: freed memory stays with each process: up to ``TRIM_THRESHOLD`` at the top of the main heap, and every heap
a thread's arena grew to, which a training loop fills again each step anyway. ``RAYPAR_KEEP_FREED_MEMORY=0`` in a
process's environment leaves glibc's defaults alone there (for a measurement, or a process short of memory). A time
profile (``PararealNet(balance="time")``, ``raypar plan``) keeps freed memory in its process too, as the run it times
will. Each process reads the variable from its own environment: for the fine actors on a cluster, set it where ``ray
start`` runs or in the job's ``runtime_env``.
"""
from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3     # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20                      # the largest glibc takes on a 64-bit machine
TRIM_THRESHOLD = 128 * 2**20
HEAP_SIZE = 2 * MMAP_THRESHOLD                   # the largest heap of a thread's arena (glibc's HEAP_MAX_SIZE)


def keep_freed_memory() -> bool:
    """Serve blocks up to ``MMAP_THRESHOLD`` from the heaps, keep up to ``TRIM_THRESHOLD`` of freed memory at the top
    of the main heap and every heap of a thread's arena (a top pad of ``HEAP_SIZE``), in this process from now on.
    True where it took effect (glibc); elsewhere, or with ``RAYPAR_KEEP_FREED_MEMORY=0``, nothing changes."""
    if os.environ.get("RAYPAR_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt         # the C library this process runs on
    except (OSError, AttributeError, TypeError):   # none to load (Windows), or one without mallopt (macOS)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    took = [mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            mallopt(M_TOP_PAD, HEAP_SIZE)]                                              # (musl: 0, 0, 0)
    return all(took)

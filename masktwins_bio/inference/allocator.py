"""Tune glibc's malloc for our two workloads: prediction (few arenas) and training (no
returning freed tensor memory to the kernel).

Prediction: keep glibc's malloc from holding freed block buffers in one arena per thread.

The engine passes blocks of a few MB between a dozen threads (reader, forward streams, blender,
writers, the compressor's pool). glibc gives each thread that contends for the heap its own
arena, up to 8 per core, and memory freed into one arena is reused only by allocations that land
in that arena, so the process keeps several blocks' worth of freed memory per thread. Measured on
a 4096² float32 volume (8×512² blocks, 16 threads): peak RSS 1.0–1.2 GB with the default, 0.7–0.8
GB with two arenas, at the same speed (the forward, not malloc, is the hot path).

``MALLOC_ARENA_MAX`` does the same but must be set before the interpreter starts; ``mallopt``
works from inside, for arenas created afterwards, so it is called before the threads start.
A user's own ``MALLOC_ARENA_MAX`` wins. Elsewhere (musl, macOS, Windows) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # from glibc's malloc.h
ARENAS = 2
MMAP_THRESHOLD = 256 * 2**20  # tensors below this come from the heap, and are reused from it
TRIM_THRESHOLD = 2**30        # free heap kept for reuse before any is returned to the kernel


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory() -> bool:
    """Training: let glibc reuse freed tensor memory instead of unmapping it and faulting fresh
    pages in on the next step. By default activations of a few MB are mmapped and unmapped
    every step (or trimmed off the heap's top); a CPU-preset run took 40.9 M minor page faults
    and 90 s of system time. With these thresholds `tools/bench_train.py --device cpu` (two
    threads, idle machine, two runs each) took 4.7x fewer faults, a third of the system time
    and 4-8% less time a MaskTwins step (medians of 15 steps), at the same peak RSS; a whole
    CPU-preset run kept 6 s of system time (90 before) but was not measurably faster. A user's
    own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` wins; elsewhere it does nothing."""
    if not sys.platform.startswith("linux") or \
            {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return False
    try:
        libc = _libc()
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas; True when the cap was set."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        return bool(_libc().mallopt(M_ARENA_MAX, int(arenas)))
    except (OSError, AttributeError):  # not glibc
        return False

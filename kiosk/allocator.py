"""glibc's allocator, told to keep the memory a process frees for its next request.

Why: a process that handles images allocates and frees blocks of megabytes per request (a
1 MP lean Predict answers with 6 MB of maps; ONNX Runtime allocates its buffers anew each
run). glibc gives blocks that large to the kernel (``mmap``) and hands them back on ``free``,
so every request faults its pages in again: serialising a 6 MB reply took 6.5 ms where the
same bytes from reused memory take 2 ms, and the served 1 MP Predict took 1.17x the model in a
process of its own instead of 1.10x. Blocks up to :data:`MMAP_THRESHOLD` are served from the
heap instead, and up to :data:`TRIM_THRESHOLD` of free heap is kept, so a steady stream of
same-sized requests reuses the same pages. What it costs: resident memory stays up to
``TRIM_THRESHOLD`` above what is in use after a large request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MMAP_THRESHOLD = 32 * MIB
"""Largest block served from the heap (glibc's own most, for a threshold it adjusts itself)."""
TRIM_THRESHOLD = 128 * MIB
"""Free memory at the top of the heap kept for reuse rather than returned to the kernel."""
OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
"""glibc's own environment variables: where an operator set either, their choice stands."""

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Set the two thresholds through ``mallopt``; False (nothing changed) on a C library
    without it, or where the operator's environment sets them."""
    if any(name in os.environ for name in OPERATOR_SETTINGS):
        return False
    path = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(path).mallopt if path else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    if not done:
        log.warning("glibc refused the allocator thresholds; freed memory goes back at once")
    return done

"""glibc's allocator, set for what a process does: one home for both policies.

Processes that handle images allocate and free blocks of megabytes per request, and glibc's
defaults suit neither kind of Kiosk process:

- A model server answers a steady stream of requests of about the same size (a 1 MP lean
  Predict answers with 6 MB of maps; ONNX Runtime's buffers come and go with each run). glibc
  gives blocks that large to the kernel (``mmap``) and hands them back on ``free``, so every
  request faults its pages in again: serialising a 6 MB reply took 6.5 ms where the same bytes
  from reused memory take 2 ms. :func:`keep_freed_memory` serves blocks up to 32 MiB from the
  heap and keeps up to 128 MiB of it free for the next request.
- A consumer must stay flat job after job, since many run to a node. glibc raises its mmap
  threshold each time a large block is freed, so image-sized arrays end up on the heap and stay
  there, and it gives each thread an arena, so what the thread that finishes one job frees is
  not reused by the thread predicting the next. :func:`keep_memory_flat` keeps buffers over
  8 MiB in mappings of their own, which go back to the OS when freed, and one shared arena.
  Below that it keeps up to 32 MiB of freed heap: at glibc's 128 KiB a consumer gave its
  megabyte arrays back after each step of a job and faulted them in again at the next, 2,800
  page faults and 7 % of its CPU per 512x512 image (96 faults with 32 MiB kept).

Where the operator set glibc's own variables (``MALLOC_*_``, ``GLIBC_TUNABLES``), theirs stand.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

MIB = 1024 * 1024
OPERATOR_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_ARENA_MAX",
    "GLIBC_TUNABLES",
)
"""glibc's own environment variables: where an operator set any, the allocator is theirs."""

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

SERVING = {M_MMAP_THRESHOLD: 32 * MIB, M_TRIM_THRESHOLD: 128 * MIB}
"""The model server's: blocks up to 32 MiB (glibc's most) from the heap, 128 MiB kept free."""
FLAT = {M_MMAP_THRESHOLD: 8 * MIB, M_TRIM_THRESHOLD: 32 * MIB, M_ARENA_MAX: 1}
"""A consumer's: blocks over 8 MiB in their own mappings, 32 MiB of freed heap kept, one arena
for every thread."""


def keep_freed_memory() -> bool:
    """The model server's policy (:data:`SERVING`); False where nothing was changed."""
    return _mallopt(SERVING)


def keep_memory_flat() -> bool:
    """A consumer's policy (:data:`FLAT`); False where nothing was changed."""
    return _mallopt(FLAT)


def _mallopt(settings: dict[int, int], libc: ctypes.CDLL | None = None) -> bool:
    """Each ``mallopt(parameter, value)`` of ``settings``: True when glibc took them all;
    False on another C library or where the operator's environment sets the allocator."""
    if not sys.platform.startswith("linux") or any(v in os.environ for v in OPERATOR_SETTINGS):
        return False
    try:
        mallopt = (libc or ctypes.CDLL(None)).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    taken = [mallopt(parameter, value) == 1 for parameter, value in settings.items()]
    if not all(taken):
        log.warning("glibc refused some allocator settings %s", settings)
    return all(taken)

"""Keep freed memory in the process: no page faults for a step's re-allocated tensors.

On Linux with glibc, a freed block larger than the dynamic mmap threshold goes back to the
kernel (``munmap``), and so does free space above the top of the heap larger than the
trim threshold. A meta-training step allocates and frees the same large tensors every task
(a Conv4 query batch's first-layer activations are 15 MB), so each task faults the same
pages in again: 12,000 minor page faults per task of a second-order Conv4 inner-loop step, about
a quarter of its CPU time on the sandboxed machines the benchmarks ran on (about 2.6 us a
fault). The first-order step's smaller peak stays under the thresholds and faults nothing
(docs/speed.md).

`keep_freed_memory` raises both thresholds (``mallopt``), so freed blocks stay in the heap
and are reused: the same values computed in the same order, only without the faults. The
process's peak memory is unchanged (the peak is reached either way); its resident size no
longer shrinks after a peak. The trainer calls it when ``train.keep_freed_memory: true``
(off by default: on an idle machine it measured neutral to 10% slower, docs/speed.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap and are reused
TRIM_THRESHOLD_BYTES = (1 << 31) - 1  # the heap is never trimmed (the largest int value)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None  # musl has no mallopt


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse; False where it cannot (no glibc).

    Process-wide and idempotent; it changes where blocks come from, never a value.
    """
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    trimmed = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    mapped = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    if not mapped:  # older glibc caps the threshold at 32 MiB (HEAP_MAX_SIZE / 2)
        mapped = libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    return bool(trimmed and mapped)

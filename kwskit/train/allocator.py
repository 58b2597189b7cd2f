"""glibc's allocator tuned for a training loop that frees and re-allocates the same tensors.

By default glibc serves every allocation above ``M_MMAP_THRESHOLD`` (128 KiB at start, adapted
upwards up to 32 MiB) with a fresh ``mmap`` and returns it to the OS on free, and trims the
heap top above ``M_TRIM_THRESHOLD``. A training step of a small CNN allocates and frees a few
hundred activation tensors of 0.1-15 MB each, so every step maps and unmaps the same memory
again and pays a page fault per 4 KiB touched: 10-30 K minor faults and 15-50 ms of system
time per BC-ResNet step at batch 100 (benchmarks/train_step_profile.py). Serving those tensors
from the heap and never trimming it keeps the pages mapped: ~150 faults per step, 4-15% faster
steps and 7-10% more clips/s per BC-ResNet-1 epoch on a 2-core CPU, at the price of keeping
a step's peak memory reserved between steps and until the process exits (the memory a
step needs anyway).
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
MMAP_THRESHOLD = 1 << 30  # only allocations above 1 GiB still get their own mapping
TRIM_THRESHOLD = (1 << 31) - 1  # never give the heap top back


def keep_freed_memory() -> bool:
    """Set glibc's thresholds as above for this process; False (nothing changed) where the C
    library is not glibc or has no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on error (and does not exist outside glibc)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

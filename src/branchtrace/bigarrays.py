"""Large arrays in anonymous memory of their own: reserved but not committed, or
backed by huge pages.

A trace of 50M branches decodes into more than a gigabyte. Faulting that in 4 KiB
pages costs 0.3-0.8 s on a 2-core KVM guest (one fault per page); in 2 MiB pages
(transparent huge pages, asked for with ``MADV_HUGEPAGE``, which most kernels grant on
request) a few hundred faults do. The arrays are ordinary writable numpy arrays over an ``mmap``
that lives as long as they do.
"""

from __future__ import annotations

import mmap
import sys

import numpy as np

#: Arrays smaller than this come from numpy's allocator: huge pages would not pay.
HUGE_MIN_BYTES = 64 << 20
#: Python < 3.13 does not name it; the value is Linux's on every architecture we run.
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)


def reserve(count: int, dtype: np.dtype) -> np.ndarray | None:
    """``count`` rows of memory that is reserved, not committed (``MAP_NORESERVE``, in
    huge pages where the kernel offers them): a page becomes resident only when written,
    so a size a file only claims costs address space, not memory. None when the system
    refuses to reserve that much (strict overcommit)."""
    nbytes = count * dtype.itemsize
    if nbytes == 0:
        return np.empty(0, dtype)
    area = _map(nbytes, MAP_NORESERVE)
    return None if area is None else np.frombuffer(area, dtype, count)


def big_empty(count: int, dtype: np.dtype) -> np.ndarray:
    """Like ``np.empty(count, dtype)``, in huge pages when it is large. Raises
    MemoryError when the system has not that much memory to give."""
    nbytes = count * dtype.itemsize
    if nbytes < HUGE_MIN_BYTES:
        return np.empty(count, dtype)
    area = _map(nbytes, 0)
    if area is None:
        return np.empty(count, dtype)       # raises MemoryError if it cannot be had
    return np.frombuffer(area, dtype, count)


def _map(nbytes: int, extra_flags: int) -> mmap.mmap | None:
    try:
        area = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | extra_flags)
    except (OSError, OverflowError, ValueError, MemoryError):
        return None
    try:
        area.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):
        pass
    return area

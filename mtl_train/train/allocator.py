"""Keep glibc's malloc from returning training-step buffers to the kernel between steps.

A CPU training step allocates and frees the same large tensors every step (the [B, E*H]
activations of the experts and their gradients: 16 MB each on the bench workload). glibc's
malloc serves blocks above ``M_MMAP_THRESHOLD`` with a fresh ``mmap`` and unmaps them on free
(the dynamic threshold only rises after such a free), and trims the top of the heap above
``M_TRIM_THRESHOLD``; either way the next step touches new pages, and the kernel zeroes every
4 KiB page on its first write. On the bench MMoE that was ~7,700 minor page faults and ~28 ms
of system CPU time per step, measured with ``getrusage`` (see docs/RESULTS.md, issue 5).

:func:`tune_malloc` raises both thresholds with ``mallopt`` so that freed blocks stay in the
process heap and are reused by the next step (0 page faults per step in the steady state).
This is the role jemalloc or tcmalloc play when preloaded (PyTorch's CPU performance guide),
done without an extra library. The cost is that memory freed by a step is kept by the process
rather than returned; peak RSS is unchanged, since those blocks are in use at the peak anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
# glibc caps M_MMAP_THRESHOLD at HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit systems
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20

_done = False


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring).

    Blocks up to 32 MiB then come from the heap, and up to 1 GiB of free heap top is kept;
    larger tensors are still mapped and unmapped per allocation. Idempotent.

    Returns:
        True when the settings were applied; False on a platform without glibc (macOS,
        Windows, musl), where nothing is changed.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(p, v) == 1 for p, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                              (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    if not ok:
        log.debug("mallopt refused the allocator settings; glibc defaults kept")
    _done = ok
    return ok

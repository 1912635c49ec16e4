"""The process and its machine: how much memory the process may use and the data may take,
and the allocator settings of a training process. Imported by data and train alike; imports nothing of mtl_train.

Malloc tuning: keep glibc's malloc from returning training-step buffers to the kernel between
steps.

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
import os
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


# ---- memory budget ------------------------------------------------------------------------------
def cgroup_limit_files() -> list[str]:
    """The memory-limit files of this process's cgroup and of every cgroup above it (cgroup v2
    ``memory.max``; v1 ``memory.limit_in_bytes``), read from /proc/self/cgroup: a batch
    scheduler (Slurm, systemd slices) sets the limit on a nested cgroup."""
    files = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        return files
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        parts = [p for p in path.split("/") if p]
        for k in range(len(parts), 0, -1):
            sub = "/".join(parts[:k])
            if controllers == "":  # v2
                files.append(f"/sys/fs/cgroup/{sub}/memory.max")
            elif "memory" in controllers.split(","):  # v1
                files.append(f"/sys/fs/cgroup/memory/{sub}/memory.limit_in_bytes")
    return files


LIMIT_ENV = "MTL_TRAIN_MEMORY_LIMIT_MB"
"""Environment variable: when set, the memory limit in MiB this process takes as its own
(overrides the physical memory and the cgroup limits; for tests and for a user who shares
the machine)."""


def memory_limit() -> tuple[int, str]:
    """(bytes, source): the memory this process may use at most, and where that figure comes
    from: ``$MTL_TRAIN_MEMORY_LIMIT_MB`` MiB when set (source ``"MTL_TRAIN_MEMORY_LIMIT_MB"``),
    else the machine's physical memory (``"physical memory"``), or the lowest memory limit of
    its cgroups (``"cgroup limit"``, see :func:`cgroup_limit_files`) where that is lower."""
    env = os.environ.get(LIMIT_ENV, "").strip()
    if env:
        return int(float(env) * (1 << 20)), LIMIT_ENV
    try:
        total, source = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        total, source = 16 << 30, "assumed 16 GiB"
    for f in cgroup_limit_files():
        try:
            limit = open(f).read().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < total:
            total, source = int(limit), "cgroup limit"
    return total, source


def memory_held() -> int:
    """Bytes this process holds now: its resident set size (``/proc/self/statm``; the data
    loaded so far, the libraries, the interpreter), 0 where that file does not exist."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):  # pragma: no cover
        return 0


def memory_budget(budget_mb: int | None = None) -> int:
    """Bytes the in-memory data may take: ``budget_mb`` MiB when given, else a quarter of the
    memory this process may use (:func:`memory_limit`), leaving the rest to the model, its
    optimizer state and the training step."""
    if budget_mb is not None:
        return int(budget_mb) << 20
    return memory_limit()[0] // 4


# ---- start-up: what a process does before its first step and after its last one ----------------

def progress_bar(**kw):
    """``tqdm(**kw)`` without tqdm's monitor thread (``tqdm.monitor_interval = 0``): tqdm starts
    that thread when any bar is created, a disabled one too (``disable=True``), to refresh bars
    whose loop stalls; the bars of mtl-train are updated by the code itself, and a process that
    shows no progress (``trainer.progress=false``, small splits) starts no thread at all."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0
    return tqdm(**kw)


_frozen = False


def pause_gc() -> None:
    """Turn the cyclic garbage collector off while the process imports its modules (called
    first thing by the CLI): torch, Hydra and TensorBoard allocate ~1M long-lived objects, and
    each full collection triggered on the way traverses all of them again, for nothing (imports
    make no garbage cycles worth collecting). :func:`resume_gc` turns it back on."""
    import gc

    gc.disable()


def resume_gc() -> None:
    """After the imports (before any data is read): move every object alive now into the
    collector's permanent generation (``gc.freeze``), so that no later collection, nor the one
    at interpreter exit, traverses them again, and turn the collector back on. Only the first
    call freezes: a sweep runs many jobs in one process, and a later job's freeze would also
    pin an earlier job's garbage for good. Idempotent; the collector runs normally from here on
    (training and evaluation create reference cycles, e.g. exceptions, that it must free)."""
    import gc

    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True
    gc.enable()

"""mtl_train.system: the malloc tuning and the memory budget."""
import os
import subprocess
import sys

import pytest

from mtl_train.system import memory_budget, tune_malloc

# a step-like cycle: two live 16 MiB tensors (the size of the bench MMoE's [B, E*H] activations),
# every page written, then both freed
CYCLE = """
import resource, sys, torch
from mtl_train.system import tune_malloc
if sys.argv[1] == "1":
    assert tune_malloc()
def cycle():
    a = torch.empty(4 << 20); a.fill_(1.0); b = a * 2; del a, b
for _ in range(30):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_cycle(tuned: bool) -> float:
    """Minor page faults per cycle, after 30 warm-up cycles, in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", CYCLE, "1" if tuned else "0"], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_malloc_reuses_freed_blocks_instead_of_faulting_new_pages():
    assert tune_malloc() is True and tune_malloc() is True  # idempotent
    # with glibc's defaults this cycle costs 0 or 8,160 faults (2 x 16 MiB of 4 KiB pages), by
    # where its dynamic mmap threshold settles; tuned, the freed blocks are always reused
    assert _faults_per_cycle(tuned=True) < 50


@pytest.mark.parametrize("proc, files", [
    ("0::/\n", {"/sys/fs/cgroup/memory.max": "2147483648\n"}),  # the container's own cgroup view
    ("0::/system.slice/job_7/step_0\n", {"/sys/fs/cgroup/memory.max": "max\n",  # Slurm-like nesting, v2
                                          "/sys/fs/cgroup/system.slice/job_7/memory.max": "2147483648\n"}),
    ("4:memory:/slurm/uid_0/job_7\n1:cpu:/\n", {"/sys/fs/cgroup/memory/slurm/uid_0/job_7/memory.limit_in_bytes":
                                                 "2147483648\n"}),  # v1
])
def test_memory_budget_is_a_quarter_of_the_lower_of_ram_and_the_cgroup_limits(monkeypatch, proc, files):
    import builtins
    import io

    real_open = builtins.open

    def fake_open(path, *a, **k):
        if str(path) == "/proc/self/cgroup":
            return io.StringIO(proc)
        if str(path) in files:
            return io.StringIO(files[str(path)])
        if str(path).startswith("/sys/fs/cgroup/"):
            raise OSError("no such file")
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert memory_budget(None) == min(
        2 << 30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 4
    assert memory_budget(100) == 100 << 20


START_UP = """
import gc, sys, threading, torch
from mtl_train import system
system.pause_gc()
assert not gc.isenabled()
system.resume_gc()
frozen = gc.get_freeze_count()
system.resume_gc()  # a second job of a sweep: nothing more is frozen
assert gc.isenabled() and frozen > 0 and gc.get_freeze_count() == frozen
bar = system.progress_bar(total=3, disable=True)
bar.close()
assert not any(type(t).__name__ == "TMonitor" for t in threading.enumerate())
print("ok")
"""


def test_start_up_helpers_freeze_once_and_start_no_thread():
    out = subprocess.run([sys.executable, "-c", START_UP], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok"]

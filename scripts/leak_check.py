"""Leak check: many tiny jobs of one sweep in one process (Hydra's basic launcher) must leave RSS,
open files and threads at the level of the first few jobs.

    python scripts/leak_check.py                 # 50 jobs (seed=0..49), tiny synthetic data
    python scripts/leak_check.py --jobs 20 --json leak.json

After every job a Hydra callback (``on_job_end``) records the process's resident memory
(``VmRSS`` of /proc/self/status), its open file descriptors (/proc/self/fd) and its live threads.
The script prints them per job and compares the last job with job ``--ref`` (default 5: the
first jobs warm allocator pools and import caches). It exits 1 when open files or threads grew at
all, or RSS grew by more than ``--rss-slack-mb`` (default 50 MB), 2 when a job failed, and 0
otherwise. The sweep goes to a new temporary directory unless ``--out`` names one.
Linux only (/proc).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time

from hydra.experimental.callback import Callback

SAMPLES: list[dict] = []


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class LeakProbe(Callback):
    """Hydra callback: one sample of RSS / open files / threads after each job."""

    def on_job_end(self, config, job_return=None, **kwargs) -> None:
        gc.collect()
        SAMPLES.append({
            "job": len(SAMPLES),
            "rss_mb": round(_rss_mb(), 1),
            "open_files": len(os.listdir("/proc/self/fd")),
            "threads": threading.active_count(),
            "t": round(time.perf_counter(), 2),
        })
        s = SAMPLES[-1]
        if os.environ.get("MTL_LEAK_PROBE_OUT"):  # tests run the probe inside `mtl-train -m ...`
            with open(os.environ["MTL_LEAK_PROBE_OUT"], "a") as f:
                f.write(json.dumps(s) + "\n")
        print(f"[leak_check] job {s['job']:3d}: rss {s['rss_mb']:8.1f} MB  open files {s['open_files']:3d}  "
              f"threads {s['threads']:2d}", file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--ref", type=int, default=5, help="job whose numbers are the baseline (0-based)")
    p.add_argument("--rss-slack-mb", type=float, default=50.0)
    p.add_argument("--out", help="sweep directory (default: a new temporary directory)")
    p.add_argument("--json", help="write the samples here")
    p.add_argument("--progress", action="store_true", help="also drive tqdm bars (trainer.progress=true)")
    args = p.parse_args()

    import tempfile

    from mtl_train import cli

    out = args.out or tempfile.mkdtemp(prefix="mtl_leak_check_")

    sys.argv = [
        "mtl-train", "-m", f"seed=range(0,{args.jobs})",
        "dataset.train_rows=2000", "dataset.val_rows=500", "dataset.test_rows=500",
        "trainer.epochs=1", "trainer.batch_size=256", "trainer.eval_batch_size=4096", "trainer.num_threads=1",
        f"trainer.progress={str(args.progress).lower()}", "trainer.log_every_steps=2",
        f"hydra.sweep.dir={out}", "hydra/job_logging=default",
        "+hydra.callbacks.leak_probe._target_=__main__.LeakProbe",
    ]
    try:
        cli.main()
    except SystemExit as e:  # mtl-train exits 2 after a sweep with failed jobs: nothing was measured
        print(f"leak_check: FAILED: the sweep's jobs failed (exit {e.code}); see {out}/*/error.txt")
        sys.exit(2)
    ref, last = SAMPLES[min(args.ref, len(SAMPLES) - 1)], SAMPLES[-1]
    d_rss = last["rss_mb"] - ref["rss_mb"]
    d_files = last["open_files"] - ref["open_files"]
    d_threads = last["threads"] - ref["threads"]
    print(f"leak_check: {len(SAMPLES)} jobs; job {ref['job']} -> job {last['job']}: rss {ref['rss_mb']:.1f} -> "
          f"{last['rss_mb']:.1f} MB ({d_rss:+.1f}), open files {ref['open_files']} -> {last['open_files']} "
          f"({d_files:+d}), threads {ref['threads']} -> {last['threads']} ({d_threads:+d}); "
          f"max rss {max(s['rss_mb'] for s in SAMPLES):.1f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(SAMPLES, f, indent=1)
    ok = d_files <= 0 and d_threads <= 0 and d_rss <= args.rss_slack_mb
    print("leak_check: OK" if ok else "leak_check: LEAK")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

"""Helpers shared by the reproduce_* scripts: run mtl-train in a subprocess, read metrics.json."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_mtl(args: list[str], run_dir: Path, threads: int = 1) -> dict:
    """Run ``python -m mtl_train <args>`` with its run directory at ``run_dir``; return metrics.json.

    Raises:
        RuntimeError: the run failed (its stderr tail is in the message).
    """
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").exists():  # already done (a rerun of the script resumes)
        return json.loads((run_dir / "metrics.json").read_text())
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "mtl_train", *args, f"hydra.run.dir={run_dir}", "trainer.progress=false",
           f"trainer.num_threads={threads}"]
    if (run_dir / "checkpoints" / "last.pt").exists():  # an interrupted run: continue it
        cmd.append(f"trainer.resume={run_dir}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr[-2000:]}")
    return json.loads((run_dir / "metrics.json").read_text())


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    n = len(values)
    m = sum(values) / n
    sd = (sum((v - m) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return m, sd

"""Start-up and overhead benchmark of mtl-train (issue 18, item 3): the seconds a user waits
outside the training step.

Figures, each the median of ``--repeat`` runs (the runs of the targets interleaved, so that a
shared machine's drifting speed hits both alike):

  help        wall seconds of ``python -m mtl_train --help`` (goal: under 1 s), and whether torch
              was imported for it (``-X importtime``);
  first_step  wall seconds from launching the default run (``python -m mtl_train``: synthetic
              data, MMoE, batch 1024) to the log line of its first training step (goal: under
              3 s; the run is then killed);
  sweep       a ``-m`` sweep of ``--sweep-jobs`` tiny jobs (2,000 train rows, one epoch): its
              wall seconds minus the jobs' training loops (``run.json: train_loop_seconds``),
              per job (goal: under 1 s);
  eval/train  in one process, on the default run's model and data: evaluation samples/s
              (``evaluate`` on val) over training samples/s (the train steps of one epoch)
              (goal: at least 3).

Every target's package is byte-compiled first and the runs import from cached bytecode, as
Python does by default (a ``PYTHONDONTWRITEBYTECODE`` in the environment is dropped for them):
the figures are those of every launch after the first.

``--before DIR`` measures a second checkout too (its ``.venv/bin/python``, e.g. the main branch
at /work/main), interleaved with this one, and prints before/after ratios.

Usage: python scripts/bench_startup.py [--before DIR] [--repeat N] [--sweep-jobs N] [--skip-sweep]
       python scripts/bench.py startup [same options]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    # Python's default: import from cached bytecode (see compile_package); a PYTHONDONTWRITEBYTECODE
    # left in the environment (some sandboxes and CI images set it) makes every launch recompile
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_package(py: str, cwd: str) -> str:
    """Byte-compile the mtl_train package ``py`` imports (``compileall``; where it is installed
    editable, its source folder), as ``pip install`` does for a regular install and as the first
    launch does by itself: the figures are those of every later launch. Returns its folder."""
    where = subprocess.run([py, "-c", "import mtl_train, os; print(os.path.dirname(mtl_train.__file__))"], cwd=cwd,
                           check=True, stdout=subprocess.PIPE, text=True, env=_env()).stdout.strip()
    subprocess.run([py, "-m", "compileall", "-q", where], cwd=cwd, check=True, stdout=subprocess.DEVNULL, env=_env())
    return where


def time_help(py: str, cwd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([py, "-m", "mtl_train", "--help"], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True, env=_env())
    return time.perf_counter() - t0


def help_imports_torch(py: str, cwd: str) -> bool:
    p = subprocess.run([py, "-X", "importtime", "-m", "mtl_train", "--help"], cwd=cwd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, env=_env())
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in p.stderr.splitlines())


def time_first_step(py: str, cwd: str, extra: list[str]) -> float:
    """Seconds from launch to the log line of the first training step (log_every_steps=1)."""
    cmd = [py, "-m", "mtl_train", "trainer.progress=false", "trainer.log_every_steps=1", *extra]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                         start_new_session=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if "train @ step 1:" in line:
                return time.perf_counter() - t0
        raise SystemExit(f"bench_startup: no first step in the output of {' '.join(cmd)}:\n{''.join(lines)[-2000:]}")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def time_sweep(py: str, cwd: str, jobs: int) -> dict:
    sweep_dir = Path(cwd) / f"sweep-{time.monotonic_ns()}"
    cmd = [py, "-m", "mtl_train", "-m", f"seed=range(0,{jobs})", "dataset.train_rows=2000", "dataset.val_rows=1000",
           "dataset.test_rows=1000", "trainer.epochs=1", "trainer.progress=false", f"hydra.sweep.dir={sweep_dir}"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"bench_startup: sweep failed:\n{p.stdout[-3000:]}")
    loops = [json.loads(f.read_text())["train_loop_seconds"] for f in sweep_dir.glob("*/run.json")]
    if len(loops) != jobs:
        raise SystemExit(f"bench_startup: {len(loops)} run.json files for {jobs} jobs in {sweep_dir}")
    return {"wall_s": wall, "loops_s": sum(loops), "per_job_overhead_s": (wall - sum(loops)) / jobs}


PROBE = r"""
import json, sys, tempfile, time
import torch
from hydra import compose, initialize_config_module
from mtl_train.config import validate
from mtl_train.data.datasets import load_dataset
from mtl_train.train.trainer import Trainer
from mtl_train.train.device import to_device
from mtl_train.train.evaluate import evaluate
with initialize_config_module(config_module="mtl_train.conf", version_base="1.3"):
    cfg = validate(compose(config_name="config", overrides=["trainer.progress=false"]))
data = load_dataset(cfg.dataset, cfg.seed)
tr = Trainer(cfg, data, tempfile.mkdtemp())
tr.model.train()
n = 0
for i, batch in enumerate(tr.loader):
    if i == 5:  # the first steps warm up (allocator, lazy inits): not the steady rate
        n, t0 = 0, time.perf_counter()
    batch = to_device(batch, tr.device)
    tr.train_step(batch)
    n += batch["labels"].shape[0]
train = n / (time.perf_counter() - t0)
evals = []
for _ in range(3):
    t0 = time.perf_counter()
    evaluate(tr.model, data.val, tr.device, cfg.trainer.eval_batch_size, "val")
    evals.append(len(data.val) / (time.perf_counter() - t0))
tr.logger.close()
print(json.dumps({"train_samples_per_s": train, "eval_samples_per_s": sorted(evals)[1]}))
"""


def eval_train_ratio(py: str, cwd: str) -> dict:
    p = subprocess.run([py, "-c", PROBE], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=_env())
    if p.returncode:
        raise SystemExit(f"bench_startup: eval probe failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["ratio"] = r["eval_samples_per_s"] / r["train_samples_per_s"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--before", help="another checkout to compare with (uses DIR/.venv/bin/python)")
    ap.add_argument("--python", default=sys.executable, help="this checkout's interpreter (default: this one)")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each figure; the median is reported")
    ap.add_argument("--sweep-jobs", type=int, default=20)
    ap.add_argument("--sweep-repeat", type=int, default=3, help="sweeps per target (default: %(default)s)")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-eval", action="store_true")
    a = ap.parse_args()
    targets = {"after": a.python}
    if a.before:
        targets = {"before": str(Path(a.before) / ".venv" / "bin" / "python"), **targets}
    res: dict = {name: {"help": [], "first_step": [], "sweep": [], "eval": []} for name in targets}
    print(f"bench_startup: load average at start {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mtl-startup-") as tmp:
        for name, py in targets.items():
            print(f"bench_startup: {name}: byte-compiled {compile_package(py, tmp)}", flush=True)
            time_help(py, tmp)  # warm the file cache of both once
            res[name]["help_imports_torch"] = help_imports_torch(py, tmp)
        for _ in range(a.repeat):
            for name, py in targets.items():
                res[name]["help"].append(time_help(py, tmp))
                res[name]["first_step"].append(time_first_step(py, tmp, []))
        if not a.skip_eval:
            for _ in range(3):
                for name, py in targets.items():
                    res[name]["eval"].append(eval_train_ratio(py, tmp))
        if not a.skip_sweep:
            for _ in range(a.sweep_repeat):
                for name, py in targets.items():
                    res[name]["sweep"].append(time_sweep(py, tmp, a.sweep_jobs))
    print(f"bench_startup: load average at end {os.getloadavg()} (a loaded machine inflates every figure)")
    med = {}
    for name, r in res.items():
        m = {"help_s": statistics.median(r["help"]), "first_step_s": statistics.median(r["first_step"])}
        if r["eval"]:
            m["eval_over_train"] = statistics.median(e["ratio"] for e in r["eval"])
            m["eval_samples_per_s"] = statistics.median(e["eval_samples_per_s"] for e in r["eval"])
            m["train_samples_per_s"] = statistics.median(e["train_samples_per_s"] for e in r["eval"])
        if r["sweep"]:
            m["sweep_overhead_per_job_s"] = statistics.median(s["per_job_overhead_s"] for s in r["sweep"])
            m["sweep_wall_s"] = statistics.median(s["wall_s"] for s in r["sweep"])
        med[name] = m
        print(f"{name:6s} --help {m['help_s']:.2f} s (runs: {', '.join(f'{x:.2f}' for x in r['help'])}; torch imported: "
              f"{r['help_imports_torch']}); launch to first step {m['first_step_s']:.2f} s "
              f"(runs: {', '.join(f'{x:.2f}' for x in r['first_step'])})")
        if r["eval"]:
            print(f"       eval {m['eval_samples_per_s']:.0f} samples/s / train {m['train_samples_per_s']:.0f} samples/s = "
                  f"x{m['eval_over_train']:.2f} (runs: {', '.join(format(e['ratio'], '.2f') for e in r['eval'])})")
        if r["sweep"]:
            print(f"       sweep of {a.sweep_jobs} jobs: wall {m['sweep_wall_s']:.1f} s, overhead "
                  f"{m['sweep_overhead_per_job_s']:.2f} s per job (runs: "
                  f"{', '.join(format(s['per_job_overhead_s'], '.2f') for s in r['sweep'])})")
    if "before" in med:
        b, f = med["before"], med["after"]
        print("after/before: " + ", ".join(f"{k} x{f[k] / b[k]:.2f}" for k in f if k in b and b[k]))
    out = Path(tempfile.gettempdir()) / "mtl-bench-startup.json"
    out.write_text(json.dumps({"medians": med, "runs": res}, indent=1))
    print(f"bench_startup: results in {out}")


if __name__ == "__main__":
    main()

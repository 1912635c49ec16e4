"""Time per training step of every loss-balancing method, as a ratio to ``loss=equal`` measured
in the same run, on the bench model of ../shared/bench/README.md.

Workload: ``make_workload.py`` of the bench folder writes a Parquet impression log (26 id
columns with the bench vocabulary sizes, labels click and purchase); it is read into a
:class:`mtl_train.data.schema.Table` (ids + 2, for the reserved null/OOV ids). Model: MMoE,
embedding 16, 8 experts [256, 128], towers [64], batch 2048, Adam lr 1e-3, BCE on both tasks,
built by mtl_train's ``build_model`` inside a real :class:`mtl_train.train.trainer.Trainer`;
each step is ``Trainer.train_step`` (forward, losses, the balancer's backward, optimizer step),
on batches already in memory (loading is not part of the figure; every method gets the same
batches).

Noise control: one trainer per method (same initial weights), methods interleaved in a
fresh random order each round (so no method always follows the same one), ``--rounds`` rounds of
``--steps`` timed steps each (after ``--warmup`` steps per
method); a method's ratio in a round is its time per step over ``equal``'s in the same
round; the report gives the median over rounds of both (the pass/fail column uses the median
ratio) and the ratio of the minimum times. Run at normal priority.

Usage:
    python scripts/bench_balancers.py [--bench-dir ../shared/bench] [--rounds 30] [--steps 1]
        [--methods equal,gradnorm,...] [--device cpu] [--threads N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mtl_train.config import validate  # noqa: E402
from mtl_train.data.schema import DatasetBundle, FeatureSchema, SparseFeature, Table, Task  # noqa: E402
from mtl_train.train.trainer import Trainer  # noqa: E402

METHODS = ["equal", "static", "uncertainty", "dwa", "gradnorm", "pcgrad", "cagrad", "mgda", "gradnorm_pcgrad"]
TARGETS = {"gradnorm": 1.15, "static": 1.02, "uncertainty": 1.02, "dwa": 1.02,
           "pcgrad": 2.0, "cagrad": 2.0, "mgda": 2.0, "gradnorm_pcgrad": 2.0}
VOCABS = [100_000] * 4 + [10_000] * 8 + [1_000] * 14
BATCH = 2048


def load_workload(bench_dir: Path, rows: int, workdir: str) -> DatasetBundle:
    """Write the bench Parquet with ``make_workload.py`` and read it into mtl_train tables."""
    path = os.path.join(workdir, "train.parquet")
    subprocess.run([sys.executable, str(bench_dir / "make_workload.py"), path, str(rows), "0"], check=True,
                   stdout=subprocess.DEVNULL)
    t = pq.read_table(path)
    ids = np.stack([t[f"c{i}"].to_numpy() for i in range(len(VOCABS))], 1).astype(np.int64) + 2
    labels = np.stack([t["click"].to_numpy(), t["purchase"].to_numpy()], 1).astype(np.float32)
    table = Table(torch.from_numpy(ids), torch.zeros(len(ids), 0), torch.from_numpy(labels))
    schema = FeatureSchema([SparseFeature(f"c{i}", v + 2) for i, v in enumerate(VOCABS)], [],
                           [Task("click", "click"), Task("purchase", "purchase", parent="click")])
    small = table.subset(torch.arange(min(1000, rows)))
    return DatasetBundle(schema, table, small, small, {"protocol": "bench"})


def bench_config(method: str, device: str):
    conf = REPO / "conf"
    cfg = OmegaConf.create({
        "dataset": OmegaConf.load(conf / "dataset" / "synthetic.yaml"),
        "model": OmegaConf.load(conf / "model" / "mmoe.yaml"),
        "graph": OmegaConf.load(conf / "graph" / "independent.yaml"),
        "loss": OmegaConf.load(conf / "loss" / f"{method}.yaml"),
        "trainer": OmegaConf.load(conf / "trainer" / "default.yaml"),
        "seed": 0,
    })
    cfg.model.embedding_dim = 16
    cfg.model.num_experts = 8
    cfg.model.expert_hidden = [256, 128]
    cfg.graph.tower_hidden = [64]
    cfg.trainer.batch_size = BATCH
    cfg.trainer.lr = 1e-3
    cfg.trainer.device = device
    cfg.trainer.progress = False
    return validate(cfg)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--bench-dir", default=str(REPO.parent / "shared" / "bench"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=1, help="timed steps per method per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time (less sensitive to other processes on a "
                         "shared machine; CPU only)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    if "equal" not in methods:
        methods = ["equal"] + methods
    n_batches = args.warmup + args.rounds * args.steps
    rows = BATCH * min(n_batches, 40)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_workload(Path(args.bench_dir), rows, tmp)
        trainers = {}
        for m in methods:
            torch.manual_seed(0)
            trainers[m] = Trainer(bench_config(m, args.device), data, os.path.join(tmp, m))
            trainers[m].model.train()
        dev = trainers["equal"].device
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(data.train), generator=g)
        nb = len(data.train) // BATCH
        batches = [{k: v.to(dev) for k, v in data.train.take(perm[i * BATCH:(i + 1) * BATCH]).items()} for i in range(nb)]

        clock = time.process_time if args.clock == "cpu" else time.perf_counter

        def run(tr: Trainer, k: int) -> float:
            sync(dev)
            t0 = clock()
            for _ in range(k):
                tr.train_step(batches[tr.progress.step % nb])
                tr.progress.step += 1
            sync(dev)
            return (clock() - t0) / k

        for m in methods:
            run(trainers[m], args.warmup)
        per_round: dict[str, list[float]] = {m: [] for m in methods}
        order_gen = torch.Generator().manual_seed(1)
        for r in range(args.rounds):
            order = [methods[i] for i in torch.randperm(len(methods), generator=order_gen).tolist()]
            for m in order:
                per_round[m].append(run(trainers[m], args.steps))
            print(f"round {r + 1}/{args.rounds}: " + " ".join(f"{m}={per_round[m][-1] * 1e3:.0f}ms" for m in methods),
                  flush=True)
        for t in trainers.values():
            t.logger.close()
    eq = per_round["equal"]
    result = {"device": str(dev), "threads": torch.get_num_threads(), "clock": args.clock, "rounds": args.rounds,
              "steps": args.steps,
              "batch": BATCH, "methods": {}}
    print(f"\ndevice={dev} threads={torch.get_num_threads()} clock={args.clock} rounds={args.rounds} "
          f"steps/round={args.steps} batch={BATCH}")
    print(f"{'method':<16}{'ms/step (median)':>18}{'ratio (median of rounds)':>26}{'ratio of minima':>17}"
          f"{'target':>8}  ok")
    for m in methods:
        ratios = [a / b for a, b in zip(per_round[m], eq)]
        med_ms = statistics.median(per_round[m]) * 1e3
        med_ratio = statistics.median(ratios)
        target = TARGETS.get(m)
        ok = "" if target is None else ("yes" if med_ratio <= target else "NO")
        min_ratio = min(per_round[m]) / min(eq)
        print(f"{m:<16}{med_ms:>18.1f}{med_ratio:>26.3f}{min_ratio:>17.3f}{(target or 1.0):>8.2f}  {ok}")
        result["methods"][m] = {"ms_per_step": per_round[m], "median_ms": med_ms, "ratios": ratios,
                                "median_ratio": med_ratio, "min_ratio": min_ratio, "target": target}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

"""Cost of the gradient-conflict diagnostics (``trainer.diagnostics_every_steps``), as a ratio to a
plain training step measured in the same run, on the bench model of ../shared/bench/README.md.

A measured step is a plain step plus one ``torch.autograd.grad`` per task on the shared
parameters (the graph retained), the Gram matrix of those gradients and a few TensorBoard
scalars (:mod:`mtl_train.train.diagnostics`). With a measured step costing r plain steps, a run
measuring every N steps spends (r - 1) / N more time training; the script reports r and that
overhead for each N of ``--every``.

Workload and model: those of scripts/bench_balancers.py (MMoE, embedding 16, 8 experts
[256, 128], towers [64], batch 2048, Adam, batches in memory), one real
:class:`~mtl_train.train.trainer.Trainer` per balancer of ``--methods``. Noise control: each
round times one plain and one measured step of every method, in a fresh random order; r is the
median over rounds of (measured / plain) within a round. For the surgery balancers (pcgrad),
which hand over their own Gram matrix, a measured step costs only the logging.

Usage: python scripts/bench.py diagnostics [--methods equal,gradnorm,pcgrad] [--rounds 20] [--every 10,50,100]
       (or python scripts/bench_diagnostics.py ...)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_balancers import BATCH, REPO, bench_config, load_workload, sync  # noqa: E402

from mtl_train.train.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--bench-dir", default=str(REPO.parent / "shared" / "bench"))
    ap.add_argument("--methods", default="equal,gradnorm,pcgrad")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--every", default="10,50,100", help="cadences N to report the overhead (r - 1) / N for")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    every = [int(x) for x in args.every.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data = load_workload(Path(args.bench_dir), BATCH * 20, tmp)
        trainers = {}
        for m in methods:
            torch.manual_seed(0)
            cfg = bench_config(m, args.device)
            trainers[m] = Trainer(cfg, data, os.path.join(tmp, m))
            trainers[m].model.train()
        dev = trainers[methods[0]].device
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(data.train), generator=g)
        nb = len(data.train) // BATCH
        batches = [{k: v.to(dev) for k, v in data.train.take(perm[i * BATCH:(i + 1) * BATCH]).items()} for i in range(nb)]

        def step(tr: Trainer, measured: bool) -> float:
            tr.conflict.every = 1 if measured else None
            b = batches[tr.progress.step % nb]
            sync(dev)
            t0 = time.perf_counter()
            tr.train_step(b)
            sync(dev)
            tr.progress.step += 1
            return time.perf_counter() - t0

        for m in methods:
            for _ in range(args.warmup):
                step(trainers[m], False)
                step(trainers[m], True)
        times = {(m, on): [] for m in methods for on in (False, True)}
        order_gen = torch.Generator().manual_seed(1)
        jobs = [(m, on) for m in methods for on in (False, True)]
        for r in range(args.rounds):
            for i in torch.randperm(len(jobs), generator=order_gen).tolist():
                m, on = jobs[i]
                times[(m, on)].append(step(trainers[m], on))
            print(f"round {r + 1}/{args.rounds}: " + " ".join(
                f"{m}={times[(m, False)][-1] * 1e3:.0f}/{times[(m, True)][-1] * 1e3:.0f}ms" for m in methods), flush=True)
        for t in trainers.values():
            t.logger.close()
    result = {"device": str(dev), "threads": torch.get_num_threads(), "rounds": args.rounds, "batch": BATCH,
              "load": os.getloadavg(), "methods": {}}
    print(f"\ndevice={dev} threads={torch.get_num_threads()} rounds={args.rounds} batch={BATCH} "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'method':<12}{'plain ms':>10}{'measured ms':>13}{'r (median)':>12}" + "".join(f"{f'N={n}':>10}" for n in every))
    for m in methods:
        ratios = [a / b for a, b in zip(times[(m, True)], times[(m, False)])]
        r = statistics.median(ratios)
        plain, meas = statistics.median(times[(m, False)]) * 1e3, statistics.median(times[(m, True)]) * 1e3
        over = {n: (r - 1) / n for n in every}
        print(f"{m:<12}{plain:>10.1f}{meas:>13.1f}{r:>12.3f}" + "".join(f"{over[n]:>9.2%} " for n in every))
        result["methods"][m] = {"plain_ms": plain, "measured_ms": meas, "ratio": r, "ratios": ratios,
                                "overhead": {str(n): v for n, v in over.items()}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

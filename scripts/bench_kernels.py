"""The hand-written kernels against their references in one process (``trainer.fused_kernels``).

One Trainer of the bench MMoE (scripts/bench_step.py's model, optimizer and batch, batches in
memory), whose training steps alternate between the fused kernels and their plain-torch
references (``mtl_train.kernels.use_fused``), in ABBA order, so that a drift of the shared
machine's speed hits both sides. Prints the median and best step of each side and the median
over pairs of reference / fused.

Usage: python scripts/bench_kernels.py [--pairs 30] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_balancers import BATCH, REPO, bench_config, load_workload  # noqa: E402

from mtl_train import kernels  # noqa: E402
from mtl_train.train.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench-dir", default=str(REPO.parent / "shared" / "bench"))
    ap.add_argument("--pairs", type=int, default=30, help="(fused, reference) step pairs (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=6, help="untimed pairs first (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_batches = 20
    with tempfile.TemporaryDirectory() as tmp:
        data = load_workload(Path(args.bench_dir), BATCH * n_batches, tmp)
        cfg = bench_config("equal", "cpu")
        torch.manual_seed(0)
        tr = Trainer(cfg, data, os.path.join(tmp, "run"))
        tr.model.train()
        perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
        batches = [data.train.take(perm[i * BATCH:(i + 1) * BATCH]) for i in range(n_batches)]
        times: dict[bool, list[float]] = {True: [], False: []}
        for k in range(args.warmup + args.pairs):
            for fused in ((True, False) if k % 2 == 0 else (False, True)):
                with kernels.use_fused(fused):
                    t0 = time.perf_counter()
                    tr.train_step(batches[k % n_batches])
                    if k >= args.warmup:
                        times[fused].append(time.perf_counter() - t0)
    f, r = times[True], times[False]
    print(f"{torch.get_num_threads()} threads, {args.pairs} pairs: fused {1e3 * statistics.median(f):.1f} ms median "
          f"({1e3 * min(f):.1f} best), reference {1e3 * statistics.median(r):.1f} ms median ({1e3 * min(r):.1f} best); "
          f"reference / fused: {statistics.median([b / a for a, b in zip(f, r)]):.2f} (median over pairs), "
          f"{min(r) / min(f):.2f} (best/best)")


if __name__ == "__main__":
    main()

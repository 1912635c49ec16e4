"""Time per training step of ``loss=gradnorm`` and ``loss=pcgrad`` under 2 ranks, as a ratio
to ``loss=equal`` under 2 ranks measured in the same run, on the bench model.

Issue 15 asks what the balancers that reduce their own gradients cost in communication: equal
trains through DistributedDataParallel (one bucketed all-reduce of the gradients, overlapped
with the backward pass); gradnorm adds the per-task gradients at its layer W; pcgrad
all-reduces T x |shared params| per-task gradients (the embedding table included, dense)
before it can project. See the README's table in "Training with several processes".

Workload and model: those of scripts/bench_balancers.py (bench Parquet, MMoE 8 experts
[256, 128], embedding 16, towers [64], Adam lr 1e-3), per-rank batch ``--batch`` (default
2048: the global batch is 2 x 2048). Each rank is a process started with
``torch.multiprocessing.spawn`` and joined in a gloo group (a FileStore in a temporary
folder), ``--threads`` intra-op threads each (default 1). Every rank builds one
:class:`~mtl_train.train.trainer.Trainer` per method (the real ``Trainer.train_step``, so the
model is wrapped in DDP or not exactly as in a run) and trains on its own rows of the same
global batches, already in memory. Methods are interleaved in a fresh random order each round
(the same order on both ranks, drawn from one seeded generator), after a barrier; a step's
time is rank 0's wall time from the barrier to the end of its step. The report gives, per
method, the median ms per step and the median over rounds of its ratio to equal's. A method
named ``<name>+sparse`` runs with ``model.sparse_embedding=true`` (pcgrad's per-task
gradients of the embedding table then travel as the batch's rows, not the whole table).

Usage:
    python scripts/bench_ddp_balancers.py [--bench-dir ../shared/bench] [--rounds 10] [--warmup 2]
        [--methods equal,gradnorm,pcgrad,pcgrad+sparse] [--batch 2048] [--threads 1] [--json out.json]
    python scripts/bench.py ddp-balancers [the same options]
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
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

WORLD = 2


def _rank(rank: int, args: argparse.Namespace, tmp: str) -> None:
    import bench_balancers as bb

    from mtl_train.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD)
    try:
        methods = args.methods.split(",")
        bb.BATCH = args.batch
        n_steps = args.warmup + args.rounds
        rows = WORLD * args.batch * min(n_steps, 20)
        os.makedirs(os.path.join(tmp, f"data{rank}"))
        data = bb.load_workload(Path(args.bench_dir), rows, os.path.join(tmp, f"data{rank}"))
        trainers = {}
        for m in methods:
            torch.manual_seed(0)
            cfg = bb.bench_config(m.split("+")[0], "cpu")
            if m.endswith("+sparse"):  # sparse embedding gradients: a surgery method then sends the batch's rows
                cfg.model.sparse_embedding = True
            trainers[m] = Trainer(cfg, data, os.path.join(tmp, f"run{rank}", m))
            trainers[m].model.train()
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(data.train), generator=g)
        per = args.batch
        nb = len(data.train) // (WORLD * per)
        # rank r takes rows [r*b:(r+1)*b] of each global batch of 2b rows
        batches = [data.train.take(perm[i * WORLD * per + rank * per:i * WORLD * per + (rank + 1) * per])
                   for i in range(nb)]

        def step(m: str) -> float:
            tr = trainers[m]
            dist.barrier()
            t0 = time.perf_counter()
            tr.train_step(batches[tr.progress.step % nb])
            tr.progress.step += 1
            return time.perf_counter() - t0

        for m in methods:
            for _ in range(args.warmup):
                step(m)
        times: dict[str, list[float]] = {m: [] for m in methods}
        order_gen = torch.Generator().manual_seed(1)
        for r in range(args.rounds):
            order = [methods[i] for i in torch.randperm(len(methods), generator=order_gen).tolist()]
            for m in order:
                times[m].append(step(m))
            if rank == 0:
                print(f"round {r + 1}/{args.rounds}: " + " ".join(f"{m}={times[m][-1] * 1e3:.0f}ms" for m in methods),
                      flush=True)
        for t in trainers.values():
            t.logger.close()
        if rank == 0:
            with open(os.path.join(tmp, "times.json"), "w") as f:
                json.dump(times, f)
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--bench-dir", default=str(REPO.parent / "shared" / "bench"))
    ap.add_argument("--methods", default="equal,gradnorm,pcgrad,pcgrad+sparse")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2048, help="per-rank batch")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    methods = args.methods.split(",")
    if "equal" not in methods:
        args.methods = ",".join(["equal"] + methods)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(args, tmp), nprocs=WORLD)
        with open(os.path.join(tmp, "times.json")) as f:
            times = json.load(f)
    eq = times["equal"]
    print(f"\n{WORLD} ranks (gloo, CPU) x {args.threads} thread(s), per-rank batch {args.batch}, rounds {args.rounds}")
    print(f"{'method':<12}{'ms/step (median)':>18}{'ratio to equal (median of rounds)':>36}")
    result = {"world": WORLD, "threads": args.threads, "batch": args.batch, "rounds": args.rounds, "methods": {}}
    for m, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(ts, eq))
        print(f"{m:<12}{statistics.median(ts) * 1e3:>18.1f}{ratio:>36.3f}")
        result["methods"][m] = {"ms_per_step": ts, "median_ms": statistics.median(ts) * 1e3, "median_ratio": ratio}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

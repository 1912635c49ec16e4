"""Steady-state training step against the FLOP roofline, measured in one process.

``bench.py`` compares whole processes (roofline.py, raw_limit.py, an mtl-train run); on a
shared VM whose GEMM speed drifts by 2x within minutes, those separate measurements can fall in
different speed phases. This script takes both sides in the same process, interleaved:

  * a roofline sample: roofline.py's own GEMM ([2048, 416] x [416, 2048], float32) ``--gemms``
    times, turned into the time budget of one 2048-sample step at roofline speed
    (roofline.py's FLOP count: every dense layer of the bench MMoE, forward x3);
  * one ``Trainer.train_step`` of the bench model on batches already in memory (the model, the
    balancer and the optimizer of a real run: MMoE, embedding 16, 8 experts [256, 128], towers
    [64], batch 2048, Adam lr 1e-3, ``loss=equal``; the trainer of scripts/bench_balancers.py).

It prints the median and best of both and their ratios (roofline budget / step time: the
"x roofline" of bench.py, without the loading), then profiles ``--profile-steps`` steps and
reports the time the step spends in GEMMs (``aten::mm``/``addmm``/``bmm``/``baddbmm``) over the
roofline budget of a sample taken just before each profiled step: the GEMMs at the model's real
shapes can take longer than the roofline's single best shape, and whatever else the step does must fit in what is left.

With ``--bf16`` each pair also takes a bfloat16 roofline sample (roofline.py ``--dtype
bfloat16``: the same GEMM in bfloat16, float32 accumulation), and the step is reported against
both ceilings: a bf16 run's own ceiling is the bf16 one. ``--top N`` prints the N operators with
the most self time in the profiled steps (the bf16 step's breakdown), ``--compile MODE`` wraps
the training forward in ``torch.compile`` (inductor; ``default`` or ``max-autotune``), the
backward and the optimizer staying eager, and reports the compilation's seconds apart.

Usage: python scripts/bench_step.py [--pairs 40] [--bf16] [--reference] [--threads N] [--top N]
       [--compile default|max-autotune] [--dense-embedding] [--json out.json]
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
from bench_balancers import BATCH, REPO, bench_config, load_workload  # noqa: E402

from mtl_train.train.trainer import Trainer  # noqa: E402

INP, EXPERTS, H1, H2, TOWER, TASKS = 26 * 16, 8, 256, 128, 64, 2  # roofline.py's bench MMoE
LAYERS = [(INP, H1), (H1, H2)] * EXPERTS + [(INP, EXPERTS)] * TASKS + [(H2, TOWER), (TOWER, 1)] * TASKS
FLOPS_PER_SAMPLE = 3 * sum(2 * i * o for i, o in LAYERS)
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def roofline_budget(a: torch.Tensor, w: torch.Tensor, gemms: int) -> float:
    """Seconds one BATCH-sample step takes at the GEMM rate of this sample: roofline.py's GEMM
    ``a`` [BATCH, INP] x ``w`` [INP, EXPERTS * H1], ``gemms`` times, against its FLOP count."""
    t0 = time.perf_counter()
    for _ in range(gemms):
        a @ w
    rate = 2 * BATCH * INP * EXPERTS * H1 * gemms / (time.perf_counter() - t0)
    return BATCH * FLOPS_PER_SAMPLE / rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench-dir", default=str(REPO.parent / "shared" / "bench"))
    ap.add_argument("--pairs", type=int, default=40, help="(roofline sample, train step) pairs (default: %(default)s)")
    ap.add_argument("--gemms", type=int, default=4, help="roofline GEMMs per sample (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (default: %(default)s)")
    ap.add_argument("--profile-steps", type=int, default=10,
                    help="steps profiled for the GEMM share, 0 for none (default: %(default)s)")
    ap.add_argument("--bf16", action="store_true",
                    help="trainer.precision=bf16, measured against the float32 and the bfloat16 roofline")
    ap.add_argument("--reference", action="store_true",
                    help="trainer.fused_kernels=false: the plain-torch references of mtl_train/kernels")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--top", type=int, default=0, help="print the N operators with the most self time when profiling")
    ap.add_argument("--compile", choices=["default", "max-autotune"], default=None,
                    help="torch.compile the training forward (inductor) with this mode")
    ap.add_argument("--dense-embedding", action="store_true",
                    help="model.sparse_embedding=false (a dense embedding gradient: what inductor can compile)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_batches = 40
    compile_s = None
    with tempfile.TemporaryDirectory() as tmp:
        data = load_workload(Path(args.bench_dir), BATCH * n_batches, tmp)
        cfg = bench_config("equal", "cpu")
        cfg.trainer.precision = "bf16" if args.bf16 else "fp32"
        cfg.trainer.fused_kernels = not args.reference
        if args.dense_embedding:
            cfg.model.sparse_embedding = False
        torch.manual_seed(0)
        tr = Trainer(cfg, data, os.path.join(tmp, "run"))
        tr.model.train()
        perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
        batches = [data.train.take(perm[i * BATCH:(i + 1) * BATCH]) for i in range(n_batches)]
        a, w = torch.randn(BATCH, INP), torch.randn(INP, EXPERTS * H1)
        a16, w16 = a.bfloat16(), w.bfloat16()

        def step(k: int) -> float:
            t0 = time.perf_counter()
            tr.train_step(batches[k % n_batches])
            return time.perf_counter() - t0

        if args.compile:
            tr.train_model = torch.compile(tr.train_model, mode=args.compile)
            compile_s = step(0)  # the first call compiles
        for k in range(args.warmup):
            roofline_budget(a, w, args.gemms)
            step(k)
        budgets, budgets16, steps = [], [], []
        for k in range(args.pairs):
            budgets.append(roofline_budget(a, w, args.gemms))
            if args.bf16:
                budgets16.append(roofline_budget(a16, w16, args.gemms))
            steps.append(step(k))
        gemm_ratios = []
        table = None
        if args.profile_steps:
            from torch.profiler import ProfilerActivity, profile

            events = []
            for k in range(args.profile_steps):  # each profiled step next to its own roofline sample
                b = roofline_budget(a, w, args.gemms)
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    step(k)
                gemm_s = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in GEMM_OPS) / 1e6
                gemm_ratios.append(gemm_s / b)
                events.append(prof)
            if args.top:
                table = events[-1].key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
    med_b, med_s = statistics.median(budgets), statistics.median(steps)
    pair_ratios = [b / s for b, s in zip(budgets, steps)]
    res = {"precision": cfg.trainer.precision, "threads": torch.get_num_threads(), "pairs": args.pairs,
           "fused_kernels": not args.reference, "dense_embedding": args.dense_embedding,
           "compile": args.compile, "compile_s": compile_s,
           "step_ms_median": 1e3 * med_s, "step_ms_best": 1e3 * min(steps),
           "roofline_budget_ms_median": 1e3 * med_b, "roofline_budget_ms_best": 1e3 * min(budgets),
           "ratio_of_medians": med_b / med_s, "ratio_best_best": min(budgets) / min(steps),
           "median_pair_ratio": statistics.median(pair_ratios),
           "gemm_time_over_budget_profiled": statistics.median(gemm_ratios) if gemm_ratios else None}
    if budgets16:
        med16 = statistics.median(budgets16)
        res.update({"bf16_roofline_budget_ms_median": 1e3 * med16, "bf16_roofline_budget_ms_best": 1e3 * min(budgets16),
                    "ratio_of_medians_bf16_roofline": med16 / med_s,
                    "median_pair_ratio_bf16_roofline": statistics.median(b / s for b, s in zip(budgets16, steps))})
    print(f"{res['precision']}, {res['threads']} threads, {args.pairs} pairs"
          f"{', torch.compile ' + args.compile + f' (first step {compile_s:.1f} s)' if args.compile else ''}"
          f"{', reference kernels' if args.reference else ''}"
          f"{', dense embedding' if args.dense_embedding else ''}: step {res['step_ms_median']:.1f} ms "
          f"median ({res['step_ms_best']:.1f} best); roofline budget {res['roofline_budget_ms_median']:.1f} ms median "
          f"({res['roofline_budget_ms_best']:.1f} best)")
    print(f"x roofline: {res['ratio_of_medians']:.3f} (medians), {res['ratio_best_best']:.3f} (best/best), "
          f"{res['median_pair_ratio']:.3f} (median over pairs)")
    if budgets16:
        print(f"bf16 roofline budget {res['bf16_roofline_budget_ms_median']:.1f} ms median: x bf16 roofline "
              f"{res['ratio_of_medians_bf16_roofline']:.3f} (medians), {res['median_pair_ratio_bf16_roofline']:.3f} "
              f"(median over pairs)")
    if gemm_ratios:
        print(f"GEMMs alone in a profiled step: {res['gemm_time_over_budget_profiled']:.2f} x the roofline budget "
              f"(median over {len(gemm_ratios)} steps, each against the roofline sample taken just before it)")
    if table:
        print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""How close to the FLOP roofline a bench-MMoE training step built from torch operators can get.

Measures, interleaved in one process (so that the VM's speed drift hits every side), four things
against the time budget of one 2048-sample step at roofline.py's GEMM rate (its FLOP count:
every dense layer of the bench MMoE, forward x3):

  * ``skeleton``: only the dense GEMMs of one training step at the bench model's shapes (layer 1
    of the 8 experts as one [2048, 417] x [417, 2048] GEMM with the bias row folded in, layer 2 as
    8 GEMMs on its column blocks, the two gates, the two towers [128 -> 64 -> 1]; forward, then
    the weight and input gradients of each) plus the ReLU passes the model cannot avoid with
    BLAS GEMMs: the forward ReLUs of both expert layers and the two backward masks. No
    embedding, gate softmax or mixing, losses, optimizer or autograd bookkeeping;
  * ``embedding + optimizers``: the real trainer's embedding lookup (26 ids per row, one shared
    table), its sparse backward and RowSparseAdam update, and the dense fused Adam step over
    the other parameters;
  * ``floor``: the sum of the two, i.e. the step with everything else (gates, mixing, towers'
    elementwise work, losses, autograd, Python) for free;
  * ``train_step``: one real ``Trainer.train_step`` (as scripts/bench_step.py).

Each printed ratio is roofline budget / time (medians over ``--rounds`` rounds): the "x roofline"
of bench.py without the loading. Usage: python scripts/bench_floor.py [--rounds 30]
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
from bench_step import EXPERTS, H1, H2, INP, TASKS, TOWER, roofline_budget  # noqa: E402

from mtl_train.train.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds (default: %(default)s)")
    ap.add_argument("--bench-dir", default=str(REPO.parent / "shared" / "bench"))
    args = ap.parse_args()
    B, D, E = BATCH, INP, EXPERTS
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(B, D, generator=g), torch.randn(D, E * H1, generator=g)
    x1 = torch.randn(B, D + 1, generator=g)
    w1 = torch.randn(D + 1, E * H1, generator=g) * 0.05
    w2, b2 = torch.randn(E, H1, H2, generator=g) * 0.05, torch.randn(E, H2, generator=g) * 0.05
    wg = torch.randn(D, TASKS * E, generator=g)
    wt1, wt2 = torch.randn(TASKS, H2, TOWER, generator=g), torch.randn(TASKS, TOWER, 1, generator=g)

    def budget() -> float:
        return roofline_budget(a, w, 4)

    def skeleton() -> None:
        y1 = torch.mm(x1, w1).relu_()
        z = torch.empty(E, B, H2)
        for k in range(E):
            torch.addmm(b2[k], y1[:, k * H1:(k + 1) * H1], w2[k], out=z[k])
        z.relu_()
        x = x1[:, :D]
        x @ wg  # gate logits
        h = z[0]  # stands for a mixed task representation [B, H2]
        t1 = [h @ wt1[t] for t in range(TASKS)]
        [t1[t] @ wt2[t] for t in range(TASKS)]
        d_logit = torch.ones(B, 1)
        for t in range(TASKS):  # tower backward: weight and input gradients of both layers
            d_t1 = d_logit @ wt2[t].t()
            t1[t].t() @ d_logit
            h.t() @ d_t1
            d_t1 @ wt1[t].t()
        d_gate = torch.ones(B, TASKS * E)
        x.t() @ d_gate
        d_gate @ wg.t()
        dz = torch.ops.aten.threshold_backward(z, z, 0)  # layer 2's mask
        dw2, d_pre = torch.empty_like(w2), torch.empty_like(y1)
        for k in range(E):
            torch.mm(y1[:, k * H1:(k + 1) * H1].t(), dz[k], out=dw2[k])
            torch.mm(dz[k], w2[k].t(), out=d_pre[:, k * H1:(k + 1) * H1])
        torch.ops.aten.threshold_backward.grad_input(d_pre, y1, 0, grad_input=d_pre)  # layer 1's mask
        x1.t() @ d_pre
        d_pre @ w1[:D].t()

    with tempfile.TemporaryDirectory() as tmp:
        data = load_workload(Path(args.bench_dir), B * 10, tmp)
        torch.manual_seed(0)
        tr = Trainer(bench_config("equal", "cpu"), data, os.path.join(tmp, "run"))
        tr.model.train()
        perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
        batches = [data.train.take(perm[i * B:(i + 1) * B]) for i in range(10)]
        emb = tr.model.embeddings[0]
        dense = [p for o in tr.optimizers for grp in o.param_groups for p in grp["params"] if p is not emb.table.weight]
        dense_grads = [torch.zeros_like(p) for p in dense]  # allocated once: a backward would have filled them

        def embedding_and_optimizers(k: int) -> None:
            for p, d in zip(dense, dense_grads):
                p.grad = d
            x = emb(batches[k % 10])
            x.backward(torch.ones_like(x))
            for o in tr.optimizers:
                o.step()
            emb.table.weight.grad = None

        def step(k: int) -> None:
            tr.train_step(batches[k % 10])

        parts = {"skeleton": lambda k: skeleton(), "embedding + optimizers": embedding_and_optimizers,
                 "train_step": step}
        for k in range(5):
            budget()
            for f in parts.values():
                f(k)
        times: dict[str, list[float]] = {n: [] for n in ["budget", *parts]}
        for k in range(args.rounds):
            times["budget"].append(budget())
            for n, f in parts.items():
                t0 = time.perf_counter()
                f(k)
                times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) for n, v in times.items()}
    med["floor (skeleton + embedding + optimizers)"] = med["skeleton"] + med["embedding + optimizers"]
    print(f"threads {torch.get_num_threads()}, {args.rounds} rounds, medians; roofline budget {med['budget'] * 1e3:.1f} ms")
    for n in ("skeleton", "embedding + optimizers", "floor (skeleton + embedding + optimizers)", "train_step"):
        ratio = f"x{med['budget'] / med[n]:.3f} roofline" if n != "embedding + optimizers" else ""
        print(f"  {n:42s} {med[n] * 1e3:7.1f} ms  {ratio}")


if __name__ == "__main__":
    main()

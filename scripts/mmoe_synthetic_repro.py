"""The MMoE paper's synthetic experiment (Ma et al., KDD 2018, section 3.3), then CGC and PLE.

On ``dataset=mmoe_synthetic`` (two regression tasks whose linear parts have cosine p), train
shared_bottom, omoe and mmoe, then cgc and ple (Tang et al., RecSys 2020), for p in
{0.5, 0.9, 1.0}, ``--runs`` independent runs per cell: run r of every cell uses seed r, which
draws fresh weight vectors, data and initialisation; every model sees the same data in run r.

Setting, as far as the paper states it: input d = 100; MoE models with 8 experts of one hidden
layer of 16 units (ReLU); towers of one hidden layer of 8 units; shared-bottom with one hidden
layer of 113 units (the paper's 13056 / (100 + 8 * 2), parameter-matched counting weights
only); Adam, learning rate picked from {1e-4, 1e-3, 1e-2} per model by a pilot (``--pilot-runs``
runs per lr at p = 0.9, lowest mean val MSE; seeds 1000+ so the pilot never sees a run's data).
Not stated by the paper, chosen here: 64,000 train rows read once (one epoch of 500 steps of
128 rows: every step sees fresh rows, so training loss estimates the generalisation error;
with 8,000 rows and 20 epochs every model overfits), 1,000 val and 2,000 test rows; test MSE is
that of the checkpoint with the best val mean MSE (evaluated every ``--eval-every`` steps);
CGC = one level of 2 experts per task + 4 shared (8 experts, as MMoE), PLE = two such levels;
equal loss weights.

Runs go in-process through mtl_train's own training code (config composed by Hydra's compose
API, :func:`mtl_train.config.validate`, :class:`mtl_train.train.trainer.Trainer`), one thread.
A subclass of the Trainer records, without changing the run: the mean training loss and val
MSE at every evaluation (the training curves), every ``--diag-every`` steps the cosine between
the two task gradients on the model's shared parameters (``MultiTaskModel.shared_parameters``,
by ``torch.autograd.grad`` on the step's batch, before the step), and at the end each gate's
softmax weights averaged over the test split (MMoE/OMoE: the gates of ``gate_probabilities``;
CGC/PLE: each task's gate at the last level). Where the trainer has issue 17's own diagnostics
(``trainer.diagnostics_every_steps``, run.json ``diagnostics``), they are switched on at the same
cadence and kept beside (``diag`` in each run's record): the two measurements check each other.

Each finished run is one line of ``<out>/runs.jsonl``; a rerun skips the runs already there, so
the script can be stopped and continued. ``--report`` only writes the summary (summary.json,
a Markdown table on stdout, ``--plot`` PNG) from runs.jsonl.

    nice python scripts/mmoe_synthetic_repro.py --out runs/mmoe_synthetic --runs 20 --plot docs/mmoe_synthetic.png

(about 8 s of wall time per run on a loaded 2-core machine, 1-3 s of CPU; 300 runs and a 15-run pilot.)
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MODELS = {
    "shared_bottom": ["model=shared_bottom", "model.hidden=[113]"],
    "omoe": ["model=omoe", "model.num_experts=8", "model.expert_hidden=[16]"],
    "mmoe": ["model=mmoe", "model.num_experts=8", "model.expert_hidden=[16]"],
    "cgc": ["model=cgc", "model.num_task_experts=2", "model.num_shared_experts=4", "model.expert_hidden=[16]"],
    "ple": ["model=ple", "model.num_levels=2", "model.num_task_experts=2", "model.num_shared_experts=4",
            "model.expert_hidden=[16]"],
}
LRS = (1e-4, 1e-3, 1e-2)
PILOT_P = 0.9
PILOT_SEED = 1000
TASK_EXPERTS = 2  # num_task_experts of cgc and ple above


def overrides(model: str, p: float, lr: float, seed: int, a) -> list[str]:
    """The config overrides of one run."""
    return [
        "dataset=mmoe_synthetic", f"dataset.task_correlation={p}", f"dataset.train_rows={a.train_rows}",
        f"dataset.val_rows={a.val_rows}", f"dataset.test_rows={a.test_rows}", f"dataset.dim={a.dim}",
        *MODELS[model], "model.sparse_embedding=false", "graph=independent", "graph.tower_hidden=[8]", "loss=equal",
        f"seed={seed}", "trainer.device=cpu", f"trainer.num_threads={a.threads}", "trainer.progress=false",
        f"trainer.lr={lr}", f"trainer.batch_size={a.batch_size}", f"trainer.epochs={a.epochs}",
        f"trainer.eval_every_steps={a.eval_every}", "trainer.patience=null", "trainer.monitor=mse/mean",
        "trainer.monitor_mode=min", "trainer.log_every_steps=100000",
        *([f"trainer.diagnostics_every_steps={a.diag_every or 'null'}"] if _has_diagnostics() else []),
    ]


def _has_diagnostics() -> bool:
    """Whether the trainer has issue 17's own diagnostics (``trainer.diagnostics_every_steps``)."""
    from dataclasses import fields

    from mtl_train.config import TrainerConfig

    return any(f.name == "diagnostics_every_steps" for f in fields(TrainerConfig))


def compose(args: list[str]):
    """The validated config of ``args``, composed as ``mtl-train`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from mtl_train.config import validate

    with initialize_config_module(config_module="mtl_train.conf", version_base="1.3"):
        return validate(hydra_compose(config_name="config", overrides=args))


def make_trainer_class():
    from mtl_train.train.trainer import Trainer

    class RecordingTrainer(Trainer):
        """The Trainer, recording curves and gradient cosines (see the module docstring)."""

        diag_every = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.curve: list[dict] = []
            self.cosines: list[float] = []
            self._loss_sum, self._loss_n = 0.0, 0

        def train_step(self, batch):
            if self.diag_every and self.progress.step % self.diag_every == 0:
                self.cosines.append(task_gradient_cosine(self.model, batch))
            result = super().train_step(batch)
            if result is not None:
                self._loss_sum += float(result[0].mean())
                self._loss_n += 1
            return result

        def validate(self) -> bool:
            self._record_train = True
            return super().validate()

        def evaluate(self, split: str) -> dict:
            metrics = super().evaluate(split)
            if split == "val" and getattr(self, "_record_train", False):
                self._record_train = False
                self.curve.append({"step": self.progress.step,
                                   "train_loss": self._loss_sum / max(self._loss_n, 1),
                                   "val_mse": [metrics[t]["mse"] for t in ("task1", "task2")]})
                self._loss_sum, self._loss_n = 0.0, 0
            return metrics

    return RecordingTrainer


def task_gradient_cosine(model, batch) -> float:
    """cos(g1, g2) of the two task losses' gradients on ``model.shared_parameters()`` (all of them
    concatenated into one vector), on ``batch``; leaves no ``.grad`` behind."""
    params = [p for p in model.shared_parameters() if p.requires_grad]
    out = model(batch)
    losses, _ = model.graph.losses(out, batch["labels"])
    flat = []
    for k in range(2):
        grads = torch.autograd.grad(losses[k], params, retain_graph=k == 0, allow_unused=True)
        flat.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]))
    return float(F.cosine_similarity(flat[0], flat[1], dim=0))


@torch.no_grad()
def gate_weights(model, table) -> dict | None:
    """The gates' softmax weights on ``table`` (the test split), for a model with gates: ``mean``,
    each gate's weights averaged over the rows ([gates][experts]); with two gates also
    ``row_tv``, the mean over rows of the total-variation distance 0.5 * |g1(x) - g2(x)|_1
    between the two tasks' gates (0: identical, 1: disjoint experts). None without gates."""
    from mtl_train.models.backbones.moe import PLE, MMoE
    from mtl_train.models.layers import gate_probabilities

    bb = model.backbone
    model.eval()
    batch = table.slice(0, len(table))
    if isinstance(bb, MMoE):
        g = gate_probabilities(bb.gates, model.embeddings[0](batch))  # [B, G, E]
        per_gate = [g[:, k] for k in range(g.shape[1])]
    elif isinstance(bb, PLE):
        captured = {}
        gates = list(bb.task_gates[-1])
        for k, gate in enumerate(gates):  # Gate.mix calls self.forward: wrap it on the instance
            gate.forward = lambda x, k=k, f=gate.forward: captured.setdefault(k, f(x))
        try:
            model(batch)
        finally:
            for gate in gates:
                del gate.forward
        per_gate = [captured[k] for k in range(len(bb.task_gates[-1]))]
    else:
        return None
    out = {"mean": [g.mean(0).tolist() for g in per_gate]}
    if len(per_gate) == 2:
        out["row_tv"] = float(0.5 * (per_gate[0] - per_gate[1]).abs().sum(1).mean())
    return out


def param_counts(cfg) -> dict:
    """Parameters of the backbone (all, and weights only) and of the towers, for the config."""
    from mtl_train.data.datasets import load_dataset
    from mtl_train.models.builder import build_model

    small = cfg.copy()
    small.dataset.train_rows = small.dataset.val_rows = small.dataset.test_rows = 8
    model = build_model(load_dataset(small.dataset, 0).schema, cfg.model, cfg.graph)
    count = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in ("backbone", "graph")}
    weights = sum(p.numel() for n, p in model.backbone.named_parameters() if "bias" not in n and "gate" not in n)
    weights += sum(p.numel() for n, p in model.graph.named_parameters() if "bias" not in n)
    return {"backbone": count["backbone"], "towers": count["graph"], "total": count["backbone"] + count["graph"],
            "weights_no_gates": weights}


def train_one(model: str, p: float, lr: float, seed: int, a) -> dict:
    """One run in-process; returns its record (test/val MSE, curve, cosines, gates)."""
    from mtl_train.data.datasets import load_dataset

    cfg = compose(overrides(model, p, lr, seed, a))
    trainer_cls = make_trainer_class()
    trainer_cls.diag_every = a.diag_every
    run_dir = tempfile.mkdtemp(prefix="mmoe_synth_")
    t0 = time.process_time()
    try:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.set_num_threads(a.threads)
        data = load_dataset(cfg.dataset, cfg.seed)
        trainer = trainer_cls(cfg, data, run_dir)
        try:
            results = trainer.fit()
        finally:
            trainer.logger.close(failed=True)
        gates = gate_weights(trainer.model, data.test)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "model": model, "p": p, "lr": lr, "seed": seed,
        "test_mse": [results["test"][t]["mse"] for t in ("task1", "task2")],
        "val_mse": [results["val"][t]["mse"] for t in ("task1", "task2")],
        "best_step": trainer.progress.best_step, "curve": trainer.curve, "cosines": trainer.cosines,
        "gates": gates, "cpu_s": round(time.process_time() - t0, 2),
        # the trainer's own diagnostics (mtl_train/train/diagnostics.py, models/gates.py), where it has them
        "diag": {"grad_conflict": trainer.conflict.summary() if trainer.conflict.every else None,
                 "gates_test": getattr(trainer, "final_gates", {}).get("test")} if hasattr(trainer, "conflict") else None,
    }


def load_runs(path: Path) -> list[dict]:
    """The records of ``path`` (JSON lines), the first of each (model, p, lr, seed) only."""
    if not path.exists():
        return []
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out.setdefault((r["model"], r["p"], r["lr"], r["seed"]), r)
    return list(out.values())


def append_run(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def pilot(a, out: Path) -> dict[str, float]:
    """The learning rate of each model: the lr of LRS with the lowest mean val MSE (mean over
    the two tasks and ``--pilot-runs`` seeds) at p = PILOT_P."""
    path = out / "pilot.jsonl"
    done = {(r["model"], r["lr"], r["seed"]) for r in load_runs(path)}
    for model in a.models:
        for lr in LRS:
            for seed in range(PILOT_SEED, PILOT_SEED + a.pilot_runs):
                if (model, lr, seed) not in done:
                    rec = train_one(model, PILOT_P, lr, seed, a)
                    rec.pop("curve"), rec.pop("cosines"), rec.pop("gates")
                    append_run(path, rec)
                    print(f"pilot {model} lr={lr} seed={seed}: val mse {np.mean(rec['val_mse']):.4f} "
                          f"({rec['cpu_s']} s cpu)", flush=True)
    runs = load_runs(path)
    best = {}
    for model in a.models:
        score = {lr: np.mean([np.mean(r["val_mse"]) for r in runs if r["model"] == model and r["lr"] == lr])
                 for lr in LRS}
        best[model] = min(score, key=score.get)
        print(f"pilot {model}: mean val mse by lr {json.dumps({str(k): round(v, 4) for k, v in score.items()})} "
              f"-> lr {best[model]}", flush=True)
    (out / "lr.json").write_text(json.dumps(best, indent=2))
    return best


def summarise(runs: list[dict], a) -> dict:
    """Per (model, p): test MSE per task (mean, std, min, max), the two tasks' mean, the mean
    gradient cosine, the share of negative cosines, gate statistics; and per (model, p) the mean
    training curve."""
    cells = {}
    for r in runs:
        cells.setdefault((r["model"], r["p"]), []).append(r)
    out = {}
    for (model, p), rs in sorted(cells.items(), key=lambda kv: (list(MODELS).index(kv[0][0]), kv[0][1])):
        t = np.array([r["test_mse"] for r in rs])  # [runs, 2]
        both = t.mean(1)
        cos = np.concatenate([r["cosines"] for r in rs]) if rs[0]["cosines"] else np.array([])
        cell = {
            "runs": len(rs), "lr": rs[0]["lr"],
            "task1": [float(t[:, 0].mean()), float(t[:, 0].std(ddof=1)) if len(rs) > 1 else 0.0],
            "task2": [float(t[:, 1].mean()), float(t[:, 1].std(ddof=1)) if len(rs) > 1 else 0.0],
            "mean": [float(both.mean()), float(both.std(ddof=1)) if len(rs) > 1 else 0.0],
            "mean_min_median_max": [float(both.min()), float(np.median(both)), float(both.max())],
            "per_run_mean": both.tolist(),
            "grad_cos_mean": float(cos.mean()) if cos.size else None,
            "grad_cos_negative_share": float((cos < 0).mean()) if cos.size else None,
        }
        if rs[0]["gates"] is not None:
            g = np.array([r["gates"]["mean"] for r in rs])  # [runs, gates, experts of the gate]
            if model == "mmoe":  # two gates over the same 8 experts: how differently they weight them
                cell["gate_tv_of_means"] = float((0.5 * np.abs(g[:, 0] - g[:, 1]).sum(-1)).mean())
                cell["gate_tv_per_row"] = float(np.mean([r["gates"]["row_tv"] for r in rs]))
            if model in ("cgc", "ple"):  # each task gate: its task's experts first, then the shared ones
                cell["gate_shared_share"] = float(g[:, :, TASK_EXPERTS:].sum(-1).mean())
        diag = [r["diag"] for r in rs if r.get("diag")]
        if diag:  # the trainer's own diagnostics (issue 17 items 1-2), on the runs that have them
            cell["diag_runs"] = len(diag)
            gc = [d["grad_conflict"] for d in diag if d["grad_conflict"] and d["grad_conflict"]["mean_cos"]]
            if gc:
                cell["diag_grad_cos_mean"] = float(np.mean([d["mean_cos"]["task1/task2"] for d in gc]))
                cell["diag_grad_cos_negative_share"] = float(np.mean([d["negative_share"]["task1/task2"] for d in gc]))
            gates = [d["gates_test"][-1] for d in diag if d.get("gates_test")]
            if gates:  # the last level
                cell["diag_gate_entropy"] = float(np.mean([np.mean(lv["entropy"]) for lv in gates]))
                cell["diag_gate_max_entropy"] = float(np.mean(gates[0]["max_entropy"]))
                cell["diag_unused_share"] = float(np.mean([lv["unused_share"] for lv in gates]))
        steps = [c["step"] for c in rs[0]["curve"]]
        cell["curve_steps"] = steps
        cell["curve_train_loss"] = np.mean([[c["train_loss"] for c in r["curve"]] for r in rs], 0).tolist()
        cell["curve_val_mse"] = np.mean([[np.mean(c["val_mse"]) for c in r["curve"]] for r in rs], 0).tolist()
        out[f"{model}@{p}"] = cell
    return out


def _paired(runs: list[dict], a: tuple, b: tuple, task: int | None = None) -> tuple[float, float, int]:
    """Mean and standard error of the per-seed difference of test MSE, cell ``a`` minus cell ``b``
    ((model, p) each; both cells of a seed saw the same x), on ``task`` (0, 1) or the mean of
    both (None); and the number of seeds in both cells."""
    def per_seed(cell):
        return {r["seed"]: (r["test_mse"][task] if task is not None else float(np.mean(r["test_mse"])))
                for r in runs if (r["model"], r["p"]) == cell}
    x, y = per_seed(a), per_seed(b)
    d = np.array([x[k] - y[k] for k in sorted(set(x) & set(y))])
    if d.size < 2:
        return float("nan"), float("nan"), int(d.size)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size)), int(d.size)


def claims(summary: dict, runs: list[dict]) -> str:
    """The papers' claims checked on the runs, one line each with the numbers: differences are
    per-seed paired (mean ± standard error, n seeds); 'holds' where the sign is the claimed one
    and more than two standard errors from 0."""
    ps = sorted({r["p"] for r in runs})
    lo, hi = min(ps), max(ps)
    models = [m for m in MODELS if any(r["model"] == m for r in runs)]
    lines = []

    def fmt(m, se, n):
        return f"{m:+.3f} ± {se:.3f} (n={n})"

    def verdict(m, se, sign):
        return "holds" if sign * m > 2 * se else ("contradicted" if -sign * m > 2 * se else "not significant")

    lines.append("1. every model does worse as p falls (test MSE, mean of both tasks, p=lo minus p=hi):")
    for m in models:
        d = _paired(runs, (m, lo), (m, hi))
        lines.append(f"   {m}: MSE({lo}) - MSE({hi}) = {fmt(*d)}: {verdict(d[0], d[1], +1)}")
    lines.append(f"2. MMoE's gap between p={lo} and p={hi} is much smaller than OMoE's and shared-bottom's "
                 f"(gap of the model minus MMoE's gap):")
    for m in ("omoe", "shared_bottom", "cgc", "ple"):
        if m in models and "mmoe" in models:
            gm = _paired(runs, (m, lo), (m, hi))[0]
            gmm = _paired(runs, ("mmoe", lo), ("mmoe", hi))[0]
            lines.append(f"   gap {m} = {gm:+.3f}, gap mmoe = {gmm:+.3f}, difference {gm - gmm:+.3f}")
    lines.append("3. both MoE models beat shared-bottom on average (model minus shared_bottom; < 0 = better):")
    for m in ("omoe", "mmoe"):
        for p in ps:
            if m in models and "shared_bottom" in models:
                d = _paired(runs, (m, p), ("shared_bottom", p))
                lines.append(f"   {m} p={p}: {fmt(*d)}: {verdict(d[0], d[1], -1)}")
    lines.append("4. robustness: std over runs of the test MSE (mean of both tasks):")
    for m in models:
        lines.append(f"   {m}: " + ", ".join(f"p={p}: {summary[f'{m}@{p}']['mean'][1]:.3f}" for p in ps
                                          if f"{m}@{p}" in summary))
    lines.append(f"5. PLE paper: at low correlation (p={lo}) CGC and PLE beat MMoE on both tasks "
                 f"(minus mmoe; < 0 = better):")
    for m in ("cgc", "ple"):
        if m in models and "mmoe" in models:
            for t in (0, 1):
                d = _paired(runs, (m, lo), ("mmoe", lo), t)
                lines.append(f"   {m} task{t + 1}: {fmt(*d)}: {verdict(d[0], d[1], -1)}")
    return "\n".join(lines)


def table(summary: dict) -> str:
    """The results table (test MSE) and the diagnostics table, Markdown."""
    lines = ["| model | p | lr | runs | task1 test MSE | task2 test MSE | mean of both: mean ± std | min / median / max |",
             "|---|---|---|---|---|---|---|---|"]
    for key, c in summary.items():
        model, p = key.split("@")
        f = "{:.3f} ± {:.3f}".format
        mm = " / ".join(f"{v:.3f}" for v in c["mean_min_median_max"])
        lines.append(f"| {model} | {p} | {c['lr']:g} | {c['runs']} | {f(*c['task1'])} | {f(*c['task2'])} | {f(*c['mean'])} "
                     f"| {mm} |")
    lines += ["", "| model | p | grad cos (script) | neg. share (script) | grad cos (trainer diag) "
              "| neg. share (trainer diag) | MMoE gates: TV of mean weights | MMoE gates: mean per-row TV "
              "| CGC/PLE: weight on shared experts "
              "| gate entropy (nats) / max | unused experts |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]

    def g(c, k, fmt="{:.3f}"):
        return fmt.format(c[k]) if c.get(k) is not None else "-"
    for key, c in summary.items():
        model, p = key.split("@")
        ent = (f"{c['diag_gate_entropy']:.2f} / {c['diag_gate_max_entropy']:.2f}" if "diag_gate_entropy" in c else "-")
        lines.append(f"| {model} | {p} | {g(c, 'grad_cos_mean')} | {g(c, 'grad_cos_negative_share', '{:.2f}')} "
                     f"| {g(c, 'diag_grad_cos_mean')} | {g(c, 'diag_grad_cos_negative_share', '{:.2f}')} "
                     f"| {g(c, 'gate_tv_of_means')} | {g(c, 'gate_tv_per_row')} | {g(c, 'gate_shared_share')} | {ent} "
                     f"| {g(c, 'diag_unused_share', '{:.2f}')} |")
    return "\n".join(lines)


def plot(summary: dict, runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = sorted({float(k.split("@")[1]) for k in summary})
    models = [m for m in MODELS if any(k.startswith(m + "@") for k in summary)]
    fig, ax = plt.subplots(2, len(ps), figsize=(4.2 * len(ps), 6.4), squeeze=False)
    colors = dict(zip(MODELS, ["tab:gray", "tab:orange", "tab:blue", "tab:green", "tab:red"]))
    for j, p in enumerate(ps):
        for m in models:
            c = summary.get(f"{m}@{p}")
            if c is None:
                continue
            ax[0, j].plot(c["curve_steps"], c["curve_train_loss"], color=colors[m], label=m)
            vals = [r_mean for r_mean in c["per_run_mean"]]
            ax[1, j].hist(vals, bins=np.linspace(0, max(max(vals), 0.5), 25), histtype="step", color=colors[m], label=m)
        ax[0, j].set_title(f"p = {p}: training loss (mean of runs)", fontsize=9)
        ax[0, j].set_yscale("log")
        ax[0, j].set_xlabel("step", fontsize=8)
        ax[1, j].set_title(f"p = {p}: test MSE per run (mean of tasks)", fontsize=9)
        ax[1, j].set_xlabel("test MSE", fontsize=8)
    ax[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/mmoe_synthetic")
    ap.add_argument("--runs", type=int, default=20, help="independent runs per (model, p) cell")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="run these seeds only (instead of 0 .. runs-1): to share the runs among processes")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--ps", type=float, nargs="+", default=[0.5, 0.9, 1.0])
    ap.add_argument("--train-rows", type=int, default=64000)
    ap.add_argument("--val-rows", type=int, default=1000)
    ap.add_argument("--test-rows", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=50, help="steps between val evaluations (curve points)")
    ap.add_argument("--diag-every", type=int, default=25, help="steps between gradient-cosine measurements; 0: off")
    ap.add_argument("--lr", type=float, default=None, help="one lr for every model instead of the pilot")
    ap.add_argument("--pilot-runs", type=int, default=1, help="runs per (model, lr) in the lr pilot")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="only summarise runs.jsonl")
    ap.add_argument("--plot", default=None, help="write the figure (PNG) here")
    a = ap.parse_args()
    logging.getLogger("mtl_train").setLevel(logging.WARNING)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.jsonl"
    if not a.report:
        t0 = time.time()
        lrs = {m: a.lr for m in a.models} if a.lr is not None else pilot(a, out)
        counts = {m: param_counts(compose(overrides(m, 0.5, 1e-3, 0, a))) for m in a.models}
        (out / "params.json").write_text(json.dumps(counts, indent=2))
        print("parameters:", json.dumps(counts), flush=True)
        done = {(r["model"], r["p"], r["seed"]) for r in load_runs(path)}
        for seed in (a.seeds if a.seeds is not None else range(a.runs)):  # seed-major: a stopped experiment has
            # every cell alike
            for p in a.ps:
                for model in a.models:
                    if (model, p, seed) in done:
                        continue
                    rec = train_one(model, p, lrs[model], seed, a)
                    append_run(path, rec)
                    print(f"{model} p={p} seed={seed}: test mse {rec['test_mse'][0]:.4f} {rec['test_mse'][1]:.4f} "
                          f"({rec['cpu_s']} s cpu, {time.time() - t0:.0f} s elapsed)", flush=True)
    summary = summarise(load_runs(path), a)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table(summary))
    print()
    print(claims(summary, load_runs(path)))
    if a.plot:
        plot(summary, load_runs(path), a.plot)
        print(f"figure: {a.plot}")
    if not math.isfinite(sum(c["mean"][0] for c in summary.values())):
        sys.exit(1)


if __name__ == "__main__":
    main()

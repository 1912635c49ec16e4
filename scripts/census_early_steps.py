"""Census-Income in the first training steps: per-task val AUC from the untrained model on, and
where the income ranking comes from (docs/RESULTS.md, "Diagnostics (issue 17)").

For each seed: the run's data and model (``dataset=census dataset.max_rows=20000``, the model of
``--model``, default config otherwise), then at each step of ``--show`` (0: the untrained model)
the exact val AUC of every task, the AUC of the marital score against the income label (how well
the marital output ranks income), the Spearman correlation of the income and marital scores, and
at the first and last shown steps the Spearman correlation of the income score with each numeric
input. Training steps are ``Trainer.train_step`` on the run's own batches, in its order.

Usage: python scripts/census_early_steps.py [--model mmoe] [--seeds 0,1,2] [--steps 12] [--show 0,1,12]
           [--path ../shared/data/census-income-kdd/census-income.test.gz] [OVERRIDE ...]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mtl_train.config import validate  # noqa: E402
from mtl_train.data.datasets import load_dataset  # noqa: E402
from mtl_train.metrics import exact_auc  # noqa: E402
from mtl_train.train.evaluate import score_chunks  # noqa: E402
from mtl_train.train.trainer import Trainer  # noqa: E402


def val_scores(tr: Trainer):
    """({output: scores}, {output: labels}, dense inputs [N, F]) on the val split."""
    s: dict[str, list] = {}
    lab: dict[str, list] = {}
    dense = []
    for outs, b in score_chunks(tr.model, tr.data.val, tr.device, 16384):
        for n, eo in outs.items():
            s.setdefault(n, []).append(eo.score.numpy())
            lab.setdefault(n, []).append(eo.label.numpy())
        dense.append(b["dense"].numpy())
    return ({n: np.concatenate(v) for n, v in s.items()}, {n: np.concatenate(v) for n, v in lab.items()},
            np.concatenate(dense))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable")
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable")
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mmoe")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--show", default=None, help="steps to evaluate at (default: every step)")
    ap.add_argument("--path", default=str(REPO.parent / "shared" / "data" / "census-income-kdd" / "census-income.test.gz"))
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    logging.disable(logging.WARNING)
    show = None if a.show is None else {int(x) for x in a.show.split(",")}
    for seed in [int(x) for x in a.seeds.split(",")]:
        with initialize_config_module("mtl_train.conf", version_base="1.3"):
            cfg = validate(compose("config", overrides=[
                "dataset=census", f"dataset.path={a.path}", "dataset.max_rows=20000", "trainer.epochs=1",
                "trainer.progress=false", f"model={a.model}", f"seed={seed}", *a.overrides]))
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        data = load_dataset(cfg.dataset, cfg.seed)
        names = [f.name for f in data.schema.dense]
        with tempfile.TemporaryDirectory() as tmp:
            tr = Trainer(cfg, data, tmp)
            tr.model.train()
            tr.state.data.begin_epoch(0)
            epoch, it = 0, iter(tr.loader)
            for step in range(a.steps + 1):
                if show is None or step in show:
                    s, lab, dense = val_scores(tr)
                    inc, mar = s["income"], s.get("marital")
                    line = f"{a.model} seed {seed} step {step}: val auc income {exact_auc(inc, lab['income']):.3f}"
                    if mar is not None:
                        line += (f" marital {exact_auc(mar, lab['marital']):.3f}; auc(marital score, income label) "
                                 f"{exact_auc(mar, lab['income']):.3f}; spearman(income, marital scores) "
                                 f"{spearman(inc, mar):+.2f}")
                    if step in (0, a.steps):
                        line += "; spearman(income score, x): " + " ".join(
                            f"{n}={spearman(inc, dense[:, k]):+.2f}" for k, n in enumerate(names))
                        line += f"; income score mean {inc.mean():.3f} std {inc.std():.4f}"
                    print(line, flush=True)
                if step == a.steps:
                    break
                try:
                    b = next(it)
                except StopIteration:
                    epoch += 1
                    tr.loader.set_epoch(epoch)
                    it = iter(tr.loader)
                    b = next(it)
                tr.train_step(b)
            tr.logger.close()


if __name__ == "__main__":
    main()

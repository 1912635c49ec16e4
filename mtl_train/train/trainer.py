"""The training loop: train, evaluate on val, early-stop, checkpoint, test with the best weights.

Read top to bottom: :func:`run` builds everything from the config and calls :class:`Trainer`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mtl_train.balancing.base import build_balancer
from mtl_train.data.datasets import load_dataset
from mtl_train.data.loader import InMemoryLoader
from mtl_train.data.schema import DatasetBundle, Table
from mtl_train.errors import ConfigError, DataError
from mtl_train.metrics import binary_metrics, regression_metrics
from mtl_train.models.builder import MultiTaskModel, build_model
from mtl_train.train import checkpoint as ckpt
from mtl_train.train.logger import RunLogger

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; otherwise ``torch.device(name)``.

    Raises ConfigError for an unknown device or cuda requested without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device: unknown device '{name}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device: '{name}' requested but CUDA is not available")
    return dev


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: MultiTaskModel, table: Table, device: torch.device, batch_size: int, split: str) -> dict:
    """Exact metrics of every evaluated output over the whole ``table``.

    Returns {output name: metrics dict} (see :mod:`mtl_train.metrics`).
    """
    was_training = model.training
    model.eval()
    scores: dict[str, list] = {}
    types: dict[str, str] = {}
    for s in range(0, len(table), batch_size):
        batch = to_device(table.slice(s, min(s + batch_size, len(table))), device)
        out = model(batch)
        for name, eo in model.graph.eval_outputs(out, batch).items():
            m = eo.mask
            scores.setdefault(name, []).append((eo.score[m].float().cpu(), eo.label[m].float().cpu()))
            types[name] = eo.type
    model.train(was_training)
    result = {}
    for name, parts in scores.items():
        score = torch.cat([p[0] for p in parts]).numpy()
        label = torch.cat([p[1] for p in parts]).numpy()
        fn = regression_metrics if types[name] == "regression" else binary_metrics
        result[name] = fn(score, label, name=name, split=split)
    return result


def monitor_value(metrics: dict, monitor: str) -> float | None:
    """Value of ``<metric>/<output>`` (e.g. ``auc/income``) or ``<metric>/mean`` (mean over the
    outputs where the metric is defined) in a split's metrics."""
    metric, _, what = monitor.partition("/")
    if what == "mean":
        vals = [m[metric] for m in metrics.values() if m.get(metric) is not None]
        return float(np.mean(vals)) if vals else None
    if what not in metrics:
        raise ConfigError(f"trainer.monitor: no evaluated output '{what}' (have {sorted(metrics)})")
    return metrics[what].get(metric)


def build_optimizer(model: torch.nn.Module, cfg) -> list[torch.optim.Optimizer]:
    """Adam/AdamW for dense parameters; a sparse embedding table (``model.sparse_embedding``)
    gets ``torch.optim.SparseAdam`` with the same learning rate."""
    sparse = [p for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse for p in m.parameters()]
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    if cfg.optimizer == "adam":
        opts = [torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)]
    elif cfg.optimizer == "adamw":
        opts = [torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)]
    elif cfg.optimizer == "sgd":
        opts = [torch.optim.SGD(dense, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)]
    else:
        raise ConfigError(f"trainer.optimizer: unknown optimizer '{cfg.optimizer}' (choose from adam, adamw, sgd)")
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=cfg.lr))
    return opts


class Trainer:
    """Owns the loop and every piece of state a checkpoint holds."""

    def __init__(self, cfg: DictConfig, data: DatasetBundle, run_dir: str):
        self.cfg, self.data, self.run_dir = cfg, data, run_dir
        tcfg = cfg.trainer
        self.device = resolve_device(tcfg.device)
        self.model = build_model(data.schema, cfg.model, cfg.graph).to(self.device)
        self.loss_names = self.model.graph.loss_names
        self.balancer = build_balancer(cfg.loss, self.loss_names, self.model).to(self.device)
        self.optimizers = build_optimizer(self.model, tcfg)
        self.loader = InMemoryLoader(data.train, tcfg.batch_size, shuffle=True, seed=cfg.seed)
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.logger = RunLogger(run_dir, cfg, self.loss_names, progress=tcfg.progress)
        self.step = 0
        self.epoch = 0
        self.best: float | None = None
        self.best_step = -1
        self.bad_evals = 0
        self.last_eval_step = -1
        self.sign = 1.0 if tcfg.monitor_mode == "max" else -1.0
        if tcfg.monitor_mode not in ("max", "min"):
            raise ConfigError(f"trainer.monitor_mode: '{tcfg.monitor_mode}' is not one of max, min")

    # ---- checkpoint -------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "balancer": self.balancer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "best": self.best,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "rng": ckpt.rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def save(self, name: str) -> None:
        ckpt.save_atomic(self.state(), os.path.join(self.ckpt_dir, name))

    # ---- loop -------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        out = self.model(batch)
        losses, counts = self.model.graph.losses(out, batch["labels"])
        if not bool(torch.isfinite(losses).all()):
            bad = [n for n, v in zip(self.loss_names, losses.tolist()) if not math.isfinite(v)]
            raise FloatingPointError(f"non-finite loss at step {self.step} in task(s) {bad}")
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        logs = self.balancer.backward(losses, counts, self.model, out)
        for o in self.optimizers:
            o.step()
        return losses.detach(), logs

    def evaluate(self, split: str) -> dict:
        table = getattr(self.data, split)
        return evaluate(self.model, table, self.device, self.cfg.trainer.eval_batch_size, split)

    def validate(self) -> bool:
        """Evaluate on val, keep best.pt, return True when early stopping says stop."""
        tcfg = self.cfg.trainer
        metrics = self.evaluate("val")
        self.last_eval_step = self.step
        self.logger.eval_metrics("val", metrics, self.step)
        value = monitor_value(metrics, tcfg.monitor)
        improved = value is not None and (self.best is None or self.sign * (value - self.best) > tcfg.min_delta)
        if improved:
            self.best, self.best_step, self.bad_evals = value, self.step, 0
            self.save("best.pt")
        else:
            self.bad_evals += 1
        log.info("step %d val %s = %s (best %s at step %d)", self.step, tcfg.monitor,
                 f"{value:.5f}" if value is not None else None, f"{self.best:.5f}" if self.best is not None else None,
                 self.best_step)
        return tcfg.patience is not None and self.bad_evals >= tcfg.patience

    def fit(self) -> dict:
        tcfg = self.cfg.trainer
        self.model.train()
        stop = False
        t_start = time.perf_counter()
        while self.epoch < tcfg.epochs and not stop:
            self.loader.set_epoch(self.epoch)
            bar = self.logger.progress(len(self.loader), f"epoch {self.epoch + 1}/{tcfg.epochs}")
            for batch in self.loader:
                batch = to_device(batch, self.device)
                losses, logs = self.train_step(batch)
                self.step += 1
                n = batch["labels"].shape[0]
                self.logger.train_step(self.step, n, losses, self.balancer.weights(), logs, bar)
                if tcfg.eval_every_steps and self.step % tcfg.eval_every_steps == 0:
                    stop = self.validate()
                if (tcfg.max_steps and self.step >= tcfg.max_steps) or stop:
                    stop = True
                    break
            self.logger.close_progress(bar)
            self.epoch += 1
            if not tcfg.eval_every_steps:
                stop = self.validate() or stop
            self.save("last.pt")
        if self.last_eval_step != self.step:
            self.validate()
            self.save("last.pt")
        train_s = time.perf_counter() - t_start
        return self.finish(train_s)

    def finish(self, train_s: float) -> dict:
        """Reload best.pt, evaluate val and test, write metrics.json."""
        best_path = os.path.join(self.ckpt_dir, "best.pt")
        if os.path.exists(best_path):
            self.model.load_state_dict(ckpt.load(best_path, self.device)["model"])
        results = {"val": self.evaluate("val"), "test": self.evaluate("test")}
        self.logger.eval_metrics("test", results["test"], self.step)
        self.logger.final(results)
        with open(os.path.join(self.run_dir, "metrics.json"), "w") as f:
            json.dump(results, f, indent=2)
        run_info = {
            "steps": self.step, "epochs": self.epoch, "best_step": self.best_step, "best": self.best,
            "monitor": self.cfg.trainer.monitor, "train_seconds": round(train_s, 3),
            "train_samples_per_s": round(self.step * self.cfg.trainer.batch_size / max(train_s, 1e-9), 1),
            "device": str(self.device), "data": self.data.info.get("protocol"),
        }
        with open(os.path.join(self.run_dir, "run.json"), "w") as f:
            json.dump(run_info, f, indent=2)
        self.logger.close()
        return results


def run(cfg: DictConfig, run_dir: str) -> dict:
    """Load the data, build model and balancer, train, test; return the metrics dict."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    data = load_dataset(cfg.dataset, cfg.seed)
    for k, task in enumerate(data.schema.tasks):
        col = data.train.labels[:, k]
        if task.type == "binary" and not bool((col == 1).any()):
            raise DataError(f"dataset: task '{task.name}' (column '{task.label}') has no positive label in the training split")
    trainer = Trainer(cfg, data, run_dir)
    return trainer.fit()

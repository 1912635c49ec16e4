"""Run logging: TensorBoard scalars, the progress bar, and the hparams row of the run.

TensorBoard tags: ``train/loss/<task>``, ``train/weight/<task>``, ``train/<balancer key>``,
``<split>/<metric>/<output>`` (e.g. ``val/auc/click``), ``train/samples_per_s``.
"""
from __future__ import annotations

import logging
import os
import time

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

log = logging.getLogger(__name__)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict -> {"a.b.c": value}; lists become strings, None becomes "None"."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = str(list(v))
        elif v is None:
            out[key] = "None"
        else:
            out[key] = v
    return out


class RunLogger:
    """Writes TensorBoard events under ``<run_dir>/tb`` and drives a tqdm progress bar."""

    def __init__(self, run_dir: str, cfg, loss_names: list[str], progress: bool = True, purge_step: int | None = None):
        """``purge_step``: on resume, the first step the resumed run will write; TensorBoard then
        drops the events at or after it that the interrupted run had written (no duplicates)."""
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        self.loss_names = loss_names
        self.every = max(1, int(cfg.trainer.log_every_steps))
        self.writer = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=purge_step)
        self.show_progress = progress
        self._t = time.perf_counter()
        self._samples = 0
        self._loss_sum = torch.zeros(len(loss_names))
        self._loss_n = 0

    def progress(self, total: int, desc: str):
        if not self.show_progress:
            return None
        return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False, mininterval=0.5)

    def close_progress(self, bar) -> None:
        if bar is not None:
            bar.close()

    def train_step(self, step: int, n: int, losses: torch.Tensor, weights: torch.Tensor, logs: dict, bar) -> None:
        self._samples += n
        self._loss_sum += losses.float().cpu()
        self._loss_n += 1
        if bar is not None:
            bar.update(1)
        if step % self.every:
            return
        now = time.perf_counter()
        rate = self._samples / max(now - self._t, 1e-9)
        mean = (self._loss_sum / self._loss_n).tolist()
        for name, v, w in zip(self.loss_names, mean, weights.tolist()):
            self.writer.add_scalar(f"train/loss/{name}", v, step)
            self.writer.add_scalar(f"train/weight/{name}", w, step)
        for k, v in logs.items():
            self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.add_scalar("train/samples_per_s", rate, step)
        if bar is not None:
            bar.set_postfix({"samples/s": f"{rate:,.0f}", **{n_: f"{v:.4f}" for n_, v in zip(self.loss_names, mean)}},
                            refresh=False)
        self._t, self._samples, self._loss_n = now, 0, 0
        self._loss_sum.zero_()

    def eval_metrics(self, split: str, metrics: dict, step: int) -> None:
        for name, m in metrics.items():
            for metric, v in m.items():
                if metric in ("rows", "positives") or v is None:
                    continue
                self.writer.add_scalar(f"{split}/{metric}/{name}", v, step)
        text = ", ".join(
            f"{name}: " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k in ("auc", "logloss", "mse", "r2") and v is not None)
            for name, m in metrics.items()
        )
        log.info("%s @ step %d: %s", split, step, text)

    def final(self, results: dict) -> None:
        """One hparams row: the flattened config joined with the final val/test metrics."""
        hparams = flatten(OmegaConf.to_container(self.cfg, resolve=True))
        hparams = {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool))}
        metrics = {}
        for split, per in results.items():
            for name, m in per.items():
                for metric in ("auc", "logloss", "mse", "r2"):
                    if m.get(metric) is not None:
                        metrics[f"hparams/{split}/{metric}/{name}"] = m[metric]
        self.writer.add_hparams(hparams, metrics, run_name=".")

    def flush(self) -> None:
        """Write pending events to disk (before a checkpoint, so a kill loses none of them)."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()

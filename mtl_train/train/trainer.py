"""The training loop: train, evaluate on val, early-stop, checkpoint, test with the best weights.

Read top to bottom: :func:`run` builds everything from the config and calls :class:`Trainer`:
``fit`` -> ``train_epoch`` -> ``train_step``, ``validate`` on schedule, ``finish`` tests. Beside
it: evaluate.py (metrics), optim.py (optimizers, LR schedule), resume.py (resume config),
state.py (what a checkpoint holds), device.py (device, precision), signals.py.

Runs you can trust:

- every piece of state lives in one :class:`~mtl_train.train.state.TrainState` (model,
  optimizers, LR schedulers, balancer, data position, every RNG, progress: step, epoch,
  early-stopping counters), written atomically to ``checkpoints/last.pt`` every
  ``trainer.checkpoint_every_steps`` steps, at each epoch end and at the end, and to
  ``checkpoints/best.pt`` on each val improvement;
- ``trainer.resume=<run dir or checkpoint>`` restores all of it, so a run killed at any point
  and resumed ends with the same metrics.json as an uninterrupted one (CPU, same seed);
- SIGINT/SIGTERM finish the current step, write last.pt and raise :class:`RunInterrupted`;
- a non-finite loss stops the run naming the step and task (``trainer.nonfinite=stop``) or
  skips the batch, counted in run.json (``skip``); a non-finite model is never saved. A broken
  model stops the run as a non-finite loss does, under ``skip`` too: non-finite parameters or
  scores at a batch that would be skipped, non-finite scores at an evaluation. A stopped run's
  run.json says how far it got and why (``error``);
- TensorBoard gets a training point (mean losses, the weights each step applied, the
  balancer's logs) every ``trainer.log_every_steps`` steps, at every evaluation and at the
  last step.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time

import numpy as np
import torch
from omegaconf import DictConfig

from mtl_train import kernels
from mtl_train.balancing.base import build_balancer
from mtl_train.data.datasets import load_dataset
from mtl_train.data.schema import DatasetBundle
from mtl_train.data.stream import train_loader
from mtl_train.errors import DataError, NonFiniteScores, RunInterrupted, TrainingError
from mtl_train.models.builder import build_model
from mtl_train.models.memory import check_memory
from mtl_train.system import tune_malloc
from mtl_train.train import checkpoint as ckpt
from mtl_train.train.device import resolve_device, resolve_precision, to_device
from mtl_train.train.evaluate import check_gauc_by, evaluate, gauc_column, monitor_value
from mtl_train.train.logger import RunLogger
from mtl_train.train.nonfinite import NonFiniteGuard
from mtl_train.train.optim import build_optimizer, build_schedulers, sparse_embedding_default
from mtl_train.train.placement import place_data, train_loader_on
from mtl_train.train.resume import starting_point
from mtl_train.train.signals import StopSignal
from mtl_train.train.state import RNG, DataPosition, Each, Progress, TrainState

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: str, overridden: list[str] = ()) -> dict:
    """Load the data, build model and balancer, train, test; return the metrics dict.

    With ``trainer.resume`` the run continues from that checkpoint (or the run directory's
    ``checkpoints/last.pt``) with the checkpoint's config (see
    :func:`~mtl_train.train.resume.resume_config`).

    Raises:
        ConfigError: ``run_dir`` already holds a checkpoint and no resume was asked for;
            a bad resume target or override.
        DataError: bad data (see the dataset loaders); no positive label in train.
        TrainingError: a non-finite loss (``trainer.nonfinite=stop``), a broken model
            (non-finite parameters or scores, either setting).
        RunInterrupted: SIGINT/SIGTERM (after writing last.pt).
    """
    cfg, state = starting_point(cfg, run_dir, list(overridden))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    if cfg.trainer.tune_malloc:
        tune_malloc()
    data = load_dataset(cfg.dataset, cfg.seed)
    _check_labels(data)
    trainer = Trainer(cfg, data, run_dir, resume_state=state)
    try:
        return trainer.fit()
    finally:  # a job that fails still closes its event file (sweeps run many jobs in one process)
        trainer.logger.close(failed=True)


def _check_labels(data: DatasetBundle) -> None:
    """Raises DataError when a binary task has no positive label in the training split."""
    positives = data.train.positives(data.schema.tasks)
    for task in data.schema.tasks:
        if task.type == "binary" and not positives[task.name]:
            raise DataError(f"dataset: task '{task.name}' (column '{task.label}') "
                            "has no positive label in the training split")


class Trainer:
    """Owns the loop and the :class:`~mtl_train.train.state.TrainState` a checkpoint holds.

    Args:
        cfg: the validated config. data: the dataset bundle. run_dir: where to write.
        resume_state: a checkpoint dict (see :mod:`mtl_train.train.state`) to continue from.
    """

    def __init__(self, cfg: DictConfig, data: DatasetBundle, run_dir: str, resume_state: dict | None = None):
        self.cfg, self.data, self.run_dir = cfg, data, run_dir
        tcfg = cfg.trainer
        self.device = resolve_device(tcfg.device)
        # hand-written kernels or their references, process-wide: the kernels are CPU kernels; on a GPU
        # the references (cuBLAS GEMMs under autograd) run, see mtl_train.kernels
        kernels.set_fused(tcfg.fused_kernels and self.device.type == "cpu")
        sparse_default = sparse_embedding_default(cfg, self.device)
        check_memory(data.schema, cfg, self.device, sparse_default)  # before allocating
        self.model = build_model(data.schema, cfg.model, cfg.graph, sparse_default=sparse_default).to(self.device)
        self.loss_names = self.model.graph.loss_names
        self.balancer = build_balancer(cfg.loss, self.loss_names, self.model).to(self.device)
        self.optimizers = build_optimizer(self.model, tcfg)
        # on a GPU: splits that fit move to the device, the others are copied ahead (see placement.py)
        data, self.placement = place_data(data, self.device)
        self.data = data
        self.loader = train_loader_on(data.train, train_loader(data.train, tcfg.batch_size, seed=cfg.seed), self.device,
                                      self.placement["train"])
        steps = tcfg.epochs * len(self.loader)
        self.total_steps = min(steps, tcfg.max_steps) if tcfg.max_steps else steps
        self.schedulers = build_schedulers(self.optimizers, tcfg, self.total_steps)
        self.progress = Progress()
        self.nonfinite = NonFiniteGuard(tcfg.nonfinite, self.loss_names, self.progress, self._last_good)
        self.state = TrainState(model=self.model, optimizers=Each(self.optimizers), schedulers=Each(self.schedulers),
                                balancer=self.balancer, data=DataPosition(self.loader), rng=RNG(),
                                progress=self.progress, config=cfg, schema=data.schema)
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.last_saved_step: int | None = None
        self.signals = StopSignal()
        self.excluded_seconds = 0.0  # validation and checkpoint time (not in the training rate)
        self.best_val: tuple[int, dict] | None = None  # (step, val metrics) of the evaluation that wrote best.pt
        self.samples = 0
        self.epoch_batches = len(self.loader)  # batches of the current epoch (set again as each begins)
        self.sign = 1.0 if tcfg.monitor_mode == "max" else -1.0
        self.gauc_index = gauc_column(data.schema, tcfg.gauc_by)
        check_gauc_by(cfg)
        self.autocast_dtype = resolve_precision(tcfg.precision, self.device)
        if self.autocast_dtype is not None and not any(True for _ in self.model.backbone.parameters()):
            log.warning("trainer.precision=%s changes nothing here: model.backbone=%s has no layers of its own, and "
                        "the embedding lookup and the task graph run in float32", tcfg.precision, cfg.model.backbone)
        self.sparse_embedding = any(isinstance(m, torch.nn.Embedding) and m.sparse for m in self.model.modules())
        if resume_state is not None:
            self.state.load_state_dict(resume_state)
            self.progress.resumes.append({"step": self.progress.step, "epoch": self.progress.epoch})
            self.last_saved_step = self.progress.step
        purge = self.progress.step + 1 if resume_state is not None else None
        self.logger = RunLogger(run_dir, cfg, self.loss_names, progress=tcfg.progress, purge_step=purge)

    # ---- loop -------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until ``trainer.epochs``, ``trainer.max_steps`` or early stopping, then
        :meth:`finish`. A resumed trainer continues at its step, epoch and data position.

        Raises:
            TrainingError: a non-finite loss, parameters or scores (see :meth:`train_step`,
                :meth:`evaluate`, :meth:`save`), after writing run.json with ``error``."""
        tcfg, p = self.cfg.trainer, self.progress
        self.model.train()
        # a resumed run stops where the run would have: epochs, max_steps, early stopping (so a
        # finished run resumed with more trainer.epochs trains on; unchanged, it only re-tests)
        stop = self._max_reached() or (tcfg.patience is not None and p.bad_evals >= tcfg.patience)
        log.info("training %s + %s, loss=%s: %d steps/epoch of %d, device %s, %d threads, precision %s, "
                 "sparse embedding %s", self.cfg.model.name or self.cfg.model.backbone, self.cfg.graph.name,
                 self.cfg.loss.name, len(self.loader), tcfg.batch_size, self.device, torch.get_num_threads(), tcfg.precision,
                 "on" if self.sparse_embedding else "off")
        t_start = time.perf_counter()
        try:
            with self.signals.handled(lambda: p.step + 1):
                while p.epoch < tcfg.epochs and not stop:
                    stop = self.train_epoch()
                    if stop and self.loader.state_dict()["batch"] < len(self.loader):
                        # stopped inside the epoch (max_steps, early stopping): the epoch and its data
                        # position stay, so a resume with a larger trainer.max_steps continues right there
                        break
                    p.epoch += 1
                    if not tcfg.eval_every_steps:
                        stop = self.validate() or stop
                    if p.epoch < tcfg.epochs:
                        self.loader.set_epoch(p.epoch)  # the position a checkpoint now records
                    # the last epoch's end needs no save of its own when the final one follows at once
                    final = p.epoch >= tcfg.epochs and p.last_eval_step == p.step
                    if not stop and not final:
                        self.save("last.pt")
                        log.info("checkpoint: last.pt at step %d (end of epoch %d)", p.step, p.epoch)
                    self._check_signal(None)
                if p.last_eval_step != p.step:
                    self.validate()
                p.done = True
                self.save("last.pt")
            train_s = time.perf_counter() - t_start
            return self.finish(train_s)
        except TrainingError as e:  # run.json still says how far the run got, and why it stopped
            self.write_run_info(time.perf_counter() - t_start, error=str(e))
            raise

    def train_epoch(self) -> bool:
        """Train on the current epoch from the data position on, validating and writing last.pt
        on schedule; return True when training should stop (``trainer.max_steps``, early
        stopping), possibly before the epoch's end."""
        tcfg, p = self.cfg.trainer, self.progress
        self.state.data.begin_epoch(p.epoch)
        start = self.loader.state_dict()["batch"]
        self.epoch_batches = len(self.loader)
        bar = self.logger.progress(self.epoch_batches - start, f"epoch {p.epoch + 1}/{tcfg.epochs}")
        stop = False
        for batch in self.loader:
            batch = to_device(batch, self.device)
            result = self.train_step(batch)
            if result is not None:
                losses, weights, logs = result
                p.step += 1
                n = batch["labels"].shape[0]
                self.samples += n
                self.logger.train_step(p.step, n, losses, weights, logs, bar, write=self._point_due(p.step))
                if tcfg.eval_every_steps and p.step % tcfg.eval_every_steps == 0:
                    stop = self.validate()
                stop = stop or self._max_reached()
                if tcfg.checkpoint_every_steps and p.step % tcfg.checkpoint_every_steps == 0 and not stop:
                    self.save("last.pt")
                    log.info("checkpoint: last.pt at step %d", p.step)
            elif bar is not None:
                bar.update(1)
            self._check_signal(bar)
            if stop:
                break
        self.logger.close_progress(bar)
        return stop

    def autocast(self):
        """The training forward's precision context: ``torch.autocast`` in bfloat16 with
        ``trainer.precision=bf16`` (see :func:`~mtl_train.train.device.resolve_precision`), else a no-op."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict] | None:
        """One optimizer step; returns (losses [T], the task weights [T] that multiplied them,
        logs), or None when the batch was skipped for a non-finite loss (``trainer.nonfinite=skip``).

        Raises:
            TrainingError: a non-finite loss with ``trainer.nonfinite=stop``; with ``skip``, a
                non-finite loss from a broken model (non-finite parameters or scores), which
                skipping batches cannot mend."""
        with self.autocast():
            out = self.model(batch)
        losses, counts = self.model.graph.losses(out, batch["labels"])
        if self.nonfinite.skip(losses, self.model, out, batch):
            return None
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        # the balancer computes its diagnostics (gradient cosines...) only on steps the logger writes
        self.balancer.log_due = self._point_due(self.progress.step + 1)
        logs, weights = self.balancer.step(losses, counts, self.model, out)
        for o in self.optimizers:
            o.step()
        for sch in self.schedulers:
            sch.step()
        logs = dict(logs)
        logs["lr"] = self.optimizers[0].param_groups[0]["lr"]
        return losses.detach(), weights, logs

    def _point_due(self, step: int) -> bool:
        """Whether the logger writes a training point (losses, weights, the balancer's logs) at
        ``step``: every ``trainer.log_every_steps``, at each scheduled evaluation and at the last
        step, so a run shorter than ``log_every_steps`` has its curve too. Evaluations write any
        point still pending (:meth:`validate`), which covers a last batch that was skipped."""
        tcfg = self.cfg.trainer
        if step % max(1, int(tcfg.log_every_steps)) == 0 or step >= self.total_steps:
            return True
        if tcfg.eval_every_steps:
            return step % tcfg.eval_every_steps == 0
        # evaluation after every epoch: this step ends one when the loader has handed out its last batch
        return self.loader.state_dict()["batch"] >= self.epoch_batches

    def validate(self) -> bool:
        """Evaluate on val, keep best.pt, return True when early stopping says stop."""
        tcfg, p = self.cfg.trainer, self.progress
        self.logger.write_pending()  # the training point of this step, if its schedule did not write it
        t0 = time.perf_counter()
        metrics = self.evaluate("val")
        self.excluded_seconds += time.perf_counter() - t0  # best.pt saves count in save()
        p.last_eval_step = p.step
        self.logger.eval_metrics("val", metrics, p.step)
        value = monitor_value(metrics, tcfg.monitor)
        improved = value is not None and (p.best is None or self.sign * (value - p.best) > tcfg.min_delta)
        if improved:
            p.best, p.best_step, p.bad_evals = value, p.step, 0
            self.save("best.pt")
            self.best_val = (p.step, copy.deepcopy(metrics))
        else:
            p.bad_evals += 1
        log.info("step %d val %s = %s (best %s at step %d)", p.step, tcfg.monitor,
                 f"{value:.5f}" if value is not None else None, f"{p.best:.5f}" if p.best is not None else None,
                 p.best_step)
        return tcfg.patience is not None and p.bad_evals >= tcfg.patience

    def evaluate(self, split: str) -> dict:
        """Metrics of the model on ``split`` (see :func:`~mtl_train.train.evaluate.evaluate`).

        Raises:
            TrainingError: the model scored a row NaN or inf (naming the step, the split, the
                output and the last good checkpoint)."""
        table = getattr(self.data, split)
        try:
            return evaluate(self.model, table, self.device, self.cfg.trainer.eval_batch_size, split, self.gauc_index)
        except NonFiniteScores as e:  # a broken model: stopped as a non-finite loss stops it
            raise TrainingError(f"{e} at step {self.progress.step}; stopped, {self._last_good()}") from None

    def _max_reached(self) -> bool:
        m = self.cfg.trainer.max_steps
        return bool(m) and self.progress.step >= m

    def finish(self, train_s: float) -> dict:
        """Reload best.pt, evaluate val and test, write metrics.json (metrics only, so that two
        runs with one config and seed write identical files) and run.json (timings, counts)."""
        p = self.progress
        best_path = os.path.join(self.ckpt_dir, "best.pt")
        # best.pt's val metrics, when this process evaluated those very weights (they are what best.pt holds):
        # scoring is deterministic, so evaluating them again would give the same numbers
        known = self.best_val is not None and self.best_val[0] == p.best_step
        if os.path.exists(best_path) and not (known and p.best_step == p.step):  # else the model holds them already
            self.model.load_state_dict(ckpt.load(best_path, self.device)["model"])
        results = {"val": self.best_val[1] if known else self.evaluate("val"), "test": self.evaluate("test")}
        self.logger.eval_metrics("test", results["test"], p.step, note=f"best.pt of step {p.best_step}")
        self.logger.final(results)
        with open(os.path.join(self.run_dir, "metrics.json"), "w") as f:
            json.dump(results, f, indent=2)
        if p.nonfinite_skipped:
            log.warning("%d batch(es) skipped for a non-finite loss (trainer.nonfinite=skip)", p.nonfinite_skipped)
        self.write_run_info(train_s)
        self.logger.close()
        return results

    def write_run_info(self, train_s: float, error: str | None = None) -> None:
        """Write run.json: steps, epochs, best step, timings (``train_s`` seconds of training),
        device, data counts, skipped batches, resumes; for a run stopped by a
        :class:`~mtl_train.errors.TrainingError`, also ``error``, its one-line message."""
        p = self.progress
        run_info = {
            "steps": p.step, "epochs": p.epoch, "best_step": p.best_step, "best": p.best,
            "monitor": self.cfg.trainer.monitor, "train_seconds": round(train_s, 3),
            "train_samples_per_s": round(p.step * self.cfg.trainer.batch_size / max(train_s, 1e-9), 1),
            # the training loop alone: batches read, steps taken; validation and checkpoints excluded
            "train_loop_seconds": round(train_s - self.excluded_seconds, 3), "train_samples": self.samples,
            "train_loop_samples_per_s": round(self.samples / max(train_s - self.excluded_seconds, 1e-9), 1),
            "device": str(self.device), "precision": self.cfg.trainer.precision,
            "sparse_embedding": self.sparse_embedding, "threads": torch.get_num_threads(),
            "data": self.data.info.get("protocol"),
            # per split: rows, null ids, out-of-vocabulary ids, null numerics, null labels (parquet)
            "data_report": self.data.info.get("report"),
            "nonfinite_skipped": p.nonfinite_skipped, "resumed_at": p.resumes,
            "funnel_violations": self.data.info.get("funnel_violations"),
        }
        if self.device.type == "cuda":  # the most the run's tensors held at once (data, model, activations)
            run_info["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20)
        if error is not None:
            run_info["error"] = error
        os.makedirs(self.run_dir, exist_ok=True)
        with open(os.path.join(self.run_dir, "run.json"), "w") as f:
            json.dump(run_info, f, indent=2)

    # ---- checkpoint -------------------------------------------------------------------
    def save(self, name: str) -> None:
        """Write the :class:`~mtl_train.train.state.TrainState` to ``checkpoints/<name>``
        atomically; never a model with non-finite parameters.

        Raises:
            TrainingError: the model's parameters are not finite (the old file is kept)."""
        t0 = time.perf_counter()
        if not ckpt.all_finite(self.model.state_dict()):
            raise TrainingError(f"model parameters became non-finite by step {self.progress.step}; {name} not written, "
                                f"{self._last_good()}")
        self.logger.flush()
        ckpt.save_atomic(self.state.state_dict(), os.path.join(self.ckpt_dir, name))
        if name == "last.pt":
            self.last_saved_step = self.progress.step
        self.excluded_seconds += time.perf_counter() - t0

    def _last_good(self) -> str:
        if self.last_saved_step is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint is {os.path.join(self.ckpt_dir, 'last.pt')} (step {self.last_saved_step})"

    def _check_signal(self, bar) -> None:
        """After a SIGINT/SIGTERM (see :class:`~mtl_train.train.signals.StopSignal`): write last.pt
        and raise :class:`RunInterrupted`."""
        if self.signals.received is None:
            return
        self.logger.close_progress(bar)
        self.save("last.pt")
        self.logger.close()
        raise RunInterrupted(self.signals.received, self.progress.step, os.path.join(self.ckpt_dir, "last.pt"), self.run_dir)

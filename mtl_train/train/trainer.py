"""The training loop: train, evaluate on val, early-stop, checkpoint, test with the best weights.

Read top to bottom: :func:`run` builds everything from the config and calls :class:`Trainer`:
``fit`` -> ``train_epoch`` -> ``train_step``, ``validate`` on schedule, ``finish`` tests. Beside
it: evaluate.py (metrics), optim.py (optimizers, LR schedule), resume.py (resume config),
state.py (what a checkpoint holds), device.py (device, precision), signals.py, ddp.py (a step's
losses and gradients across ranks: DDP, or the balancer's own reduction).

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
  last step;
- diagnostics (TensorBoard ``diag/...`` and run.json ``diagnostics``): the task-gradient
  cosines and norms on the shared parameters every ``trainer.diagnostics_every_steps`` steps
  (train/diagnostics.py; training unchanged), the gates' use at each evaluation
  (models/gates.py, ``trainer.gate_diagnostics``), degenerate scores (flagged in metrics.json,
  and said when best.pt is chosen on such an evaluation).
- on several ranks (torchrun, srun: :mod:`mtl_train.distributed`) every rank runs this loop on
  its slice of each global batch; rank 0 alone writes files, evaluation is sharded and exact,
  and every decision (stop, skip, save, a signal) is taken at the same step on every rank.
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

from mtl_train import distributed, kernels
from mtl_train.balancing.base import build_balancer
from mtl_train.data.datasets import load_dataset
from mtl_train.data.schema import DatasetBundle
from mtl_train.data.stream import train_loader
from mtl_train.errors import ConfigError, DataError, NonFiniteScores, RunInterrupted, TrainingError
from mtl_train.models.builder import build_model
from mtl_train.models.gates import GateRecorder, gate_scalars, gate_statistics, gate_warnings
from mtl_train.models.memory import check_memory
from mtl_train.system import tune_malloc
from mtl_train.train import checkpoint as ckpt
from mtl_train.train import ddp
from mtl_train.train.device import resolve_device, resolve_precision, to_device
from mtl_train.train.diagnostics import GradConflict, shared_task_gram
from mtl_train.train.evaluate import check_gauc_by, check_monitor, evaluate, gauc_column, monitor_value
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
    if distributed.world_size() > 1:  # the log's first line (data preparation may log before training starts)
        ws = distributed.world_size()
        log.info("distributed: world size %d (%s), global batch %d = %d ranks x trainer.batch_size %d", ws,
                 torch.distributed.get_backend(), ws * cfg.trainer.batch_size, ws, cfg.trainer.batch_size)
    # several ranks: rank 0 reads the checkpoint and decides, every rank gets the result
    cfg, state = distributed.on_main(lambda: starting_point(cfg, run_dir, list(overridden)))
    _check_world_size(state)
    torch.manual_seed(cfg.seed)  # the same seed on every rank: identical initial weights and random draws
    np.random.seed(cfg.seed)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    if cfg.trainer.tune_malloc:
        tune_malloc()
    data = distributed.main_first(lambda: load_dataset(cfg.dataset, cfg.seed))  # rank 0 writes any cache first
    _check_labels(data)
    trainer = Trainer(cfg, data, run_dir, resume_state=state)
    try:
        return trainer.fit()
    finally:  # a job that fails still closes its event file (sweeps run many jobs in one process)
        trainer.logger.close(failed=True)


def _check_world_size(state: dict | None) -> None:
    """Raises ConfigError when a checkpoint of N ranks is resumed with another number of ranks."""
    if state is None:
        return
    before, now = int(state.get("world_size", 1)), distributed.world_size()
    if before != now:
        raise ConfigError(f"trainer.resume: the checkpoint was written by {before} rank(s) and this run has {now} "
                          f"(WORLD_SIZE); resume with {before} rank(s): the global batch and every rank's data "
                          f"position depend on it")


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
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.global_batch = tcfg.batch_size * self.world_size  # trainer.batch_size is per rank
        self.device = distributed.local_device(resolve_device(tcfg.device))
        # hand-written kernels or their references, process-wide: the kernels are CPU kernels; on a GPU
        # the references (cuBLAS GEMMs under autograd) run, see mtl_train.kernels
        kernels.set_fused(tcfg.fused_kernels and self.device.type == "cpu")
        sparse_default = sparse_embedding_default(cfg, self.device)
        check_memory(data.schema, cfg, self.device, sparse_default)  # before allocating
        self.model = build_model(data.schema, cfg.model, cfg.graph, sparse_default=sparse_default).to(self.device)
        self.loss_names = self.model.graph.loss_names
        self.balancer = build_balancer(cfg.loss, self.loss_names, self.model).to(self.device)
        self.optimizers = build_optimizer(self.model, tcfg)
        _check_shards(data, self.world_size)
        # on a GPU: splits that fit move to the device, the others are copied ahead (see placement.py)
        data, self.placement = place_data(data, self.device)
        self.data = data
        loader = train_loader(data.train, tcfg.batch_size, seed=cfg.seed, rank=self.rank, world_size=self.world_size)
        self.loader = train_loader_on(data.train, loader, self.device, self.placement["train"])
        steps = tcfg.epochs * len(self.loader)
        self.total_steps = min(steps, tcfg.max_steps) if tcfg.max_steps else steps
        self.schedulers = build_schedulers(self.optimizers, tcfg, self.total_steps)
        self.progress = Progress()
        self.nonfinite = NonFiniteGuard(tcfg.nonfinite, self.loss_names, self.progress, self._last_good,
                                        agree=_first_reason)
        self.agreed_signal: int | None = None  # several ranks: the stop signal every rank acts on
        self.step_rows = 0  # rows of the current step over all ranks (several ranks)
        self.comm_seconds = 0.0  # several ranks: time in the step's collectives (waiting for other ranks included)
        self.state = TrainState(model=self.model, optimizers=Each(self.optimizers), schedulers=Each(self.schedulers),
                                balancer=self.balancer, data=DataPosition(self.loader), rng=RNG(),
                                progress=self.progress, config=cfg, schema=data.schema)
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.last_saved_step: int | None = None
        self.signals = StopSignal()
        self.excluded_seconds = 0.0  # validation and checkpoint time (not in the training rate)
        self.best_val: tuple[int, dict, list | None] | None = None  # (step, val metrics, gates) that wrote best.pt
        self.samples = 0
        self.epoch_batches = len(self.loader)  # batches of the current epoch (set again as each begins)
        self.sign = 1.0 if tcfg.monitor_mode == "max" else -1.0
        self.gauc_index = gauc_column(data.schema, tcfg.gauc_by)
        check_gauc_by(cfg)
        check_monitor(data.schema, tcfg.monitor)
        self.autocast_dtype = resolve_precision(tcfg.precision, self.device)
        self.precision = "fp32" if self.autocast_dtype is None else "bf16"  # trainer.precision=auto resolved
        if self.autocast_dtype is not None and not any(True for _ in self.model.backbone.parameters()):
            log.warning("trainer.precision=%s changes nothing here: model.backbone=%s has no layers of its own, and "
                        "the embedding lookup and the task graph run in float32", tcfg.precision, cfg.model.backbone)
        self.sparse_embedding = any(isinstance(m, torch.nn.Embedding) and m.sparse for m in self.model.modules())
        if resume_state is not None:
            if "ranks" in resume_state:  # several ranks: this rank's own data position and RNG states
                resume_state = {**resume_state, **resume_state["ranks"][self.rank]}
            self.state.load_state_dict(resume_state)
            self.progress.resumes.append({"step": self.progress.step, "epoch": self.progress.epoch})
            self.last_saved_step = self.progress.step
        weighted = [t.name for t in data.schema.tasks if t.weight]
        if weighted and ddp.active():  # the global mean would need the weight sums, not the row counts
            raise ConfigError(f"dataset: task '{weighted[0]}' has a weight column; per-task sample weights are not "
                              "supported under several ranks yet (train it in one process)")
        # under several ranks: DistributedDataParallel, or the model itself for a balancer that reduces its gradients
        self.train_model = ddp.wrap_model(self.model, self.balancer, self.device)
        self.conflict = GradConflict(self.loss_names, tcfg.diagnostics_every_steps)
        self.conflict.load_state_dict(self.progress.diagnostics.get("grad_conflict", {}))
        self.gate_layout = self.model.backbone.gate_layout([t.name for t in data.schema.tasks])
        self.gate_stats: dict[str, list] = {}  # split -> gate_statistics of its latest evaluation
        purge = self.progress.step + 1 if resume_state is not None else None
        self.logger = RunLogger(run_dir, cfg, self.loss_names, progress=tcfg.progress and self.rank == 0,
                                purge_step=purge, write=distributed.is_main())

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
        ranks = (f", world size {self.world_size} ({torch.distributed.get_backend()}), global batch {self.global_batch}"
                 if self.world_size > 1 else "")
        log.info("training %s + %s, loss=%s: %d steps/epoch of %d, device %s, %d threads, precision %s, "
                 "sparse embedding %s%s", self.cfg.model.name or self.cfg.model.backbone, self.cfg.graph.name,
                 self.cfg.loss.name, len(self.loader), tcfg.batch_size, self.device, torch.get_num_threads(),
                 self.precision + (" (trainer.precision=auto)" if tcfg.precision == "auto" else ""),
                 "on" if self.sparse_embedding else "off", ranks)
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
                n = batch["labels"].shape[0] if self.world_size == 1 else self.step_rows  # over all ranks
                self.samples += n
                distributed.set_step(p.step)
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
            out = self.train_model(batch)
        weights, labels = batch.get("weights"), batch["labels"]  # row weights [B, T], where the data have them
        losses, counts = (self.model.graph.losses(out, labels) if weights is None
                          else self.model.graph.losses(out, labels, weights))
        rows = labels.shape[0]
        # under several ranks the global batch's losses and counts, with the stop signal and the
        # row count in the same all-reduce (the identity in one process)
        extra = None if self.world_size == 1 else torch.tensor([float(self.signals.received or 0), float(rows)])
        with self._communicating():
            losses, counts, sums = ddp.global_losses_and_sums(losses, counts, extra)
        self._agree(sums)
        if self.nonfinite.skip(losses, self.model, out, batch):
            return None
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        step = self.progress.step + 1
        # the balancer computes its diagnostics (gradient cosines...) only on steps the logger writes
        self.balancer.log_due = self._point_due(step)
        measure = self.conflict.due(step)
        measured = None
        if measure and not self.balancer.provides_shared_gram:  # before the balancer frees the graph
            measured = shared_task_gram(losses, counts, self.model)
        logs, weights = self.balancer.step(losses, counts, self.model, out)
        if measure:
            measured = self.balancer.shared_gram if self.balancer.provides_shared_gram else measured
            if measured is not None:
                self.logger.scalars(self.conflict.record(*measured), step)
        for o in self.optimizers:
            o.step()
        for sch in self.schedulers:
            sch.step()
        logs = dict(logs)
        logs["lr"] = self.optimizers[0].param_groups[0]["lr"]
        return losses.detach(), weights, logs

    def _agree(self, sums: torch.Tensor | None) -> None:
        """Several ranks: act on this step's sums over the ranks of [stop signal, rows], taken in
        the all-reduce of the losses (:func:`~mtl_train.train.ddp.global_losses_and_sums`), so
        that a SIGINT/SIGTERM caught by any rank stops all of them after this step
        (:attr:`agreed_signal`) and :attr:`step_rows` holds the step's rows over all ranks. The
        losses need no agreement of their own: they are already the global batch's, so a
        non-finite loss of any rank is non-finite on every rank, and every rank skips or stops
        at the same step. One process: nothing (``sums`` is None)."""
        if sums is None:
            return
        self.step_rows = int(sums[-1].item())
        if self.agreed_signal is None and sums[-2] > 0:
            sig = float(self.signals.received or 0)
            with self._communicating():
                self.agreed_signal = int(distributed.all_reduce(torch.tensor([sig]), "max").item())

    @contextlib.contextmanager
    def _communicating(self):
        """Count the block's time in :attr:`comm_seconds` (several ranks only; run.json
        ``communication_seconds``)."""
        if self.world_size == 1:
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.comm_seconds += time.perf_counter() - t0

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
        if self.gate_stats.get("val"):
            self.logger.scalars(gate_scalars(self.gate_stats["val"]), p.step)
            p.diagnostics.setdefault("gates", []).append({"step": p.step, "split": "val", "levels": self.gate_stats["val"]})
        value = monitor_value(metrics, tcfg.monitor)
        improved = value is not None and (p.best is None or self.sign * (value - p.best) > tcfg.min_delta)
        if improved:
            p.best, p.best_step, p.bad_evals = value, p.step, 0
            bad = self._degenerate_monitored(metrics)
            if bad:
                log.warning("step %d: best.pt is taken from an evaluation whose val scores are degenerate (%s); "
                            "the monitor %s does not see it", p.step, ", ".join(bad), tcfg.monitor)
            self.save("best.pt")
            self.best_val = (p.step, copy.deepcopy(metrics), self.gate_stats.get("val"))
        else:
            p.bad_evals += 1
        log.info("step %d val %s = %s (best %s at step %d)", p.step, tcfg.monitor,
                 f"{value:.5f}" if value is not None else None, f"{p.best:.5f}" if p.best is not None else None,
                 p.best_step)
        return tcfg.patience is not None and p.bad_evals >= tcfg.patience

    def evaluate(self, split: str) -> dict:
        """Metrics of the model on ``split`` (see :func:`~mtl_train.train.evaluate.evaluate`);
        with gates (MoE backbones, ``trainer.gate_diagnostics``) their use on the split in
        ``self.gate_stats[split]`` (:func:`~mtl_train.models.gates.gate_statistics`), a warning per
        collapse; degenerate outputs are counted in run.json's ``diagnostics.degenerate``.

        Raises:
            TrainingError: the model scored a row NaN or inf (naming the step, the split, the
                output and the last good checkpoint)."""
        table = getattr(self.data, split)
        rec = GateRecorder() if self.gate_layout and self.cfg.trainer.gate_diagnostics else None
        try:
            metrics = evaluate(self.model, table, self.device, self.cfg.trainer.eval_batch_size, split, self.gauc_index,
                               gates=rec)
        except NonFiniteScores as e:  # a broken model: stopped as a non-finite loss stops it
            raise TrainingError(f"{e} at step {self.progress.step}; stopped, {self._last_good()}") from None
        if rec is not None:
            stats = gate_statistics(self.gate_layout, rec)
            self.gate_stats[split] = stats
            for line in gate_warnings(stats):
                log.warning("%s @ step %d: %s", split, self.progress.step, line)
        for name, m in metrics.items():
            if m.get("degenerate"):
                self.progress.diagnostics.setdefault("degenerate", []).append(
                    {"step": self.progress.step, "split": split, "output": name, "flag": m["degenerate"]})
        return metrics

    def _degenerate_monitored(self, metrics: dict) -> list[str]:
        """``<output>: <flag>`` for the degenerate outputs among those the monitor reads (every
        output but ``eval_only`` ones for ``<metric>/mean``, else the named one)."""
        what = self.cfg.trainer.monitor.partition("/")[2]
        return [f"{name}: {m['degenerate']}" for name, m in metrics.items()
                if m.get("degenerate") and (name == what or (what == "mean" and not m.get("eval_only")))]

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
        if not (known and p.best_step == p.step):  # else the model holds best.pt's weights already
            # several ranks: rank 0 reads best.pt and sends the weights (no filesystem shared with rank 0 needed)
            best = distributed.on_main(lambda: ckpt.load(best_path, "cpu")["model"] if os.path.exists(best_path) else None)
            if best is not None:
                self.model.load_state_dict(best)
        if known:
            self.gate_stats["val"] = self.best_val[2]
        results = {"val": self.best_val[1] if known else self.evaluate("val"), "test": self.evaluate("test")}
        self.final_gates = {split: self.gate_stats[split] for split in results if self.gate_stats.get(split)}
        self.logger.eval_metrics("test", results["test"], p.step, note=f"best.pt of step {p.best_step}")
        self.logger.final(results)
        if distributed.is_main():
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
        if not distributed.is_main():
            return
        p = self.progress
        run_info = {
            "steps": p.step, "epochs": p.epoch, "best_step": p.best_step, "best": p.best,
            "monitor": self.cfg.trainer.monitor, "train_seconds": round(train_s, 3),
            "train_samples_per_s": round(p.step * self.global_batch / max(train_s, 1e-9), 1),
            "world_size": self.world_size, "global_batch": self.global_batch,
            # the training loop alone: batches read, steps taken; validation and checkpoints excluded
            "train_loop_seconds": round(train_s - self.excluded_seconds, 3), "train_samples": self.samples,
            "train_loop_samples_per_s": round(self.samples / max(train_s - self.excluded_seconds, 1e-9), 1),
            "device": str(self.device), "precision": self.precision,
            "sparse_embedding": self.sparse_embedding, "threads": torch.get_num_threads(),
            "data": self.data.info.get("protocol"),
            # per split: rows, null ids, out-of-vocabulary ids, null numerics, null labels (parquet)
            "data_report": self.data.info.get("report"),
            "nonfinite_skipped": p.nonfinite_skipped, "resumed_at": p.resumes,
            "funnel_violations": self.data.info.get("funnel_violations"),
            "diagnostics": self._diagnostics(),
        }
        if self.world_size > 1:  # rank 0's time in the step's agreement all-reduce (DDP's overlaps the backward)
            run_info["communication_seconds"] = round(self.comm_seconds, 3)
        if self.device.type == "cuda":  # the most the run's tensors held at once (data, model, activations)
            run_info["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20)
        if error is not None:
            run_info["error"] = error
        os.makedirs(self.run_dir, exist_ok=True)
        with open(os.path.join(self.run_dir, "run.json"), "w") as f:
            json.dump(run_info, f, indent=2)

    def _diagnostics(self) -> dict:
        """run.json's ``diagnostics``: ``grad_conflict`` (:meth:`GradConflict.summary`, null when
        off), ``gates`` (per evaluation on val: step and :func:`gate_statistics` levels; [] without
        gates), ``gates_final`` ({split: levels} of the final evaluation with best.pt's weights),
        ``degenerate`` ([{step, split, output, flag}] of every degenerate evaluation)."""
        d = self.progress.diagnostics
        return {"grad_conflict": self.conflict.summary() if self.conflict.every else None,
                "gates": d.get("gates", []), "gates_final": getattr(self, "final_gates", {}),
                "degenerate": d.get("degenerate", [])}

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
        self.progress.diagnostics["grad_conflict"] = self.conflict.state_dict()
        state = self.state.state_dict()
        if self.world_size > 1:  # every rank's data position and RNG states, gathered to rank 0
            ranks = distributed.gather_objects({"data": state["data"], "rng": state["rng"]})
            state.update(world_size=self.world_size, ranks=ranks)
        if distributed.is_main():
            ckpt.save_atomic(state, os.path.join(self.ckpt_dir, name))
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
        received = self.signals.received if self.world_size == 1 else self.agreed_signal
        if received is None:
            return
        self.logger.close_progress(bar)
        self.save("last.pt")
        self.logger.close()
        raise RunInterrupted(received, self.progress.step, os.path.join(self.ckpt_dir, "last.pt"), self.run_dir,
                             self.world_size)


def _check_shards(data: DatasetBundle, world_size: int) -> None:
    """Raises DataError when a streamed train split has fewer Parquet row groups than ranks
    (each rank reads whole row groups)."""
    units = getattr(getattr(data.train, "source", None), "units", None)
    if world_size > 1 and data.train.kind == "stream" and units is not None and world_size > len(units):
        raise DataError(f"dataset: the streamed train split has {len(units)} Parquet row group(s), fewer than the "
                        f"{world_size} ranks (WORLD_SIZE={world_size}); each rank reads whole row groups: write smaller "
                        f"row groups, use fewer ranks, or dataset.mode=memory")


def _first_reason(reason: str | None) -> str | None:
    """Several ranks: why the model is broken on any rank (the first rank's reason), or None."""
    if not distributed.is_distributed():
        return reason
    return next((r for r in distributed.all_gather_objects(reason) if r), None)

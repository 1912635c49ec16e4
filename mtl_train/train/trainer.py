"""The training loop: train, evaluate on val, early-stop, checkpoint, test with the best weights.

Read top to bottom: :func:`run` builds everything from the config and calls :class:`Trainer`.

Runs you can trust:

- every piece of state lives in :meth:`Trainer.state` (model, optimizers, LR schedulers,
  balancer, step, epoch, data position, early-stopping counters, every RNG), written
  atomically to ``checkpoints/last.pt`` every ``trainer.checkpoint_every_steps`` steps, at
  each epoch end and at the end, and to ``checkpoints/best.pt`` on each val improvement;
- ``trainer.resume=<run dir or checkpoint>`` restores all of it, so a run killed at any point
  and resumed ends with the same metrics.json as an uninterrupted one (CPU, same seed);
- SIGINT/SIGTERM finish the current step, write last.pt and raise :class:`RunInterrupted`;
- a non-finite loss stops the run naming the step and task (``trainer.nonfinite=stop``) or
  skips the batch, counted in run.json (``skip``); a non-finite model is never saved.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import time

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mtl_train import kernels, registry
from mtl_train.balancing.base import build_balancer
from mtl_train.config import TrainerConfig
from mtl_train.data.datasets import load_dataset
from mtl_train.data.schema import OOV_ID, DatasetBundle, Split
from mtl_train.data.stream import train_loader
from mtl_train.errors import ConfigError, DataError, RunInterrupted, TrainingError
from mtl_train.metrics import binary_metrics, group_auc, regression_metrics
from mtl_train.models.builder import MultiTaskModel, build_model
from mtl_train.system import tune_malloc
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


def gauc_column(schema, name: str | None) -> int | None:
    """Index in ``batch["sparse"]`` of the categorical feature ``name`` (``trainer.gauc_by``).

    Raises:
        ConfigError: ``name`` is not a categorical feature of the dataset."""
    if name is None:
        return None
    names = [f.name for f in schema.sparse]
    if name not in names:
        raise ConfigError(f"trainer.gauc_by: no categorical feature '{name}' in this dataset (have {names})")
    return names.index(name)


@torch.no_grad()
def evaluate(model: MultiTaskModel, table: Split, device: torch.device, batch_size: int, split: str,
             group_index: int | None = None) -> dict:
    """Exact metrics of every evaluated output over the whole split ``table`` (a
    :class:`~mtl_train.data.schema.Split`, in memory or streamed), read by ``batches``.

    ``group_index`` (see :func:`gauc_column`) adds GAUC to binary outputs, grouping rows by
    that categorical column's ids; rows whose id is null or out of vocabulary (ids 0 and 1:
    users unseen in training share id 1) are left out of GAUC only.

    Returns {output name: metrics dict} (see :mod:`mtl_train.metrics`).
    """
    was_training = model.training
    model.eval()
    scores: dict[str, list] = {}
    types: dict[str, str] = {}
    eval_only: set[str] = set()
    for batch in table.batches(batch_size):
        batch = to_device(batch, device)
        out = model(batch)
        for name, eo in model.graph.eval_outputs(out, batch).items():
            m = eo.mask
            group = batch["sparse"][:, group_index][m].cpu() if group_index is not None else None
            scores.setdefault(name, []).append((eo.score[m].float().cpu(), eo.label[m].float().cpu(), group))
            types[name] = eo.type
            if eo.eval_only:
                eval_only.add(name)
    model.train(was_training)
    result, left_out = {}, []
    for name, parts in scores.items():
        score = torch.cat([p[0] for p in parts]).numpy()
        label = torch.cat([p[1] for p in parts]).numpy()
        if types[name] == "regression":
            result[name] = regression_metrics(score, label, name=name, split=split)
        else:
            result[name] = binary_metrics(score, label, name=name, split=split)
            if group_index is not None:
                group = torch.cat([p[2] for p in parts]).numpy()
                known = group > OOV_ID
                result[name].update(group_auc(score[known], label[known], group[known]))
                if not known.all():
                    left_out.append(f"{name} {int((~known).sum())}/{known.size}")
        if name in eval_only:  # scored against an evaluation-only column: never part of the monitor
            result[name]["eval_only"] = True
    if left_out:
        log.info("%s: GAUC leaves out the rows whose group id is null or unseen in training: %s", split,
                 ", ".join(left_out))
    return result


def monitor_value(metrics: dict, monitor: str) -> float | None:
    """Value of ``<metric>/<output>`` (e.g. ``auc/income``) or ``<metric>/mean`` (mean over the
    outputs where the metric is defined, ``eval_only`` outputs left out) in a split's metrics."""
    metric, _, what = monitor.partition("/")
    if what == "mean":
        vals = [m[metric] for m in metrics.values() if m.get(metric) is not None and not m.get("eval_only")]
        return float(np.mean(vals)) if vals else None
    if what not in metrics:
        raise ConfigError(f"trainer.monitor: no evaluated output '{what}' (have {sorted(metrics)})")
    return metrics[what].get(metric)


def lr_factor(step: int, tcfg, total_steps: int) -> float:
    """Multiplier of ``trainer.lr`` for the optimizer step with 0-based index ``step``.

    - warmup (any scheduler): ``(step + 1) / warmup_steps`` for ``step < warmup_steps``
      (linear warmup, Goyal et al. 2017, "Accurate, Large Minibatch SGD");
    - ``none``: 1;
    - ``cosine``: ``r + (1 - r) * (1 + cos(pi * p)) / 2`` with ``r = min_lr_ratio`` and
      ``p = (step - warmup) / (total_steps - warmup)`` clipped to [0, 1] (SGDR, Loshchilov &
      Hutter 2017, one cycle without restarts);
    - ``step``: ``gamma ** ((step - warmup) // step_size)``.
    """
    warm = int(tcfg.warmup_steps)
    if warm and step < warm:
        return (step + 1) / warm
    k = step - warm
    if tcfg.scheduler == "cosine":
        p = min(max(k / max(1, total_steps - warm), 0.0), 1.0)
        r = float(tcfg.min_lr_ratio)
        return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p))
    if tcfg.scheduler == "step":
        return float(tcfg.gamma) ** (k // int(tcfg.step_size))
    return 1.0


PRECISIONS = registry.field_meta(TrainerConfig, "precision")["choices"]  # the values config validation accepts


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """``trainer.precision`` -> the autocast dtype of the training forward (None for fp32).

    bf16 is mixed precision in the sense of Micikevicius et al., "Mixed Precision Training"
    (ICLR 2018) with bfloat16 (Kalamkar et al., "A Study of BFLOAT16 for Deep Learning
    Training", 2019): float32 master weights, optimizer state, towers, losses and balancers;
    the embedding and the backbone's GEMMs in bfloat16 under ``torch.autocast``. bfloat16 keeps
    float32's exponent range, so no loss scaling is needed (fp16 would need it and is not
    offered). Fast where the hardware has bf16 matrix units (Intel AMX / AVX512-BF16 CPUs,
    NVIDIA Ampere and newer); elsewhere it runs, slower than fp32, with a warning.
    Evaluation and prediction always run in float32.

    Raises:
        ConfigError: a value other than fp32 or bf16.
    """
    if name not in PRECISIONS:
        hint = " (fp16 needs loss scaling; use bf16)" if name == "fp16" else ""
        raise ConfigError(f"trainer.precision: '{name}' is not one of {', '.join(PRECISIONS)}{hint}")
    if name == "fp32":
        return None
    if device.type == "cpu":
        native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    else:
        native = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if not native:
        log.warning("trainer.precision=bf16: this %s has no native bfloat16 matrix unit; expect it slower than fp32",
                    device.type.upper())
    return torch.bfloat16


def build_optimizer(model: torch.nn.Module, cfg) -> list[torch.optim.Optimizer]:
    """Adam/AdamW/SGD for dense parameters; a sparse embedding table (``model.sparse_embedding``)
    gets :class:`~mtl_train.train.optim.RowSparseAdam` (lazy Adam over the rows of the batch)
    with the same learning rate."""
    sparse = [p for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse for p in m.parameters()]
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    # the fused Adam kernel updates every tensor in one pass (CPU and CUDA): ~4x faster than
    # the per-tensor loop on the bench MMoE's 1.2 M dense parameters
    fused = all(p.dtype.is_floating_point for p in dense) and len({p.device for p in dense}) <= 1
    if cfg.optimizer == "adam":
        opts = [torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)]
    elif cfg.optimizer == "adamw":
        opts = [torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)]
    elif cfg.optimizer == "sgd":
        opts = [torch.optim.SGD(dense, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)]
    else:
        raise ConfigError(f"trainer.optimizer: unknown optimizer '{cfg.optimizer}' (choose from adam, adamw, sgd)")
    if sparse:
        from mtl_train.train.optim import RowSparseAdam

        if cfg.optimizer != "adam" or cfg.weight_decay:
            log.warning("model.sparse_embedding: the embedding table is trained by a row-sparse Adam (lr %g, no weight "
                        "decay), not by trainer.optimizer=%s with weight_decay=%g", cfg.lr, cfg.optimizer,
                        cfg.weight_decay)
        opts.append(RowSparseAdam(sparse, lr=cfg.lr))
    return opts


def sparse_embedding_default(cfg, device: torch.device) -> bool:
    """Whether ``model.sparse_embedding: null`` means sparse embedding gradients: on CPU with
    plain Adam (no weight decay) and a loss-weighting balancer, where the bench measured it
    faster (scripts/bench.py; the dense Adam update of the whole table dominates a step);
    off on GPU and for gradient-surgery balancers, which need dense per-task gradients."""
    t = cfg.trainer
    return (device.type == "cpu" and t.optimizer == "adam" and not t.weight_decay
            and not registry.get("loss", cfg.loss.name).target.needs_task_gradients)


class Trainer:
    """Owns the loop and every piece of state a checkpoint holds.

    Args:
        cfg: the validated config. data: the dataset bundle. run_dir: where to write.
        resume_state: a checkpoint dict (see :mod:`mtl_train.train.checkpoint`) to continue from.
    """

    def __init__(self, cfg: DictConfig, data: DatasetBundle, run_dir: str, resume_state: dict | None = None):
        self.cfg, self.data, self.run_dir = cfg, data, run_dir
        tcfg = cfg.trainer
        kernels.set_fused(tcfg.fused_kernels)  # hand-written kernels or their references, process-wide
        self.device = resolve_device(tcfg.device)
        self.model = build_model(data.schema, cfg.model, cfg.graph,
                                 sparse_default=sparse_embedding_default(cfg, self.device)).to(self.device)
        self.loss_names = self.model.graph.loss_names
        self.balancer = build_balancer(cfg.loss, self.loss_names, self.model).to(self.device)
        self.optimizers = build_optimizer(self.model, tcfg)
        self.loader = train_loader(data.train, tcfg.batch_size, seed=cfg.seed)
        steps = tcfg.epochs * len(self.loader)
        self.total_steps = min(steps, tcfg.max_steps) if tcfg.max_steps else steps
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, tcfg, self.total_steps))
                           for o in self.optimizers]
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.step = 0
        self.epoch = 0
        self.best: float | None = None
        self.best_step = -1
        self.bad_evals = 0
        self.last_eval_step = -1
        self.done = False
        self.nonfinite_skipped = 0
        self.resumes: list[dict] = []
        self.last_saved_step: int | None = None
        self._data_state: dict | None = None
        self._signal: int | None = None
        self.excluded_seconds = 0.0  # validation and checkpoint time (not in the training rate)
        self.samples = 0
        self.sign = 1.0 if tcfg.monitor_mode == "max" else -1.0
        self.gauc_index = gauc_column(data.schema, tcfg.gauc_by)
        if self.gauc_index is None:
            objective = cfg.get("objective") or {}
            for key, metric in (("trainer.monitor", tcfg.monitor.partition("/")[0]),
                                # objective.tasks null means the monitor, whatever objective.metric says
                                ("objective.metric", objective.get("metric") if objective.get("tasks") else None)):
                if metric == "gauc":
                    raise ConfigError(f"{key}: gauc needs trainer.gauc_by, the categorical feature that groups "
                                      f"rows (e.g. trainer.gauc_by=user_id)")
        self.autocast_dtype = resolve_precision(tcfg.precision, self.device)
        if self.autocast_dtype is not None and not any(True for _ in self.model.backbone.parameters()):
            log.warning("trainer.precision=%s changes nothing here: model.backbone=%s has no layers of its own, and "
                        "the embedding lookup and the task graph run in float32", tcfg.precision, cfg.model.backbone)
        self.sparse_embedding = any(isinstance(m, torch.nn.Embedding) and m.sparse for m in self.model.modules())
        if tcfg.monitor_mode not in ("max", "min"):
            raise ConfigError(f"trainer.monitor_mode: '{tcfg.monitor_mode}' is not one of max, min")
        if resume_state is not None:
            self.load_state(resume_state)
        purge = self.step + 1 if resume_state is not None else None
        self.logger = RunLogger(run_dir, cfg, self.loss_names, progress=tcfg.progress, purge_step=purge)

    # ---- checkpoint -------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to continue the run exactly (see :mod:`mtl_train.train.checkpoint`)."""
        return {
            "format": ckpt.FORMAT_VERSION,
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "balancer": self.balancer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "data": self.loader.state_dict(),
            "best": self.best,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "last_eval_step": self.last_eval_step,
            "done": self.done,
            "nonfinite_skipped": self.nonfinite_skipped,
            "resumes": self.resumes,
            "rng": ckpt.rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "schema": self.data.schema,
        }

    def load_state(self, state: dict) -> None:
        """Restore a checkpoint written by :meth:`state` (RNG states last, so that nothing
        done while rebuilding the model shifts them).

        Raises:
            DataError: the checkpoint's feature schema differs from the data's.
        """
        saved = state.get("schema")
        if saved is not None and not _same_schema(saved, self.data.schema):
            raise DataError("trainer.resume: the data's features or tasks differ from the checkpoint's "
                            "(did the dataset or its files change?)")
        self.model.load_state_dict(state["model"])
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(self.schedulers, state.get("schedulers", [])):
            sch.load_state_dict(s)
        self.balancer.load_state_dict(state["balancer"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.best, self.best_step, self.bad_evals = state["best"], state["best_step"], state["bad_evals"]
        self.last_eval_step = state.get("last_eval_step", -1)
        self.done = bool(state.get("done", False))
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
        self.resumes = list(state.get("resumes", [])) + [{"step": self.step, "epoch": self.epoch}]
        self._data_state = state.get("data")
        self.last_saved_step = self.step
        ckpt.set_rng_state(state["rng"])

    def save(self, name: str) -> None:
        """Write ``checkpoints/<name>`` atomically; never a model with non-finite parameters.

        Raises:
            TrainingError: the model's parameters are not finite (the old file is kept)."""
        t0 = time.perf_counter()
        if not ckpt.all_finite(self.model.state_dict()):
            raise TrainingError(f"model parameters became non-finite by step {self.step}; {name} not written, "
                                f"{self._last_good()}")
        self.logger.flush()
        ckpt.save_atomic(self.state(), os.path.join(self.ckpt_dir, name))
        if name == "last.pt":
            self.last_saved_step = self.step
        self.excluded_seconds += time.perf_counter() - t0

    def _last_good(self) -> str:
        if self.last_saved_step is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint is {os.path.join(self.ckpt_dir, 'last.pt')} (step {self.last_saved_step})"

    # ---- signals ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _signal_handlers(self):
        """SIGINT/SIGTERM set a flag; the loop checks it after each step, writes last.pt and
        raises :class:`RunInterrupted`. A second signal acts at once (default behaviour)."""
        def handler(signum, frame):
            if self._signal is not None:  # second signal: stop now
                signal.signal(signum, signal.SIG_DFL)
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signum)
                return
            self._signal = signum
            log.warning("%s received: finishing step %d, then writing a checkpoint (again to stop now)",
                        signal.Signals(signum).name, self.step + 1)

        previous = {}
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                previous[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _check_signal(self, bar) -> None:
        if self._signal is None:
            return
        self.logger.close_progress(bar)
        self.save("last.pt")
        self.logger.close()
        raise RunInterrupted(self._signal, self.step, os.path.join(self.ckpt_dir, "last.pt"), self.run_dir)

    # ---- loop -------------------------------------------------------------------------
    def autocast(self):
        """The training forward's precision context: ``torch.autocast`` in bfloat16 with
        ``trainer.precision=bf16`` (see :func:`resolve_precision`), else a no-op."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict] | None:
        """One optimizer step; returns (losses [T], logs), or None when the batch was skipped
        for a non-finite loss (``trainer.nonfinite=skip``).

        Raises:
            TrainingError: a non-finite loss with ``trainer.nonfinite=stop``."""
        with self.autocast():
            out = self.model(batch)
        losses, counts = self.model.graph.losses(out, batch["labels"])
        if not bool(torch.isfinite(losses).all()):
            vals = losses.tolist()
            bad = ", ".join(f"'{n}' ({v})" for n, v in zip(self.loss_names, vals) if not math.isfinite(v))
            if self.cfg.trainer.nonfinite == "skip":
                self.nonfinite_skipped += 1
                if self.nonfinite_skipped <= 10 or self.nonfinite_skipped % 100 == 0:
                    log.warning("non-finite loss at step %d in task %s: batch skipped (%d so far%s)", self.step + 1,
                                bad, self.nonfinite_skipped, "; further skips are logged every 100th"
                                if self.nonfinite_skipped == 10 else "")
                return None
            raise TrainingError(f"non-finite loss at step {self.step + 1} (epoch {self.epoch + 1}) in task {bad}; "
                                f"stopped, {self._last_good()}; trainer.nonfinite=skip skips such batches")
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        # the balancer computes its diagnostics (gradient cosines...) only on steps the logger writes
        self.balancer.log_due = (self.step + 1) % max(1, int(self.cfg.trainer.log_every_steps)) == 0
        logs = self.balancer.backward(losses, counts, self.model, out)
        for o in self.optimizers:
            o.step()
        for sch in self.schedulers:
            sch.step()
        logs = dict(logs)
        logs["lr"] = self.optimizers[0].param_groups[0]["lr"]
        return losses.detach(), logs

    def evaluate(self, split: str) -> dict:
        table = getattr(self.data, split)
        return evaluate(self.model, table, self.device, self.cfg.trainer.eval_batch_size, split, self.gauc_index)

    def validate(self) -> bool:
        """Evaluate on val, keep best.pt, return True when early stopping says stop."""
        tcfg = self.cfg.trainer
        t0 = time.perf_counter()
        metrics = self.evaluate("val")
        self.excluded_seconds += time.perf_counter() - t0  # best.pt saves count in save()
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

    def _max_reached(self) -> bool:
        m = self.cfg.trainer.max_steps
        return bool(m) and self.step >= m

    def fit(self) -> dict:
        """Train until ``trainer.epochs``, ``trainer.max_steps`` or early stopping, then
        :meth:`finish`. A resumed trainer continues at its step, epoch and data position."""
        tcfg = self.cfg.trainer
        self.model.train()
        # a resumed run stops where the run would have: epochs, max_steps, early stopping (so a
        # finished run resumed with more trainer.epochs trains on; unchanged, it only re-tests)
        stop = self._max_reached() or (tcfg.patience is not None and self.bad_evals >= tcfg.patience)
        log.info("training %s + %s, loss=%s: %d steps/epoch of %d, device %s, %d threads, precision %s, "
                 "sparse embedding %s", self.cfg.model.name or self.cfg.model.backbone, self.cfg.graph.name,
                 self.cfg.loss.name, len(self.loader), tcfg.batch_size, self.device, torch.get_num_threads(), tcfg.precision,
                 "on" if self.sparse_embedding else "off")
        t_start = time.perf_counter()
        with self._signal_handlers():
            while self.epoch < tcfg.epochs and not stop:
                if self._data_state is not None and int(self._data_state["epoch"]) == self.epoch:
                    self.loader.load_state_dict(self._data_state)
                else:
                    self.loader.set_epoch(self.epoch)
                self._data_state = None
                start = self.loader.state_dict()["batch"]
                bar = self.logger.progress(len(self.loader) - start, f"epoch {self.epoch + 1}/{tcfg.epochs}")
                for batch in self.loader:
                    batch = to_device(batch, self.device)
                    result = self.train_step(batch)
                    if result is not None:
                        losses, logs = result
                        self.step += 1
                        n = batch["labels"].shape[0]
                        self.samples += n
                        self.logger.train_step(self.step, n, losses, self.balancer.weights(), logs, bar)
                        if tcfg.eval_every_steps and self.step % tcfg.eval_every_steps == 0:
                            stop = self.validate()
                        stop = stop or self._max_reached()
                        if (tcfg.checkpoint_every_steps and self.step % tcfg.checkpoint_every_steps == 0
                                and not stop):
                            self.save("last.pt")
                            log.info("checkpoint: last.pt at step %d", self.step)
                    elif bar is not None:
                        bar.update(1)
                    self._check_signal(bar)
                    if stop:
                        break
                self.logger.close_progress(bar)
                if stop and self.loader.state_dict()["batch"] < len(self.loader):
                    # stopped inside the epoch (max_steps, early stopping): the epoch and its data
                    # position stay, so a resume with a larger trainer.max_steps continues right there
                    break
                self.epoch += 1
                if not tcfg.eval_every_steps:
                    stop = self.validate() or stop
                if self.epoch < tcfg.epochs:
                    self.loader.set_epoch(self.epoch)  # the position a checkpoint now records
                if not stop:
                    self.save("last.pt")
                    log.info("checkpoint: last.pt at step %d (end of epoch %d)", self.step, self.epoch)
                self._check_signal(None)
            if self.last_eval_step != self.step:
                self.validate()
            self.done = True
            self.save("last.pt")
        train_s = time.perf_counter() - t_start
        return self.finish(train_s)

    def finish(self, train_s: float) -> dict:
        """Reload best.pt, evaluate val and test, write metrics.json (metrics only, so that two
        runs with one config and seed write identical files) and run.json (timings, counts)."""
        best_path = os.path.join(self.ckpt_dir, "best.pt")
        if os.path.exists(best_path):
            self.model.load_state_dict(ckpt.load(best_path, self.device)["model"])
        results = {"val": self.evaluate("val"), "test": self.evaluate("test")}
        self.logger.eval_metrics("test", results["test"], self.step, note=f"best.pt of step {self.best_step}")
        self.logger.final(results)
        with open(os.path.join(self.run_dir, "metrics.json"), "w") as f:
            json.dump(results, f, indent=2)
        if self.nonfinite_skipped:
            log.warning("%d batch(es) skipped for a non-finite loss (trainer.nonfinite=skip)", self.nonfinite_skipped)
        run_info = {
            "steps": self.step, "epochs": self.epoch, "best_step": self.best_step, "best": self.best,
            "monitor": self.cfg.trainer.monitor, "train_seconds": round(train_s, 3),
            "train_samples_per_s": round(self.step * self.cfg.trainer.batch_size / max(train_s, 1e-9), 1),
            # the training loop alone: batches read, steps taken; validation and checkpoints excluded
            "train_loop_seconds": round(train_s - self.excluded_seconds, 3), "train_samples": self.samples,
            "train_loop_samples_per_s": round(self.samples / max(train_s - self.excluded_seconds, 1e-9), 1),
            "device": str(self.device), "precision": self.cfg.trainer.precision,
            "sparse_embedding": self.sparse_embedding, "threads": torch.get_num_threads(),
            "data": self.data.info.get("protocol"),
            # per split: rows, null ids, out-of-vocabulary ids, null numerics, null labels (parquet)
            "data_report": self.data.info.get("report"),
            "nonfinite_skipped": self.nonfinite_skipped, "resumed_at": self.resumes,
            "funnel_violations": self.data.info.get("funnel_violations"),
        }
        with open(os.path.join(self.run_dir, "run.json"), "w") as f:
            json.dump(run_info, f, indent=2)
        self.logger.close()
        return results


def _same_schema(a, b) -> bool:
    return ([(f.name, f.vocab_size) for f in a.sparse], [f.name for f in a.dense], list(a.tasks),
            list(getattr(a, "sequence", []))) == \
        ([(f.name, f.vocab_size) for f in b.sparse], [f.name for f in b.dense], list(b.tasks),
         list(getattr(b, "sequence", [])))


# keys a resumed run may change (they do not alter the trajectory, or extend it on purpose)
RESUMABLE_KEYS = ("trainer.resume", "trainer.progress", "trainer.device", "trainer.num_threads",
                  "trainer.tune_malloc", "trainer.log_every_steps", "trainer.checkpoint_every_steps",
                  "trainer.epochs", "trainer.max_steps", "trainer.patience", "mode", "checkpoint", "infer")


def resume_config(stored: dict, current: DictConfig, overridden: list[str]) -> DictConfig:
    """The config of a resumed run: the checkpoint's config, with the command-line overrides
    of :data:`RESUMABLE_KEYS` applied. Any other override must agree with the checkpoint.

    Args:
        stored: the checkpoint's ``config``. current: the composed config of this invocation.
        overridden: the keys set on this command line (``trainer.epochs``, ``model``, ...).

    Raises:
        ConfigError: an override that would change the run being resumed.
    """
    from mtl_train.config import validate

    out = OmegaConf.create(stored)
    for key in overridden:
        key = key.lstrip("+~")
        if key.startswith("hydra"):
            continue
        cur = OmegaConf.select(current, key, default=None)
        if any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS):
            OmegaConf.update(out, key, OmegaConf.to_container(cur) if isinstance(cur, DictConfig) else cur,
                             force_add=True)
            continue
        old = OmegaConf.select(out, key, default=None)
        as_plain = lambda v: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v  # noqa: E731
        if as_plain(cur) != as_plain(old):
            raise ConfigError(f"{key}: differs from the run being resumed ({as_plain(old)!r} there, {as_plain(cur)!r} "
                              f"here); a resumed run keeps its config (changeable: {', '.join(RESUMABLE_KEYS)})")
    return validate(out)


def _check_labels(data: DatasetBundle) -> None:
    positives = data.train.positives(data.schema.tasks)
    for task in data.schema.tasks:
        if task.type == "binary" and not positives[task.name]:
            raise DataError(f"dataset: task '{task.name}' (column '{task.label}') "
                            "has no positive label in the training split")


def run(cfg: DictConfig, run_dir: str, overridden: list[str] = ()) -> dict:
    """Load the data, build model and balancer, train, test; return the metrics dict.

    With ``trainer.resume`` the run continues from that checkpoint (or the run directory's
    ``checkpoints/last.pt``) with the checkpoint's config (see :func:`resume_config`).

    Raises:
        ConfigError: ``run_dir`` already holds a checkpoint and no resume was asked for;
            a bad resume target or override.
        DataError: bad data (see the dataset loaders); no positive label in train.
        TrainingError: a non-finite loss (``trainer.nonfinite=stop``).
        RunInterrupted: SIGINT/SIGTERM (after writing last.pt).
    """
    state = None
    if cfg.trainer.resume:
        path = ckpt.find_checkpoint(cfg.trainer.resume, "trainer.resume")
        state = ckpt.load(path)
        cfg = resume_config(state["config"], cfg, list(overridden))
        kind = (state.get("data") or {}).get("kind")
        if kind and cfg.dataset.get("mode") == "auto":
            # the data position depends on how the train split is read: read it as the interrupted
            # run did, whatever dataset.mode=auto would choose with this machine's memory
            cfg.dataset.mode = kind
            log.info("resume: dataset.mode=%s, as the interrupted run read the train split", kind)
        log.info("resuming %s at step %d (epoch %d)", path, state["step"], state["epoch"])
        source = ckpt.run_dir_of(path)
        if source and os.path.realpath(source) != os.path.realpath(run_dir):
            # continuing elsewhere: bring the best weights along, finish() tests with them
            best = os.path.join(source, "checkpoints", "best.pt")
            if os.path.exists(best) and not os.path.exists(os.path.join(run_dir, "checkpoints", "best.pt")):
                os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
                shutil.copy2(best, os.path.join(run_dir, "checkpoints", "best.pt"))
        stale = ckpt.remove_stale_temporaries(os.path.join(run_dir, "checkpoints"))
        if stale:
            log.info("removed %d partial checkpoint file(s) of the interrupted run", len(stale))
    else:
        existing = ckpt.existing_checkpoints(run_dir)
        if existing:
            raise ConfigError(
                f"hydra.run.dir: {run_dir} already holds a checkpoint ({os.path.basename(existing[0])}); continue that "
                f"run with trainer.resume={run_dir}, or choose another directory"
            )
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

"""Run logging: TensorBoard scalars, the progress bar, and the hparams row of the run.

TensorBoard tags: ``train/loss/<task>``, ``train/weight/<task>``, ``train/<balancer key>``,
``<split>/<metric>/<output>`` (e.g. ``val/auc/click``, the curves), ``train/samples_per_s``, and
``hparams/<split>/<metric>/<output>`` (the final metrics of the HPARAMS row, one value at step 0),
and the diagnostics ``diag/...`` (gate use at each evaluation, task-gradient conflict every
``trainer.diagnostics_every_steps`` steps: see mtl_train/train/diagnostics.py).
The HPARAMS row is written with TensorBoard's own hparams plugin protos
(``tensorboard.plugins.hparams.summary_v2``): a SessionStartInfo with the flattened config at
the start, a SessionEndInfo with the status at the end.
"""
from __future__ import annotations

import logging
import os
import time

import torch
from omegaconf import OmegaConf
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import summary_v2 as hparams_summary

from mtl_train.metrics import METRICS
from mtl_train.system import progress_bar

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


def final_metrics(results: dict) -> dict[str, float]:
    """{"val"|"test": {output: metrics}} -> {"hparams/<split>/<metric>/<output>": value} for the
    metrics in :data:`mtl_train.metrics.METRICS` that are defined (an undefined AUC is left out)."""
    out = {}
    for split, per in results.items():
        for name, m in per.items():
            for metric in METRICS:
                if m.get(metric) is not None:
                    out[f"hparams/{split}/{metric}/{name}"] = float(m[metric])
    return out


class _NoEvents:
    """A SummaryWriter that writes nothing (ranks other than 0)."""

    def __init__(self, *args, **kwargs):
        pass

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _get_file_writer(self) -> "_NoEvents":
        return self

    def add_summary(self, *args, **kwargs) -> None:
        pass


class RunLogger:
    """Writes TensorBoard events under ``<run_dir>/tb`` and drives a tqdm progress bar.

    ``<run_dir>/tb`` is one TensorBoard run; in a sweep every job's run sits under the sweep
    directory, so ``tensorboard --logdir multirun/<sweep>`` shows each job as a run and, in the
    HPARAMS tab, as one row (a session of TensorBoard's hparams plugin, named by ``trial_id``,
    default the run directory's name): the flattened config as hyperparameters and the final
    metrics as ``hparams/<split>/<metric>/<output>``.
    """

    def __init__(self, run_dir: str, cfg, loss_names: list[str], progress: bool = True, purge_step: int | None = None,
                 trial_id: str | None = None, write: bool = True):
        """``purge_step``: on resume, the first step the resumed run will write; TensorBoard then
        drops the events at or after it that the interrupted run had written (no duplicates).
        ``trial_id``: the name of the job's HPARAMS session (default: the run directory's name).
        ``write=False`` (ranks other than 0 of a distributed run): no event file at all."""
        from torch.utils.tensorboard import SummaryWriter

        if not write:
            SummaryWriter = _NoEvents  # noqa: N806

        self.trial_id = trial_id or os.path.basename(os.path.normpath(run_dir))
        self._ended = False
        self.cfg = cfg
        self.loss_names = loss_names
        self.every = max(1, int(cfg.trainer.log_every_steps))
        self.writer = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=purge_step)
        self.show_progress = progress
        self._t = time.perf_counter()
        self._samples = 0
        self._loss_sum = torch.zeros(len(loss_names))
        self._loss_n = 0
        self._last = None  # (step, weights, logs, bar) of the last step added
        self._write_session_start()

    def progress(self, total: int, desc: str):
        if not self.show_progress:
            return None
        return progress_bar(total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False, mininterval=0.5)

    def close_progress(self, bar) -> None:
        if bar is not None:
            bar.close()

    def train_step(self, step: int, n: int, losses: torch.Tensor, weights: torch.Tensor, logs: dict, bar,
                   write: bool | None = None) -> None:
        """Add one optimizer step and write a training point when ``write`` (default: every
        ``trainer.log_every_steps`` steps).

        Args:
            step: the step just taken (1-based). n: its rows. losses: float [T], its task losses.
            weights: float [T], the task weights that multiplied those losses (the step's own,
                not the balancer's update for the next step). logs: the balancer's scalars
                (``train/<key>``). bar: the tqdm bar or None.
            write: write the point at this step: the losses averaged over the steps since the
                last point, this step's weights and logs, samples/s; a point not written waits
                for the next one or :meth:`write_pending`.
        """
        self._samples += n
        self._loss_sum += losses.float().cpu()
        self._loss_n += 1
        self._last = (step, weights, logs, bar)
        if bar is not None:
            bar.update(1)
        if write is None:
            write = step % self.every == 0
        if write:
            self._write_point()

    def write_pending(self) -> None:
        """Write the training point of the last step taken, if steps were taken since the last
        point (called at each evaluation: every run, however short, has its training curve at
        its evaluations and at its last step)."""
        if self._loss_n:
            self._write_point()

    def _write_point(self) -> None:
        step, weights, logs, bar = self._last
        self._last = None
        now = time.perf_counter()
        rate = self._samples / max(now - self._t, 1e-9)
        mean = (self._loss_sum / self._loss_n).tolist()
        for name, v, w in zip(self.loss_names, mean, weights.tolist()):
            self.writer.add_scalar(f"train/loss/{name}", v, step)
            self.writer.add_scalar(f"train/weight/{name}", w, step)
        for k, v in logs.items():
            self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.add_scalar("train/samples_per_s", rate, step)
        if bar is not None and not bar.disable:  # a bar closed at its epoch's end shows nothing more
            bar.set_postfix({"samples/s": f"{rate:,.0f}", **{n_: f"{v:.4f}" for n_, v in zip(self.loss_names, mean)}},
                            refresh=False)
        else:  # no progress bar (trainer.progress=false, batch jobs): the same figures as a log line
            log.info("train @ step %d: loss %s (mean of the last %d steps), %.0f samples/s", step,
                     " ".join(f"{n_}={v:.4f}" for n_, v in zip(self.loss_names, mean)), self._loss_n, rate)
        self._t, self._samples, self._loss_n = now, 0, 0
        self._loss_sum.zero_()

    def eval_metrics(self, split: str, metrics: dict, step: int, note: str | None = None) -> None:
        """Write ``<split>/<metric>/<output>`` scalars at ``step`` and log one line; ``note``
        says which weights were scored when they are not the current ones (e.g. best.pt)."""
        for name, m in metrics.items():
            for metric, v in m.items():
                if (metric in ("rows", "positives", "gauc_groups", "gauc_rows") or v is None or isinstance(v, bool)
                        or not isinstance(v, (int, float))):  # flags: eval_only, degenerate
                    continue
                self.writer.add_scalar(f"{split}/{metric}/{name}", v, step)
        text = ", ".join(
            f"{name}: " + " ".join(f"{k}={v:.4f}" for k, v in m.items()
                                   if k in METRICS and v is not None)
            for name, m in metrics.items()
        )
        log.info("%s @ step %d%s: %s", split, step, f" ({note})" if note else "", text)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Write each ``tag: value`` of ``values`` at ``step`` as given (the ``diag/...`` diagnostics)."""
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)

    def flush(self) -> None:
        """Write pending events to disk (before a checkpoint, so a kill loses none of them)."""
        if self.writer is not None:
            self.writer.flush()

    def _write_session_start(self) -> None:
        """The job's row in TensorBoard's HPARAMS tab: its flattened config as hyperparameters,
        written once at the start, so that running and failed jobs show up too."""
        hparams = flatten(OmegaConf.to_container(self.cfg, resolve=True))
        pb = hparams_summary.hparams_pb(hparams, trial_id=self.trial_id, start_time_secs=time.time())
        self.writer._get_file_writer().add_summary(pb)

    def _write_session_end(self, status: int) -> None:
        # summary_v2 has no session-end helper; this is the same Summary its hparams_pb builds
        info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
        pb = summary_pb2.Summary()
        pb.value.add(
            tag=hparams_metadata.SESSION_END_INFO_TAG,
            metadata=hparams_metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_end_info=info)),
            tensor=hparams_metadata.NULL_TENSOR,
        )
        self.writer._get_file_writer().add_summary(pb)

    def final(self, results: dict) -> None:
        """The metrics of the job's HPARAMS row: the final val/test metrics of every output as
        scalars ``hparams/<split>/<metric>/<output>`` (tags no curve uses), then the session end."""
        for tag, value in final_metrics(results).items():
            self.writer.add_scalar(tag, value, 0)
        self._write_session_end(api_pb2.STATUS_SUCCESS)
        self._ended = True

    def close(self, failed: bool = False) -> None:
        """Flush and close the event file (safe to call twice). A run closed before :meth:`final`
        ends its HPARAMS session as STATUS_FAILURE when ``failed`` (a job that raised), else
        STATUS_UNKNOWN (interrupted by a signal; resumable)."""
        if self.writer is None:
            return
        if not self._ended:
            # STATUS_UNKNOWN: closed without final metrics but not failed (an interrupted, resumable run)
            self._write_session_end(api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_UNKNOWN)
            self._ended = True
        self.writer.flush()
        self.writer.close()
        self.writer = None

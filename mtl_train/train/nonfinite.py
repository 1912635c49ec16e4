"""What a non-finite loss does to a run (``trainer.nonfinite``): stop it, or skip the batch
unless the model itself is broken (non-finite parameters or scores), which skipping cannot mend."""
from __future__ import annotations

import logging
import math
from typing import Callable

import torch

from mtl_train.errors import TrainingError
from mtl_train.train import checkpoint as ckpt
from mtl_train.train.state import Progress

log = logging.getLogger(__name__)


def broken(model, out: dict, batch: dict) -> str | None:
    """Why the model itself is broken (non-finite parameters, or non-finite scores on this
    batch's scored rows), or None."""
    if not ckpt.all_finite(model.state_dict()):
        return "the model's parameters are non-finite"
    with torch.no_grad():
        for name, eo in model.graph.eval_outputs(out, batch).items():
            if not bool(torch.isfinite(eo.score[eo.mask]).all()):
                return f"the model's scores of output '{name}' are non-finite"
    return None


class NonFiniteGuard:
    """Checks each step's task losses before the backward pass.

    Args:
        mode: ``trainer.nonfinite``, ``stop`` or ``skip``. loss_names: the T loss terms.
        progress: the run's step, epoch and skip counter. last_good: the sentence naming the
            last good checkpoint, for the error message.
    """

    def __init__(self, mode: str, loss_names: list[str], progress: Progress, last_good: Callable[[], str],
                 agree: Callable[[str | None], str | None] = lambda reason: reason):
        """``agree``: several ranks: the reason (see :func:`broken`) any rank found, so that all
        ranks stop or skip together (one process: the reason itself)."""
        self.mode, self.loss_names, self.progress, self.last_good = mode, loss_names, progress, last_good
        self.agree = agree

    def skip(self, losses: torch.Tensor, model, out: dict, batch: dict) -> bool:
        """True when the batch is to be skipped (a non-finite loss under ``skip``, counted in
        ``progress.nonfinite_skipped``); False when every loss [T] is finite.

        Raises:
            TrainingError: a non-finite loss under ``stop``; under ``skip``, a non-finite loss
                of a broken model (see :func:`broken`)."""
        if bool(torch.isfinite(losses).all()):
            return False
        p = self.progress
        bad = ", ".join(f"'{n}' ({v})" for n, v in zip(self.loss_names, losses.tolist()) if not math.isfinite(v))
        where = f"non-finite loss at step {p.step + 1} (epoch {p.epoch + 1}) in task {bad}; stopped, {self.last_good()}"
        if self.mode != "skip":
            raise TrainingError(f"{where}; trainer.nonfinite=skip skips such batches")
        reason = self.agree(broken(model, out, batch))
        if reason:
            raise TrainingError(f"{where}; {reason}: trainer.nonfinite=skip skips bad batches, not a broken model")
        p.nonfinite_skipped += 1
        if p.nonfinite_skipped <= 10 or p.nonfinite_skipped % 100 == 0:
            log.warning("non-finite loss at step %d in task %s: batch skipped (%d so far%s)", p.step + 1, bad,
                        p.nonfinite_skipped, "; further skips are logged every 100th" if p.nonfinite_skipped == 10 else "")
        return True

"""Shared pieces of the graphs that run over the tasks in funnel order (GMSL, AITM)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mtl_train.models.graphs.base import TaskGraph, masked_task_losses


def order_penalty(prob: torch.Tensor) -> torch.Tensor:
    """[B, T] probabilities in funnel order -> [T]: for task k >= 1 the mean over rows of
    max(p_k - p_{k-1}, 0) (a later step predicted more likely than the one before it); 0 for
    task 0. This is AITM's behavioural expectation calibrator (Xi et al., KDD 2021) and GMSL's
    ordering regulariser."""
    pen = F.relu(prob[:, 1:] - prob[:, :-1]).mean(0)
    return torch.cat([pen.new_zeros(1), pen])


class SequentialGraph(TaskGraph):
    """Base of GMSL and AITM: task losses plus ``weight * order_penalty`` added to the loss term
    of the later task of each consecutive pair (so with ``loss=equal`` the total is
    sum_k loss_k + weight * sum_k penalty_k, as in the papers)."""

    penalty_weight: float = 0.0

    def check_penalty_tasks(self, key: str) -> None:
        if self.penalty_weight > 0:
            self.require_binary(range(len(self.schema.tasks)), f"{key} > 0 (p_k <= p_(k-1) between consecutive tasks)")

    def task_losses(self, out: dict[str, torch.Tensor], labels: torch.Tensor,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = out["logits"]
        losses, counts = masked_task_losses(logits, labels, self.label_mask(labels), self.is_regression, weights)
        if self.penalty_weight > 0 and logits.shape[1] > 1:
            losses = losses + self.penalty_weight * order_penalty(torch.sigmoid(logits))
        return losses, counts

    def eval_outputs(self, out, batch):
        logits = out["logits"]
        return self.standard_eval(torch.where(self.is_regression, logits, torch.sigmoid(logits)), batch["labels"], batch)

"""Equal weighting: the plain sum of the task losses."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mtl_train.balancing.base import Balancer
from mtl_train.registry import register


@dataclass
class EqualLoss:
    name: str = "equal"


@register("loss", "equal", EqualLoss)
class Equal(Balancer):
    """L = sum_i L_i over the tasks with at least one valid row in the batch (weights all 1).

    Under several ranks: the model trains through DistributedDataParallel (one all-reduce of
    every gradient, in buckets during the backward pass) and the T losses and T valid-row
    counts are all-reduced once per step (:func:`mtl_train.train.ddp.global_losses`);
    nothing else.
    """

    def backward(self, losses: torch.Tensor, counts: torch.Tensor, model, out: dict) -> dict[str, float]:
        valid = counts > 0
        total = torch.where(valid, losses, torch.zeros_like(losses)).sum()  # no host sync
        total.backward()
        return {}

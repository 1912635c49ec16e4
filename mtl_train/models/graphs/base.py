"""The task-graph interface: per-task representations -> per-task logits, losses and scores."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtl_train.data.schema import FeatureSchema


@dataclass
class EvalOutput:
    """One evaluated output: scores (probabilities, or values for regression), labels and the
    rows on which the pair is scored.

    Attributes:
        score: float [B]; label: float [B]; mask: bool [B]; type: ``binary`` or ``regression``.
    """

    score: torch.Tensor
    label: torch.Tensor
    mask: torch.Tensor
    type: str = "binary"


def masked_task_losses(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                       is_regression: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task mean loss over the valid rows of each task.

    Binary tasks use binary cross-entropy on logits (log-space, stable at any logit);
    regression tasks use squared error. Rows where ``mask`` is False contribute nothing.

    Args:
        logits: [B, T] raw outputs; labels: [B, T] (NaN allowed where masked);
        mask: bool [B, T]; is_regression: bool [T] or None (all binary).

    Returns:
        (losses [T], counts [T]) where counts is the number of valid rows per task; a task
        with no valid row gets loss 0 (still attached to the graph) and count 0.
    """
    y = torch.where(mask, labels, torch.zeros_like(labels))
    per_row = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    if is_regression is not None and bool(is_regression.any()):
        per_row = torch.where(is_regression, (logits - y) ** 2, per_row)
    m = mask.to(per_row.dtype)
    counts = m.sum(0)
    return (per_row * m).sum(0) / counts.clamp_min(1), counts


class TaskGraph(nn.Module):
    """Base class: owns the towers and any cross-task structure.

    Subclasses implement ``forward(reps) -> {"logits": [B, T], ...}``, ``losses`` and
    ``eval_outputs``. ``loss_names`` names the loss terms the balancer weighs (one per task
    for most graphs).
    """

    def __init__(self, schema: FeatureSchema):
        super().__init__()
        self.schema = schema
        self.task_names = schema.task_names
        self.register_buffer(
            "is_regression", torch.tensor([t.type == "regression" for t in schema.tasks]), persistent=False
        )

    @property
    def loss_names(self) -> list[str]:
        return list(self.task_names)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Graph parameters shared by several tasks' losses (none for independent towers)."""
        return []

    def label_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """bool [B, T]: the label is present."""
        return ~torch.isnan(labels)

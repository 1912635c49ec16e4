"""The backbone interface: embedded input -> one representation per task."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from mtl_train.registry import param


@dataclass
class ModelConfig:
    """The keys every ``model`` option has. The model builder reads the first four itself
    (:data:`MODEL_KEYS`) and passes every other field of the option's config to the backbone's
    constructor as a keyword argument."""

    name: str = param("", "the option's name (a preset's own name, e.g. omoe or cgc)")
    backbone: str = param("", "the registered backbone this option builds")
    embedding_dim: int = param(8, "width of each feature's embedding", positive=True)
    sparse_embedding: Optional[bool] = param(None, "null: on where it is faster (CPU, loss-weighting balancers)")
    activation: str = param("relu", "activation of every hidden layer")
    dropout: float = param(0.0, "dropout after every hidden layer", non_negative=True)


# the fields of ModelConfig that the builder reads itself (not backbone constructor arguments)
MODEL_KEYS = ("name", "backbone", "embedding_dim", "sparse_embedding")


@dataclass
class BackboneOutput:
    """What a backbone returns.

    Attributes:
        tasks: one representation per task, [B, out_dims[k]] each.
        shared: the representation every task's gradient flows through (the input of the
            task-specific part), or None where nothing is shared. Balancers that work on
            the shared representation (GradNorm's representation mode, MGDA-UB) take
            gradients with respect to it.
    """

    tasks: list[torch.Tensor]
    shared: torch.Tensor | None


class Backbone(nn.Module):
    """Base class of every backbone.

    Attributes:
        out_dims: width of each task's representation.
        separate_inputs: True when each task has its own input embedding (no sharing at all).
        shared_output: whether ``forward`` returns a shared representation (``BackboneOutput.shared``
            not None; what ``loss.target=shared_representation`` and MGDA-UB need).
    """

    separate_inputs = False
    shared_output = True
    out_dims: list[int]
    # a mtl_train.models.gates.GateRecorder while gate use is recorded (evaluation), else None:
    # the forward hands it each gate's probabilities (see gate_layout)
    gate_recorder = None

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> BackboneOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def gate_layout(self, task_names: list[str] | None = None) -> list:
        """The gates of the backbone, level by level (a list of
        :class:`~mtl_train.models.gates.GateLevel`; gates named after ``task_names``, default
        ``task0``, ``task1``, ...): [] for a backbone without gates. A backbone that has gates hands
        their probabilities to ``self.gate_recorder.add(level, gate, probs)`` in its forward when
        ``gate_recorder`` is not None, in this order."""
        return []

    def last_shared_layer(self) -> list[nn.Parameter]:
        """The weight(s) W of the last layer shared by all tasks (GradNorm's W); [] if none."""
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters that receive gradient from more than one task."""
        return []

    def task_parameters(self, k: int) -> list[nn.Parameter]:
        """Backbone parameters that feed task k's representation and no other's: they become
        shared when the task graph lets several task losses read that representation (see
        :meth:`~mtl_train.models.builder.MultiTaskModel.shared_parameters`)."""
        return []

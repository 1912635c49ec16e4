"""GMSL: the Lazada sequential multi-step design - per-task networks whose outputs run through a
GRU in funnel order, one step per task (the project's seed brief; the same GRU-over-tasks idea
with a descending-probability regulariser is SEQ+MD, Wang et al., arXiv:2408.13357, 2024)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn

from mtl_train.data.schema import FeatureSchema
from mtl_train.models.graphs.sequential import SequentialGraph
from mtl_train.models.layers import MLP, check_dims
from mtl_train.registry import param, register


@dataclass
class GMSLGraph:
    name: str = "gmsl"
    tower_hidden: List[int] = param(doc="hidden layer sizes of each task's network", factory=lambda: [64, 32])
    gru_hidden: int = param(32, "hidden size of the GRU over the tasks", positive=True)
    activation: str = param("relu", "activation of every hidden layer")
    dropout: float = param(0.0, "dropout after every hidden layer", non_negative=True)
    order_weight: float = param(0.0, "> 0: add order_weight * mean(max(p_k - p_(k-1), 0)) to task k's loss",
                                non_negative=True)


@register("graph", "gmsl", GMSLGraph)
class GMSL(SequentialGraph):
    """Per-task networks on the shared representation, then a GRU over the tasks.

    Task k's network x_k = MLP_k(rep_k) (``tower_hidden``); the sequence x_1 .. x_T, in the
    declared (funnel) order of the dataset's tasks, runs through a one-layer GRU of width
    ``gru_hidden``; step k's output o_k gives task k's logit through a linear layer, so each
    task sees every earlier step. The optional regulariser (``order_weight`` > 0, default off)
    adds order_weight * mean(max(p_k - p_{k-1}, 0)) to task k's loss: a later step should not
    be more likely than an earlier one. Choices: the GRU starts from a zero state; the task
    networks' sizes are ours (no published sizes).

    Shapes: T inputs [B, H_k] -> {"logits": [B, T]}.

    Raises:
        ConfigError: ``order_weight`` > 0 with a regression task (it needs probabilities).
    """

    def __init__(self, schema: FeatureSchema, in_dims: list[int], tower_hidden, gru_hidden: int = 32,
                 activation: str = "relu", dropout: float = 0.0, order_weight: float = 0.0):
        super().__init__(schema)
        hidden = check_dims("graph.tower_hidden", tower_hidden)
        check_dims("graph.gru_hidden", [gru_hidden])
        self.penalty_weight = float(order_weight)
        self.check_penalty_tasks("graph.order_weight")
        self.towers = nn.ModuleList(MLP(d, hidden, activation, dropout) for d in in_dims)
        widths = {t.out_dim for t in self.towers}
        # task networks of different widths (a backbone with unequal outputs and no tower
        # layers) are brought to one width by a linear map
        self.width = max(widths)
        self.align = nn.ModuleList(
            nn.Identity() if t.out_dim == self.width else nn.Linear(t.out_dim, self.width) for t in self.towers
        )
        self.gru = nn.GRU(self.width, gru_hidden, batch_first=True)
        self.outputs = nn.ModuleList(nn.Linear(gru_hidden, 1) for _ in in_dims)

    def forward(self, reps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        seq = torch.stack([a(t(r)) for a, t, r in zip(self.align, self.towers, reps)], 1)  # [B, T, H]
        steps, _ = self.gru(seq)  # [B, T, G]
        return {"logits": torch.cat([o(steps[:, k]) for k, o in enumerate(self.outputs)], 1)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The GRU and every task network but the last (later steps read them); with the
        regulariser on (``order_weight`` > 0: task k's loss holds p_(k-1)) also the output
        layers of all tasks but the last."""
        T = len(self.towers)
        early = [p for k in range(T - 1) for m in (self.towers[k], self.align[k]) for p in m.parameters()]
        if self.penalty_weight > 0:
            early += [p for k in range(T - 1) for p in self.outputs[k].parameters()]
        return list(self.gru.parameters()) + early

    def last_shared_layer(self) -> list[nn.Parameter]:
        """The GRU's input weights (every step's output goes through them). Not its recurrent
        weights: the GRU starts from a zero state, so task 1's gradient on them is 0 by
        construction, which would bias GradNorm's norms."""
        return [self.gru.weight_ih_l0] if len(self.towers) > 1 else []

    def shared_inputs(self) -> list[int]:
        """All tasks but the last (their steps feed the GRU's later steps)."""
        return list(range(len(self.towers) - 1))

"""ESMM: the Entire Space Multi-task Model (Ma, Zhao, Huang, Wang, Hu, Zhu and Gai, "Entire Space
Multi-Task Model: An Effective Approach for Estimating Post-Click Conversion Rate", SIGIR 2018)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtl_train.data.schema import FeatureSchema
from mtl_train.errors import ConfigError
from mtl_train.models.graphs.base import EvalOutput, TaskGraph, masked_mean
from mtl_train.models.graphs.independent import make_tower
from mtl_train.models.layers import check_dims
from mtl_train.registry import param, register


def chain_log_probs(logits: torch.Tensor, parent_index: list[int | None],
                    order: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-space probabilities along a funnel (a forest of tasks given by ``parent_index``).

    Task k's head outputs the conditional logit a_k of P(y_k | all ancestors positive, x);
    its entire-space probability is the product along its chain,
    P_k = sigmoid(a_k) * P_parent. Both logs are computed without forming P_k:

    - log P_k = logsigmoid(a_k) + log P_parent;
    - log(1 - P_k) = logaddexp(log(1 - P_parent), log P_parent + logsigmoid(-a_k)), from
      1 - P_k = (1 - P_parent) + P_parent * (1 - sigmoid(a_k)); for a root,
      log(1 - P_k) = logsigmoid(-a_k).

    Every term is a logsigmoid or a logaddexp of finite numbers, so any finite logits (e.g.
    +-50, where 1 - sigmoid(50)^2 underflows in float32) give finite values and exact gradients.

    Args:
        logits: [B, T]; parent_index: per task its parent's index or None;
        order: task indices with every parent before its children.

    Returns:
        (log_p [B, T], log_not_p [B, T]).
    """
    ls_pos, ls_neg = F.logsigmoid(logits), F.logsigmoid(-logits)
    log_p: list[torch.Tensor | None] = [None] * logits.shape[1]
    log_not: list[torch.Tensor | None] = [None] * logits.shape[1]
    for k in order:
        p = parent_index[k]
        if p is None:
            log_p[k], log_not[k] = ls_pos[:, k], ls_neg[:, k]
        else:
            log_p[k] = log_p[p] + ls_pos[:, k]
            log_not[k] = torch.logaddexp(log_not[p], log_p[p] + ls_neg[:, k])
    return torch.stack(log_p, 1), torch.stack(log_not, 1)


@dataclass
class ESMMGraph:
    name: str = "esmm"
    tower_hidden: List[int] = param(doc="hidden layer sizes of each task's tower (the paper: 200, 80)",
                                    factory=lambda: [200, 80])
    activation: str = param("relu", "activation of every hidden layer")
    dropout: float = param(0.0, "dropout after every hidden layer", non_negative=True)


@register("graph", "esmm", ESMMGraph)
class ESMM(TaskGraph):
    """ESMM on any backbone: one tower per task; a task with a parent predicts the conditional
    probability (pCVR = P(purchase | click, x)), and its entire-space probability is the
    product along the funnel, pCTCVR = pCTR * pCVR. Chains longer than two steps
    (click -> cart -> purchase) multiply along the chain.

    Loss (over all impressions, as in the paper): for a root task, BCE(pCTR, click); for a
    task with parents, BCE(P_entire, label AND every ancestor's label) - the CTCVR loss. The
    conditional head gets its gradient only through the product. Both are computed in log
    space (:func:`chain_log_probs`), so saturated logits give neither log(0) nor NaN. A row
    whose chain (the task and its ancestors) has a 0 label is a negative of the child's loss even
    where another label of the chain is missing (click 0, purchase null); a row with no 0 and a
    missing label is left out of it (see :meth:`TaskGraph.entire_labels`).

    Evaluated outputs (names derived from the task names, see
    :mod:`mtl_train.models.graphs.base`): ``click`` = pCTR AUC on all impressions,
    ``purchase`` = pCTCVR AUC on all impressions (CTCVR), ``purchase_given_click`` = pCVR AUC on
    clicked impressions only (CVR, the paper's protocol), and on the synthetic set
    ``purchase_given_click_entire`` = pCVR AUC against ``purchase_if_click`` on all impressions.

    A regression task that has no parent and is no task's parent gets its own tower with MSE
    (it is outside the funnel); a regression task inside a funnel is a ConfigError naming it.
    The tower sizes are the graph's ``tower_hidden`` (the paper: 200-80 after the 360-wide
    input, see conf/graph/esmm.yaml).

    Shapes: T inputs [B, H_k] -> {"logits": [B, T] (conditional logits), "log_prob": [B, T],
    "log_not_prob": [B, T]}.

    Raises:
        ConfigError: no task has a parent, or a regression task is in a funnel.
    """

    def __init__(self, schema: FeatureSchema, in_dims: list[int], tower_hidden, activation: str = "relu",
                 dropout: float = 0.0):
        super().__init__(schema)
        hidden = check_dims("graph.tower_hidden", tower_hidden)
        if all(p is None for p in self.parent_index):
            raise ConfigError("graph=esmm: no task of this dataset has a parent (declare the funnel, e.g. purchase: click)")
        in_funnel = {k for k, p in enumerate(self.parent_index) if p is not None} | {
            p for p in self.parent_index if p is not None
        }
        self.require_binary(sorted(in_funnel), "graph=esmm (the probability product along the funnel)")
        self.towers = nn.ModuleList(make_tower(d, hidden, activation, dropout) for d in in_dims)
        self.order = sorted(range(len(schema.tasks)), key=lambda k: len(self.ancestors[k]))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The tower of every task that is some task's ancestor: pCTR's tower gets the click
        loss and, through pCTCVR = pCTR * pCVR, the CTCVR loss."""
        return [q for k in self.shared_inputs() for q in self.towers[k].parameters()]

    def shared_inputs(self) -> list[int]:
        return sorted({a for chain in self.ancestors for a in chain})

    def last_shared_layer(self) -> list[nn.Parameter]:
        """The output layer of the root task's tower (pCTR's) when every task descends from it."""
        j = self.common_root([set(a) for a in self.ancestors])
        return [] if j is None else [self.towers[j][-1].weight]

    def forward(self, reps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = torch.cat([t(r) for t, r in zip(self.towers, reps)], 1)
        log_p, log_not = chain_log_probs(logits, self.parent_index, self.order)
        return {"logits": logits, "log_prob": log_p, "log_not_prob": log_not}

    def task_losses(self, out: dict[str, torch.Tensor], labels: torch.Tensor,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        y_all = self.entire_labels(labels)
        mask = ~torch.isnan(y_all)
        y = torch.where(mask, y_all, torch.zeros_like(y_all))
        nll = -(y * out["log_prob"] + (1 - y) * out["log_not_prob"])
        per_row = torch.where(self.is_regression, (out["logits"] - y) ** 2, nll)
        terms = [masked_mean(per_row[:, k], mask[:, k], None if weights is None else weights[:, k])
                 for k in range(labels.shape[1])]
        return torch.stack([t[0] for t in terms]), torch.stack([t[1] for t in terms])

    def eval_outputs(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, EvalOutput]:
        logits = out["logits"]
        entire = torch.where(self.is_regression, logits, torch.exp(out["log_prob"]))
        conditional = torch.sigmoid(logits)
        labels = batch["labels"]
        return self.standard_eval(entire, labels, batch, conditional=conditional, entire_labels=self.entire_labels(labels))

"""Static weighting: fixed per-task weights from the config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from mtl_train.balancing.base import Balancer
from mtl_train.errors import ConfigError
from mtl_train.registry import param, register


@dataclass
class StaticLoss:
    name: str = "static"
    weights: Optional[Dict[str, float]] = param(None, "{loss name: weight}; names not listed get default_weight")
    default_weight: float = param(1.0, "weight of the loss terms not named in weights", non_negative=True)


@register("loss", "static", StaticLoss)
class Static(Balancer):
    """L = sum_i w_i L_i over the tasks with at least one valid row, w fixed by the config.

    Config: ``loss.weights`` maps a loss name to its weight (e.g.
    ``'loss.weights={click: 1.0, purchase: 5.0}'``); loss terms not named get
    ``loss.default_weight``. Weights must be finite and non-negative.

    Under several ranks: the model trains through DistributedDataParallel (one all-reduce of
    every gradient, in buckets during the backward pass) and the T losses and T valid-row
    counts are all-reduced once per step (:func:`mtl_train.train.ddp.global_losses`);
    nothing else.

    Raises:
        ConfigError: a name in ``loss.weights`` that is not a loss term of the model, or a
            negative / non-finite weight (naming the key).
    """

    def __init__(self, loss_names, cfg, model=None):
        super().__init__(loss_names, cfg, model)
        given = dict(cfg.weights or {})
        unknown = [k for k in given if k not in self.loss_names]
        if unknown:
            raise ConfigError(f"loss.weights.{unknown[0]}: not a loss term of this model (have {self.loss_names})")
        default = float(cfg.default_weight)
        w = [float(given.get(n, default)) for n in self.loss_names]
        for n, v in zip(self.loss_names, w):
            if not (v >= 0 and v < float("inf")):
                key = f"loss.weights.{n}" if n in given else "loss.default_weight"
                raise ConfigError(f"{key}: must be finite and non-negative, got {v}")
        self.w = torch.tensor(w)

    def to(self, device):
        self.w = self.w.to(device)
        return self

    def weights(self) -> torch.Tensor:
        return self.w.detach().clone()  # on the balancer's device: no host sync per step

    def backward(self, losses, counts, model, out):
        valid = counts > 0
        w = self.w.to(losses.device, losses.dtype)
        total = torch.where(valid, w * losses, torch.zeros_like(losses)).sum()
        total.backward()
        return {}

    def state_dict(self) -> dict:
        return {"w": self.w.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.w = state["w"].to(self.w.device)

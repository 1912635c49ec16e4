"""The balancer interface: every loss-weighting and gradient-surgery method implements it.

A balancer receives the per-task losses of one step and leaves the gradients of the model's
parameters in ``.grad`` (the trainer then calls the model optimizer). It owns every decision
about task weights and gradient surgery, and its state is part of the checkpoint.
"""
from __future__ import annotations

import importlib

import torch

from mtl_train.errors import ConfigError

BALANCERS = {
    "equal": "mtl_train.balancing.equal:Equal",
    "gradnorm": "mtl_train.balancing.gradnorm:GradNorm",
}


class Balancer:
    """Base class.

    Args:
        loss_names: names of the T loss terms, in order.
        cfg: the ``loss`` config group.

    Subclasses implement :meth:`backward` and keep their state in :meth:`state_dict`.
    """

    def __init__(self, loss_names: list[str], cfg, model=None):
        self.loss_names = list(loss_names)
        self.num_tasks = len(loss_names)
        self.cfg = cfg

    def to(self, device: torch.device) -> "Balancer":
        return self

    def weights(self) -> torch.Tensor:
        """float [T]: the current weight of each loss term (1 where the method has none)."""
        return torch.ones(self.num_tasks)

    def backward(self, losses: torch.Tensor, counts: torch.Tensor, model, out: dict) -> dict[str, float]:
        """Compute gradients of the model for one step.

        Args:
            losses: [T] per-task mean losses, attached to the graph.
            counts: [T] valid rows per task in this batch; a task with 0 is left out of the step.
            model: the :class:`~mtl_train.models.builder.MultiTaskModel`.
            out: the model's forward output (``out["shared"]`` is the shared representation).

        Returns:
            scalars to log (for example ``weight/<task>``).
        """
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_balancer(cfg, loss_names: list[str], model) -> Balancer:
    """The balancer named by ``cfg.name``.

    Raises:
        ConfigError: unknown method, or a method the model cannot support.
    """
    if cfg.name not in BALANCERS:
        raise ConfigError(f"loss.name: unknown balancing method '{cfg.name}' (choose from {sorted(BALANCERS)})")
    module, name = BALANCERS[cfg.name].split(":")
    return getattr(importlib.import_module(module), name)(loss_names, cfg, model)

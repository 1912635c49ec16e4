"""PCGrad (Yu, Kumar, Gupta, Levine, Hausman and Finn, "Gradient Surgery for Multi-Task
Learning", NeurIPS 2020)."""
from __future__ import annotations

from dataclasses import dataclass

from mtl_train.balancing.gradients import pcgrad_coefficients
from mtl_train.balancing.surgery import SharedGradientSurgery, make_generator
from mtl_train.registry import param, register


@dataclass
class PCGradLoss:
    name: str = "pcgrad"
    reduction: str = param("sum", "sum (the paper) or mean of the projected task gradients", choices=("sum", "mean"))
    seed: int = param(0, "seed of the random task order (its state is checkpointed)")


@register("loss", "pcgrad", PCGradLoss)
class PCGrad(SharedGradientSurgery):
    """Project each task's gradient on the normal plane of every task gradient it conflicts with.

    On the shared parameters, for each task i (Algorithm 1 of the paper): g_i^PC = g_i, then
    for each other task j in a random order, if <g_i^PC, g_j> < 0,
    g_i^PC -= <g_i^PC, g_j> / ||g_j||^2 g_j. The shared update is sum_i g_i^PC.
    Task-specific parameters keep their own task's gradient (the paper's recipe: surgery on
    the shared parameters only).

    Choices the paper leaves open, and the ones made here:

    - projections are made against the original g_j (as in Algorithm 1), not the projected ones;
    - the random order is drawn per task i and per step from a generator seeded with
      ``loss.seed``, whose state is checkpointed (a resumed run draws the same orders);
    - the projected gradients are summed (``loss.reduction: sum``, the paper's sum, which
      gives ``loss=equal``'s gradient when no pair conflicts), or averaged (``mean``);
    - the gradients are those of all shared parameters flattened into one vector (the
      embedding table included), not layer by layer;
    - tasks with no valid rows in the batch are left out of the projection.

    Under several ranks: as :class:`~mtl_train.balancing.surgery.SharedGradientSurgery` (one
    all-reduce of the T per-task gradients on the shared parameters, T x |shared params|
    numbers, one of the task-specific parameters' gradients, and the T losses and counts);
    the order generator, seeded alike on every rank and fed the same Gram matrix, draws the
    same orders everywhere.

    Raises:
        ConfigError: a model without shared parameters.
    """

    def __init__(self, loss_names, cfg, model=None):
        super().__init__(loss_names, cfg, model)
        self.reduction = cfg.reduction
        self.generator = make_generator(cfg.seed)

    def coefficients(self, K, idx, losses, grads, num_params, shared):
        C = pcgrad_coefficients(K, self.generator)
        a = C.sum(0)
        if self.reduction == "mean":
            a = a / len(idx)
        return a.tolist(), [1.0] * len(idx), {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])

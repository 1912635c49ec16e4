"""CAGrad (Liu, Liu, Jin, Stone and Liu, "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021)."""
from __future__ import annotations

from dataclasses import dataclass

from mtl_train.balancing.gradients import cagrad_coefficients
from mtl_train.balancing.surgery import SharedGradientSurgery
from mtl_train.errors import ConfigError
from mtl_train.registry import param, register


@dataclass
class CAGradLoss:
    name: str = "cagrad"
    c: float = param(0.4, "radius of the ball around the mean gradient, relative to its norm", non_negative=True)
    rescale: int = param(1, "1: divide by 1 + c^2 (authors' default), 2: by 1 + c, 0: none")


@register("loss", "cagrad", CAGradLoss)
class CAGrad(SharedGradientSurgery):
    """Update the shared parameters along d, the direction within a ball of radius c ||g0||
    around the mean gradient g0 that maximises the worst task's improvement.

    d = g0 + c ||g0|| / ||g_w|| g_w, with g_w = sum_j w_j g_j and w the solution on the
    simplex of min_w <g_w, g0> + c ||g0|| ||g_w|| (see
    :func:`~mtl_train.balancing.gradients.cagrad_coefficients`), then rescaled.
    With c = 0 it is the mean gradient.

    Choices the paper leaves open, and the ones made here:

    - c = ``loss.c`` (0.4, the paper's choice for its multi-task supervised benchmarks);
    - g0 is the mean (not the sum) of the task gradients, as in the paper, so the shared
      update is on the scale of one task's gradient; task-specific parameters keep their own
      task's gradient (surgery on the shared parameters only);
    - ``loss.rescale``: 1 divides d by 1 + c^2 (the authors' code default), 2 by 1 + c,
      0 leaves it;
    - the inner problem is solved by projected gradient descent on the simplex (the authors
      use SciPy's SLSQP); it is convex, so both reach the same point up to tolerance;
    - the gradients are those of all shared parameters flattened into one vector;
      tasks with no valid rows in the batch are left out.

    Under several ranks: as :class:`~mtl_train.balancing.surgery.SharedGradientSurgery` (one
    all-reduce of the T per-task gradients on the shared parameters, T x |shared params|
    numbers, one of the task-specific parameters' gradients, and the T losses and counts);
    every rank solves the same inner problem on the same Gram matrix.

    Raises:
        ConfigError: ``loss.rescale`` not in 0, 1, 2; a model without shared parameters.
    """

    def __init__(self, loss_names, cfg, model=None):
        super().__init__(loss_names, cfg, model)
        self.c = float(cfg.c)
        self.rescale = int(cfg.rescale)
        if self.rescale not in (0, 1, 2):
            raise ConfigError(f"loss.rescale: must be 0, 1 or 2, got {self.rescale}")

    def coefficients(self, K, idx, losses, grads, num_params, shared):
        a, w = cagrad_coefficients(K, self.c, self.rescale)
        logs = {}
        if self.log_due:
            logs = {f"cagrad_w/{self.loss_names[i]}": float(v) for i, v in zip(idx, w)}
        return a.tolist(), [1.0] * len(idx), logs

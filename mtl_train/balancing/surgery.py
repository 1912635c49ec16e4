"""Base of the gradient-surgery methods (PCGrad, CAGrad, GradNorm+PCGrad): per-task gradients
on the shared parameters, combined through their Gram matrix; task-specific parameters keep
the sum of their own gradients."""
from __future__ import annotations

import numpy as np
import torch

from mtl_train.balancing.base import Balancer, require_shared
from mtl_train.balancing.gradients import combine, cosine_logs, gram, set_grad, task_gradients, valid_tasks
from mtl_train.train import ddp


class SharedGradientSurgery(Balancer):
    """Per-task gradients g_i on ``model.shared_parameters()``, combined into sum_j a_j g_j.

    Each step: one backward pass per task with at least one valid row (the graph is kept
    between them), so the cost is one forward and T backward passes; the Gram matrix
    K_ij = <g_i, g_j> over all shared parameters (flattened and concatenated, a sparse
    embedding gradient included) gives the coefficients a (:meth:`coefficients`); every shared
    parameter then gets sum_j a_j g_j, and every task-specific parameter the gradient of
    sum_j b_j L_j (b = 1 for plain surgery methods), which only its own task reaches.

    ``weights()`` returns a: the coefficient of each task's gradient in the shared update of
    the last step in which the task had valid rows. Logs (on logged steps):
    ``grad_cos/<a>/<b>``, the cosine between the tasks' gradients on the shared parameters,
    before surgery.

    Under several ranks (the model is not wrapped in DDP): the T per-task gradients on the
    shared parameters are averaged over the ranks in one all-reduce (T x |shared params|
    numbers), giving those of the global batch; every rank computes the same Gram matrix,
    coefficients and shared update from them; the task-specific parameters' gradients (sum_j
    b_j g_j, local) are then averaged in one more all-reduce (|task-specific params|), plus
    the T losses and counts all-reduced once per step.

    Raises:
        ConfigError: the model shares no parameter between tasks (``model=single_task``).
    """

    needs_task_gradients = True
    reduces_gradients = True
    provides_shared_gram = True

    def __init__(self, loss_names, cfg, model=None):
        super().__init__(loss_names, cfg, model)
        require_shared(model, cfg.name)
        self.coef = torch.ones(self.num_tasks)

    def weights(self) -> torch.Tensor:
        return self.coef.clone()

    def extra_inputs(self, model, out) -> list[torch.Tensor]:
        """Tensors besides the parameters whose per-task gradients :meth:`coefficients` needs."""
        return []

    def coefficients(self, K: np.ndarray, idx: list[int], losses: torch.Tensor, grads, num_params: int,
                     shared: list[int]) -> tuple[list[float], list[float], dict]:
        """(a, b, logs): shared coefficients a [m], task-specific coefficients b [m] of the m valid
        tasks ``idx``; K [m, m] is the Gram matrix on the shared parameters."""
        raise NotImplementedError

    def backward(self, losses, counts, model, out):
        idx = valid_tasks(counts)
        if not idx:
            return self.no_task_backward(losses)
        shared_ids = {id(p) for p in model.shared_parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        is_shared = [id(p) in shared_ids for p in params]
        shared = [k for k, s in enumerate(is_shared) if s]
        grads = task_gradients(losses, idx, params + self.extra_inputs(model, out))
        ddp.mean_task_gradients(grads, shared)  # under several ranks: those of the global batch
        K = gram(grads, shared)
        self.shared_gram = (K, idx)
        a, b, logs = self.coefficients(K, idx, losses, grads, len(params), shared)
        for k, p in enumerate(params):
            set_grad(p, combine(grads, k, a if is_shared[k] else b))
        ddp.mean_gradients([p for p, s in zip(params, is_shared) if not s])
        self.coef[idx] = torch.tensor(a, dtype=self.coef.dtype)
        self.applied = self.coef.clone()
        if self.log_due:
            logs.update(cosine_logs(K, [self.loss_names[i] for i in idx]))
        return logs

    def state_dict(self) -> dict:
        return {"coef": self.coef.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.coef = state["coef"].clone()


def make_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g

"""The balancer interface: every loss-weighting and gradient-surgery method implements it.

A balancer receives the per-task losses of one step and leaves the gradients of the model's
parameters in ``.grad`` (the trainer then calls the model optimizer). It owns every decision
about task weights and gradient surgery, and its state is part of the checkpoint.
"""
from __future__ import annotations

import torch

from mtl_train import registry
from mtl_train.errors import ConfigError


class Balancer:
    """Base class.

    Args:
        loss_names: names of the T loss terms, in order.
        cfg: the ``loss`` config group.

    Under several ranks (``torch.distributed``), ``losses`` and ``counts`` are those of the
    global batch, identical on every rank (:func:`mtl_train.train.ddp.global_losses`), so a
    balancer's decisions and state are the same on every rank; each method's docstring says
    what else it communicates per step.

    Subclasses implement :meth:`backward` and keep their whole state (weights, initial losses,
    loss history, the weights' own optimizer, random generators) in :meth:`state_dict`, so
    that a run resumed from a checkpoint continues with identical weights.

    Attributes:
        needs_task_gradients: class attribute; True where the method takes each task's own
            gradient of the shared parameters, the embedding table included (gradient surgery,
            MGDA), so that table's gradient must be dense; False where it only weights the task
            losses (GradNorm too: its gradient norms are taken at one layer W, not the table).
            ``model.sparse_embedding: null`` reads it (see ``sparse_embedding_default``).
        reduces_gradients: class attribute; True where the method sets gradients by hand and so
            reduces them across ranks itself (GradNorm, the gradient-surgery methods): under
            several ranks it combines the per-task gradients of the whole global batch, the
            same on every rank, and leaves every ``.grad`` reduced (see
            :mod:`mtl_train.train.ddp`); the model is then not wrapped in
            ``DistributedDataParallel``. False where the gradient is that of a weighted sum of
            the losses, which DDP averages during the backward pass.
        log_due: True when the coming :meth:`backward` belongs to a step that the run logger
            writes (the trainer sets it before each step from ``trainer.log_every_steps``);
            methods compute their diagnostic logs (e.g. gradient cosines) only then. True by
            default, so direct callers always get logs.
        applied: float [T] or None: the weights that multiplied the task losses in the last
            :meth:`backward` (what ``train/weight/<task>`` logs for that step), set by methods
            whose weights change during a step; see :meth:`step`.
        provides_shared_gram: class attribute; True where :meth:`backward` computes each task's
            gradient on ``model.shared_parameters()`` and leaves their Gram matrix in
            ``shared_gram``: (K [m, m] float64, the m task indices) or None (no valid task).
            The gradient-conflict diagnostics (mtl_train/train/diagnostics.py) reuse it.
    """

    needs_task_gradients: bool = False
    reduces_gradients: bool = False
    provides_shared_gram: bool = False

    def __init__(self, loss_names: list[str], cfg, model=None):
        self.loss_names = list(loss_names)
        self.num_tasks = len(loss_names)
        self.cfg = cfg
        self.log_due = True
        self.applied: torch.Tensor | None = None
        self.shared_gram = None

    def to(self, device: torch.device) -> "Balancer":
        return self

    def weights(self) -> torch.Tensor:
        """float [T]: the current weight of each loss term (1 where the method has none): after
        a :meth:`backward`, the weights the next step starts from."""
        return torch.ones(self.num_tasks)

    def step(self, losses: torch.Tensor, counts: torch.Tensor, model, out: dict) -> tuple[dict[str, float], torch.Tensor]:
        """:meth:`backward`, and the weights this step applied: (logs, float [T]).

        The weights of a step are those that multiplied its losses, not the updated ones a
        method keeps for the next step (``weights()`` after the step): a method that sets its
        weights within the step (RLW's draw, MGDA's and the surgery methods' coefficients)
        records them in ``self.applied``; otherwise they are ``weights()`` as the step began
        (fixed weights; DWA, uncertainty and GradNorm, which weight a step with the weights
        they had and update them after). A task without a valid row in the batch multiplies
        nothing; its entry is the weight it keeps.
        """
        self.applied = None
        self.shared_gram = None
        before = self.weights()
        logs = self.backward(losses, counts, model, out)
        applied = self.applied if self.applied is not None else before
        return logs, applied

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

    @staticmethod
    def no_task_backward(losses: torch.Tensor) -> dict[str, float]:
        """No task has a valid row: zero gradients (as ``loss=equal`` gives), nothing updated."""
        (losses.sum() * 0.0).backward()
        return {}


def require_shared(model, method: str) -> None:
    """Raise ConfigError when ``model`` shares no parameter between tasks (``model=single_task``)."""
    if model is not None and not [p for p in model.shared_parameters() if p.requires_grad]:
        raise ConfigError(f"loss={method}: this model shares no parameters between tasks "
                          "(gradient methods need shared layers; use e.g. model=mmoe or model=shared_bottom)")


def task_kinds(model, loss_names: list[str]) -> list[str]:
    """``binary`` or ``regression`` for each loss term (``binary`` when the model has no schema
    or the loss term is not a task)."""
    types = {}
    if model is not None and getattr(model, "schema", None) is not None:
        types = {t.name: t.type for t in model.schema.tasks}
    return [types.get(n, "binary") for n in loss_names]


def build_balancer(cfg, loss_names: list[str], model) -> Balancer:
    """The balancer registered as ``loss`` option ``cfg.name`` (see :mod:`mtl_train.registry`).

    Raises:
        ConfigError: unknown method, or a method the model cannot support.
    """
    return registry.get("loss", cfg.name).target(loss_names, cfg, model)

"""Optimizers and learning-rate schedules: the optimizers of a model (``trainer.optimizer``),
the row-sparse Adam of a sparse embedding table, and the LR schedule (``trainer.scheduler``)."""
from __future__ import annotations

import logging
import math

import torch

from mtl_train.errors import ConfigError

log = logging.getLogger(__name__)


class RowSparseAdam(torch.optim.Optimizer):
    """Adam (Kingma & Ba, ICLR 2015) applied only to the rows present in a sparse gradient,
    the "lazy" Adam of ``torch.optim.SparseAdam`` and TensorFlow's LazyAdam.

    For the rows r of the (coalesced) gradient g, with t the number of steps taken so far:

        m[r] <- b1 m[r] + (1 - b1) g[r]
        v[r] <- b2 v[r] + (1 - b2) g[r]^2
        w[r] <- w[r] - lr * (m[r] / (1 - b1^t)) / (sqrt(v[r] / (1 - b2^t)) + eps)

    Rows absent from the batch keep their weights and moments (the choice SparseAdam makes;
    dense Adam would keep moving them with their old momentum). Work per step is O(U * dim)
    for U distinct rows, never O(table size): weights and moments of those rows are gathered
    with ``index_select``, updated by torch's fused Adam kernel (one pass; on CUDA, or where
    that kernel is missing, the formula above op by op) and written back with ``index_copy_``,
    without the sparse-tensor arithmetic of ``torch.optim.SparseAdam``. A dense gradient is
    accepted too and treated as touching every row.

    Args:
        params: parameters of shape [rows, dim] whose gradients are sparse COO tensors
            (``FeatureEmbedding(sparse_grad=True)`` produces coalesced ones).
        lr, betas, eps: as in ``torch.optim.Adam``.

    Raises:
        ValueError: a negative learning rate or a beta outside [0, 1).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid betas {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                grad = p.grad
                if grad.is_sparse:
                    rows, g = grad._indices()[0], grad._values()
                    # autograd's accumulation drops the coalesced flag; strictly increasing
                    # rows (what FeatureEmbedding's lookup produces) are coalesced already
                    if not grad.is_coalesced() and not bool((rows[1:] > rows[:-1]).all()):
                        grad = grad.coalesce()
                        rows, g = grad.indices()[0], grad.values()
                    # gather the rows, update them as dense tensors, write them back (rows are
                    # distinct, so index_copy_ is exact and cheaper than index_add_)
                    w, m, v = (t.index_select(0, rows) for t in (p, state["exp_avg"], state["exp_avg_sq"]))
                    _adam_update(w, g, m, v, state["step"], lr, b1, b2, eps)
                    for full, part in ((p, w), (state["exp_avg"], m), (state["exp_avg_sq"], v)):
                        full.index_copy_(0, rows, part)
                else:
                    _adam_update(p, grad, state["exp_avg"], state["exp_avg_sq"], state["step"], lr, b1, b2, eps)
        return loss


def _adam_update(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: torch.Tensor,
                 lr: float, b1: float, b2: float, eps: float) -> None:
    """One Adam update of dense tensors ``w``, ``m``, ``v`` (same shape as ``g``) in place, at
    step count ``step`` (a 0-d tensor, already incremented)."""
    fused = getattr(torch, "_fused_adam_", None)  # torch's Adam(fused=True) kernel (CPU since 2.4)
    if fused is not None and w.device.type == "cpu" and w.dtype in (torch.float32, torch.float64):
        fused([w], [g.contiguous()], [m], [v], [], [step], lr=lr, beta1=b1, beta2=b2, weight_decay=0.0, eps=eps,
              amsgrad=False, maximize=False)
        return
    t = float(step)
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (v / (1 - b2 ** t)).sqrt_().add_(eps)
    w.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))


def build_optimizer(model: torch.nn.Module, cfg) -> list[torch.optim.Optimizer]:
    """Adam/AdamW/SGD for dense parameters; a sparse embedding table (``model.sparse_embedding``)
    gets :class:`RowSparseAdam` (lazy Adam over the rows of the batch) with the same learning rate.

    Args:
        model: the model. cfg: ``trainer`` (optimizer, lr, weight_decay).

    Raises:
        ConfigError: an unknown ``trainer.optimizer``."""
    sparse = [p for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse for p in m.parameters()]
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    # the fused Adam kernel updates every tensor in one pass (CPU and CUDA): ~4x faster than
    # the per-tensor loop on the bench MMoE's 1.2 M dense parameters
    fused = all(p.dtype.is_floating_point for p in dense) and len({p.device for p in dense}) <= 1
    if cfg.optimizer == "adam":
        opts = [torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)]
    elif cfg.optimizer == "adamw":
        opts = [torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)]
    elif cfg.optimizer == "sgd":
        opts = [torch.optim.SGD(dense, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)]
    else:
        raise ConfigError(f"trainer.optimizer: unknown optimizer '{cfg.optimizer}' (choose from adam, adamw, sgd)")
    if sparse:
        if cfg.optimizer != "adam" or cfg.weight_decay:
            log.warning("model.sparse_embedding: the embedding table is trained by a row-sparse Adam (lr %g, no weight "
                        "decay), not by trainer.optimizer=%s with weight_decay=%g", cfg.lr, cfg.optimizer,
                        cfg.weight_decay)
        opts.append(RowSparseAdam(sparse, lr=cfg.lr))
    return opts


# balancers that only weight the task losses: they never need per-task gradients of the
# embedding table, so its gradient may be sparse
LOSS_WEIGHTING = ("equal", "static", "uncertainty", "dwa", "gradnorm")


def sparse_embedding_default(cfg, device: torch.device) -> bool:
    """Whether ``model.sparse_embedding: null`` means sparse embedding gradients: on CPU with
    plain Adam (no weight decay) and a loss-weighting balancer, where the bench measured it
    faster (scripts/bench.py; the dense Adam update of the whole table dominates a step);
    off on GPU and for gradient-surgery balancers, which need dense per-task gradients."""
    t = cfg.trainer
    return (device.type == "cpu" and t.optimizer == "adam" and not t.weight_decay
            and cfg.loss.name in LOSS_WEIGHTING)


def lr_factor(step: int, tcfg, total_steps: int) -> float:
    """Multiplier of ``trainer.lr`` for the optimizer step with 0-based index ``step``.

    - warmup (any scheduler): ``(step + 1) / warmup_steps`` for ``step < warmup_steps``
      (linear warmup, Goyal et al. 2017, "Accurate, Large Minibatch SGD");
    - ``none``: 1;
    - ``cosine``: ``r + (1 - r) * (1 + cos(pi * p)) / 2`` with ``r = min_lr_ratio`` and
      ``p = (step - warmup) / (total_steps - warmup)`` clipped to [0, 1] (SGDR, Loshchilov &
      Hutter 2017, one cycle without restarts);
    - ``step``: ``gamma ** ((step - warmup) // step_size)``.
    """
    warm = int(tcfg.warmup_steps)
    if warm and step < warm:
        return (step + 1) / warm
    k = step - warm
    if tcfg.scheduler == "cosine":
        p = min(max(k / max(1, total_steps - warm), 0.0), 1.0)
        r = float(tcfg.min_lr_ratio)
        return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p))
    if tcfg.scheduler == "step":
        return float(tcfg.gamma) ** (k // int(tcfg.step_size))
    return 1.0


def build_schedulers(optimizers: list[torch.optim.Optimizer], tcfg,
                     total_steps: int) -> list[torch.optim.lr_scheduler.LambdaLR]:
    """One ``LambdaLR`` per optimizer, stepped after every optimizer step, following
    :func:`lr_factor` over a run of ``total_steps`` optimizer steps."""
    return [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, tcfg, total_steps)) for o in optimizers]

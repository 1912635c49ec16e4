"""Optimizers and learning-rate schedules: the optimizers of a model (``trainer.optimizer``),
the row-sparse Adam of a sparse embedding table (a hand-written kernel, in
:mod:`mtl_train.kernels.sparse_adam`), and the LR schedule (``trainer.scheduler``)."""
from __future__ import annotations

import logging
import math

import torch

from mtl_train import registry
from mtl_train.kernels.sparse_adam import RowSparseAdam

log = logging.getLogger(__name__)


def build_optimizer(model: torch.nn.Module, cfg) -> list[torch.optim.Optimizer]:
    """Adam/AdamW/SGD for dense parameters; a sparse embedding table (``model.sparse_embedding``)
    gets :class:`RowSparseAdam` (lazy Adam over the rows of the batch) with the same learning rate.

    Args:
        model: the model. cfg: ``trainer`` (optimizer, lr, weight_decay), validated.
    """
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
    else:  # sgd (config validation admits adam, adamw and sgd only)
        opts = [torch.optim.SGD(dense, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)]
    if sparse:
        if cfg.optimizer != "adam" or cfg.weight_decay:
            log.warning("model.sparse_embedding: the embedding table is trained by a row-sparse Adam (lr %g, no weight "
                        "decay), not by trainer.optimizer=%s with weight_decay=%g", cfg.lr, cfg.optimizer,
                        cfg.weight_decay)
        opts.append(RowSparseAdam(sparse, lr=cfg.lr))
    return opts


def sparse_embedding_default(cfg, device: torch.device) -> bool:
    """Whether ``model.sparse_embedding: null`` means sparse embedding gradients: on CPU with
    plain Adam (no weight decay) and a loss-weighting balancer, where the bench measured it
    faster (scripts/bench.py; the dense Adam update of the whole table dominates a step);
    off on GPU and for gradient-surgery balancers, which need dense per-task gradients."""
    t = cfg.trainer
    return (device.type == "cpu" and t.optimizer == "adam" and not t.weight_decay
            and not registry.get("loss", cfg.loss.name).target.needs_task_gradients)


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

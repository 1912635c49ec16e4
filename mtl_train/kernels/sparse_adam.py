"""Row-sparse Adam for embedding tables with sparse gradients, beside the plain reference update
it is tested against. Which one runs is :func:`mtl_train.kernels.fused`
(``trainer.fused_kernels``); both keep the same state. Timings: docs/RESULTS.md, "Kernels"."""
from __future__ import annotations

import torch

from mtl_train.kernels import fused


class RowSparseAdam(torch.optim.Optimizer):
    """Adam (Kingma & Ba, ICLR 2015) applied only to the rows present in a sparse gradient,
    the "lazy" Adam of ``torch.optim.SparseAdam`` and TensorFlow's LazyAdam.

    For the rows r of the (coalesced) gradient g, with t the number of steps taken so far:

        m[r] <- b1 m[r] + (1 - b1) g[r]
        v[r] <- b2 v[r] + (1 - b2) g[r]^2
        w[r] <- w[r] - lr * (m[r] / (1 - b1^t)) / (sqrt(v[r] / (1 - b2^t)) + eps)

    Rows absent from the batch keep their weights and moments (the choice SparseAdam makes;
    dense Adam would keep moving them with their old momentum). ``torch.optim.SparseAdam``
    itself adds eps to sqrt(v) before the bias correction (eps / sqrt(1 - b2^t) in the terms
    above), so its steps differ slightly from these. Work per step is O(U * dim) for U distinct
    rows, never O(table size). Fused path: weights and moments of those rows are gathered with
    ``index_select``, updated by torch's fused Adam kernel (one pass; on CUDA, or where that
    kernel is missing, the formula above op by op, :func:`_adam_update`) and written back with
    ``index_copy_``. Reference path (``trainer.fused_kernels=false``):
    :func:`adam_rows_reference`, the formula above on indexed rows in plain torch operators.
    A dense gradient is accepted too and treated as touching every row.

    State per parameter: ``step`` (float64 0-d tensor), ``exp_avg`` and ``exp_avg_sq`` (m and
    v, the parameter's shape), the same on both paths.

    Args:
        params: parameters of shape [rows, dim] whose gradients are sparse COO tensors
            (``FeatureEmbedding(sparse_grad=True)`` produces them).
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
        use_fused = fused()
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
                if not use_fused:
                    grad = grad.coalesce() if grad.is_sparse else grad
                    rows = grad.indices()[0] if grad.is_sparse else None
                    adam_rows_reference(p, grad.values() if grad.is_sparse else grad, state["exp_avg"],
                                        state["exp_avg_sq"], rows, state["step"], lr, b1, b2, eps)
                elif grad.is_sparse:
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
    fused_adam = getattr(torch, "_fused_adam_", None)  # torch's Adam(fused=True) kernel (CPU since 2.4)
    if fused_adam is not None and w.device.type == "cpu" and w.dtype in (torch.float32, torch.float64):
        fused_adam([w], [g.contiguous()], [m], [v], [], [step], lr=lr, beta1=b1, beta2=b2, weight_decay=0.0, eps=eps,
                   amsgrad=False, maximize=False)
        return
    t = float(step)
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (v / (1 - b2 ** t)).sqrt_().add_(eps)
    w.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))


def adam_rows_reference(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                        rows: torch.Tensor | None, step: torch.Tensor, lr: float, b1: float, b2: float,
                        eps: float) -> None:
    """The lazy Adam update of :class:`RowSparseAdam` written as the formula, in place.

    Shapes: ``w``, ``m``, ``v`` [R, dim] (weights and moments of the whole table); ``rows``
    int64 [U] distinct row indices and ``g`` [U, dim] their gradient, or ``rows=None`` and ``g``
    [R, dim] (every row). ``step`` is the 0-d step count, already incremented.
    """
    t = float(step)
    idx = slice(None) if rows is None else rows
    m_r = b1 * m[idx] + (1 - b1) * g
    v_r = b2 * v[idx] + (1 - b2) * g * g
    m[idx] = m_r
    v[idx] = v_r
    w[idx] = w[idx] - lr * (m_r / (1 - b1 ** t)) / ((v_r / (1 - b2 ** t)).sqrt() + eps)

"""Row-sparse Adam for embedding tables with sparse gradients."""
from __future__ import annotations

import torch


class RowSparseAdam(torch.optim.Optimizer):
    """Adam (Kingma & Ba, ICLR 2015) applied only to the rows present in a sparse gradient,
    the "lazy" Adam of ``torch.optim.SparseAdam`` and TensorFlow's LazyAdam.

    For the rows r of the (coalesced) gradient g, with t the number of steps taken so far:

        m[r] <- b1 m[r] + (1 - b1) g[r]
        v[r] <- b2 v[r] + (1 - b2) g[r]^2
        w[r] <- w[r] - lr * (m[r] / (1 - b1^t)) / (sqrt(v[r] / (1 - b2^t)) + eps)

    Rows absent from the batch keep their weights and moments (the choice SparseAdam makes;
    dense Adam would keep moving them with their old momentum). Work per step is O(U * dim)
    for U distinct rows, never O(table size): rows are gathered with ``index_select``,
    updated in place and written back with ``index_copy_``, without the sparse-tensor
    arithmetic of ``torch.optim.SparseAdam``. A dense gradient is accepted too and treated
    as touching every row.

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
                t = float(state["step"])
                grad = p.grad
                if grad.is_sparse:
                    rows, g = grad._indices()[0], grad._values()
                    # autograd's accumulation drops the coalesced flag; strictly increasing
                    # rows (what FeatureEmbedding's lookup produces) are coalesced already
                    if not grad.is_coalesced() and not bool((rows[1:] > rows[:-1]).all()):
                        grad = grad.coalesce()
                        rows, g = grad.indices()[0], grad.values()
                else:
                    rows, g = None, grad
                m_all, v_all = state["exp_avg"], state["exp_avg_sq"]
                m = m_all.index_select(0, rows) if rows is not None else m_all
                v = v_all.index_select(0, rows) if rows is not None else v_all
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v / (1 - b2 ** t)).sqrt_().add_(eps)
                upd = (m / denom).mul_(-lr / (1 - b1 ** t))
                if rows is not None:
                    m_all.index_copy_(0, rows, m)
                    v_all.index_copy_(0, rows, v)
                    p.index_add_(0, rows, upd)
                else:
                    p.add_(upd)
        return loss

"""Shared machinery of the gradient-based balancers: per-task gradients, their Gram matrix,
the small solvers that turn a Gram matrix into task coefficients, and a masked optimizer step.

Every gradient-surgery method of this package (PCGrad, CAGrad, MGDA, GradNorm+PCGrad) returns
a shared-parameter gradient that is a linear combination ``sum_j a_j g_j`` of the per-task
gradients g_j, with coefficients a that depend only on the Gram matrix K_ij = <g_i, g_j>.
So each method works on the T x T matrix K (float64, on the CPU; its dot products are taken
in float32 at least, bfloat16 gradients included) and the large gradients are touched only to
build K and to form the final combination once.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def valid_tasks(counts: torch.Tensor) -> list[int]:
    """Indices of the tasks with at least one valid row (``counts`` [T] > 0)."""
    return (counts > 0).nonzero().flatten().tolist()


def task_gradients(losses: torch.Tensor, idx: list[int], inputs: list[torch.Tensor]) -> list[list[torch.Tensor | None]]:
    """Gradient of each ``losses[i]`` (i in ``idx``) with respect to every tensor of ``inputs``.

    One backward pass per task, the graph retained between them and freed after the last
    (``inputs`` may hold parameters and intermediate tensors such as ``out["shared"]``).

    Returns:
        grads[n][k]: the gradient of ``losses[idx[n]]`` w.r.t. ``inputs[k]`` (same shape, sparse
        for a sparse embedding table), or None where that loss does not depend on it.
    """
    grads = []
    for n, i in enumerate(idx):
        last = n == len(idx) - 1
        grads.append(list(torch.autograd.grad(losses[i], inputs, retain_graph=not last, allow_unused=True)))
    return grads


def _at_least_float32(g: torch.Tensor) -> torch.Tensor:
    return g if g.dtype in (torch.float32, torch.float64) else g.float()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_sparse or b.is_sparse:
        a = a.coalesce() if a.is_sparse else a
        b = b.coalesce() if b.is_sparse else b
        if a.is_sparse and b.is_sparse:
            if not (a._nnz() and b._nnz()):
                return a.new_zeros((), dtype=torch.float32)
            return torch.sparse.sum(a * b).to(torch.float32)
        s, d = (a, b) if a.is_sparse else (b, a)
        return (s._values() * d.reshape(s.shape)[s._indices()[0]]).sum()
    return torch.dot(a.reshape(-1), b.reshape(-1))


def gram(grads: list[list[torch.Tensor | None]], select: list[int]) -> np.ndarray:
    """K [m, m] float64: K_ij = sum over the inputs k in ``select`` of <grads[i][k], grads[j][k]>.

    One device-to-host copy for the whole matrix; a None gradient counts as zero.
    """
    m = len(grads)
    if m == 0:
        return np.zeros((0, 0))
    dev = next((g.device for row in grads for g in row if g is not None), torch.device("cpu"))
    K = torch.zeros(m, m, dtype=torch.float32, device=dev)
    for k in select:
        # flatten each gradient once (a non-contiguous one, e.g. a transposed activation gradient, is copied once),
        # in float32 at least: a bfloat16 gradient (of the shared representation under trainer.precision=bf16)
        # would round every dot product to 8 bits of mantissa
        flat = [None if row[k] is None else _at_least_float32(row[k] if row[k].is_sparse else row[k].reshape(-1))
                for row in grads]
        for i in range(m):
            gi = flat[i]
            if gi is None:
                continue
            for j in range(i, m):
                gj = flat[j]
                if gj is None:
                    continue
                d = _dot(gi, gj).float()
                K[i, j] += d
                if i != j:
                    K[j, i] += d
    return K.double().cpu().numpy()


def combine(grads: list[list[torch.Tensor | None]], k: int, coef: list[float]) -> torch.Tensor | None:
    """sum_n coef[n] * grads[n][k], computed in place in the first non-None gradient (which the
    caller no longer needs); None when no task has a gradient for input k."""
    acc = None
    for g, c in zip((row[k] for row in grads), coef):
        if g is None:
            continue
        if acc is None:
            acc = g if c == 1.0 else g.mul_(c) if not g.is_sparse else g * c
        elif c != 0.0:
            acc = acc.add_(g, alpha=c) if not acc.is_sparse else acc + g * c
    return acc


def set_grad(p: torch.Tensor, g: torch.Tensor | None) -> None:
    """Accumulate ``g`` into ``p.grad`` (as ``backward`` would)."""
    if g is None:
        return
    if p.grad is None:
        p.grad = g
    else:
        p.grad = p.grad + g


def cosine_logs(K: np.ndarray, names: list[str], prefix: str = "grad_cos") -> dict[str, float]:
    """{"<prefix>/<a>/<b>": cos(g_a, g_b)} for every pair a < b, from a Gram matrix (0 where a
    gradient is zero)."""
    logs = {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            den = math.sqrt(max(K[i, i], 0.0) * max(K[j, j], 0.0))
            logs[f"{prefix}/{names[i]}/{names[j]}"] = float(K[i, j] / den) if den > 0 else 0.0
    return logs


# ---- solvers on the Gram matrix --------------------------------------------------------------
def pcgrad_coefficients(K: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """PCGrad (Yu et al., NeurIPS 2020, Algorithm 1) on the Gram matrix.

    For each task i, g_i^PC starts at g_i and, for each other task j in a random order,
    g_i^PC <- g_i^PC - min(0, <g_i^PC, g_j>) / ||g_j||^2 * g_j (projection on the normal plane
    of the original g_j when they conflict). g_i^PC = sum_j C[i, j] g_j is tracked through its
    coefficients C, so <g_i^PC, g_j> = (C K)[i, j].

    Returns:
        C [m, m] float64 (row i: the coefficients of g_i^PC).
    """
    m = K.shape[0]
    C = np.eye(m)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        order = torch.randperm(len(others), generator=generator).tolist()
        for o in order:
            j = others[o]
            d = float(C[i] @ K[:, j])
            if d < 0 and K[j, j] > 0:
                C[i, j] -= d / K[j, j]
    return C


def _min_norm_2(v11: float, v12: float, v22: float) -> float:
    """gamma in [0, 1] minimising ||gamma x + (1 - gamma) y||^2 given <x,x>, <x,y>, <y,y>."""
    den = v11 + v22 - 2.0 * v12
    if den <= 1e-20:
        return 0.5
    return float(min(1.0, max(0.0, (v22 - v12) / den)))


def min_norm_weights(K: np.ndarray, max_iter: int = 250, tol: float = 1e-6) -> np.ndarray:
    """The min-norm point of the convex hull of the gradients: argmin_{a in simplex} a^T K a.

    Sener and Koltun (NeurIPS 2018): exact line solution for two tasks (their Algorithm 1);
    for more, the Frank-Wolfe iteration of their Algorithm 2, started from the uniform weights,
    with the exact two-point line search, until the step is below ``tol`` or ``max_iter``.
    Frank-Wolfe converges slowly (O(1/t)) when the optimum lies on a face of the simplex, so
    its result is then polished by accelerated projected gradient descent (FISTA, step
    1 / (2 lambda_max(K))), kept only where it lowers a^T K a.

    Returns:
        a [m] float64, non-negative, summing to 1.
    """
    m = K.shape[0]
    if m == 1:
        return np.ones(1)
    if m == 2:
        g = _min_norm_2(K[0, 0], K[0, 1], K[1, 1])
        return np.array([g, 1.0 - g])
    a = np.full(m, 1.0 / m)
    for _ in range(max_iter):
        Ka = K @ a
        t = int(np.argmin(Ka))
        v11 = float(a @ Ka)
        v12 = float(Ka[t])
        v22 = float(K[t, t])
        gamma = _min_norm_2(v11, v12, v22)
        new = gamma * a
        new[t] += 1.0 - gamma
        if np.abs(new - a).sum() < tol:
            a = new
            break
        a = new
    lip = 2.0 * float(np.linalg.eigvalsh(K).max())
    if lip <= 0:
        return a
    x = y = a.copy()
    t = 1.0
    for _ in range(2000):
        x_new = project_simplex(y - 2.0 * (K @ y) / lip)
        if np.abs(x_new - x).sum() < 1e-12:
            x = x_new
            break
        t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = x_new + (t - 1.0) / t_new * (x_new - x)
        x, t = x_new, t_new
    return x if float(x @ K @ x) <= float(a @ K @ a) else a


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of v onto the probability simplex (Duchi et al., ICML 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    k = np.arange(1, len(v) + 1)
    rho = np.nonzero(u * k > css - 1.0)[0][-1]
    theta = (css[rho] - 1.0) / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def cagrad_coefficients(K: np.ndarray, c: float, rescale: int = 1, iters: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """CAGrad (Liu, Liu, Jin, Stone and Liu, "Conflict-Averse Gradient Descent for Multi-task
    Learning", NeurIPS 2021) on the Gram matrix.

    With g0 the mean gradient (coefficients b = 1/m) and phi = c ||g0||, solve
    min_{w in simplex} w^T K b + phi sqrt(w^T K w) (the dual of the paper's Eq. 3; the authors'
    code uses SciPy's SLSQP, here projected gradient descent with backtracking, from the
    uniform point, ``iters`` steps at most), then
    d = g0 + phi / ||g_w|| g_w with g_w = sum_j w_j g_j, divided by 1 + c^2 (``rescale=1``, the
    authors' default), 1 + c (``rescale=2``) or left as is (``rescale=0``).

    Returns:
        (a, w): a [m] the coefficients of d = sum_j a_j g_j; w [m] the simplex solution.
    """
    m = K.shape[0]
    b = np.full(m, 1.0 / m)
    g0_norm = math.sqrt(max(float(b @ K @ b), 0.0) + 1e-8)
    phi = c * g0_norm + 1e-8
    Kb = K @ b

    def f(x):
        return float(x @ Kb) + phi * math.sqrt(max(float(x @ K @ x), 0.0) + 1e-8)

    x = b.copy()
    fx = f(x)
    scale = float(np.abs(K).max()) if K.size else 0.0
    lr = 1.0 / scale if scale > 0 else 1.0
    for _ in range(iters if c > 0 else 0):
        grad = Kb + phi * (K @ x) / math.sqrt(max(float(x @ K @ x), 0.0) + 1e-8)
        while True:
            y = project_simplex(x - lr * grad)
            fy = f(y)
            if fy <= fx - 1e-12 * abs(fx) or lr < 1e-12 / max(scale, 1e-30):
                break
            lr *= 0.5
        if np.abs(y - x).sum() < 1e-10:
            x = y
            break
        x, fx = y, fy
        lr *= 2.0
    gw_norm = math.sqrt(max(float(x @ K @ x), 0.0))
    lam = phi / (gw_norm + 1e-8)
    a = b + lam * x
    if rescale == 1:
        a = a / (1.0 + c * c)
    elif rescale == 2:
        a = a / (1.0 + c)
    return a, x


# ---- optimizer step that leaves some entries untouched ----------------------------------------
def masked_step(opt: torch.optim.Optimizer, param: torch.Tensor, update: torch.Tensor) -> None:
    """``opt.step()`` for the 1-D parameter ``param``, after which the entries where ``update``
    (bool, same shape) is False have their value and their per-entry optimizer state (Adam's
    moments) restored: a task left out of a step gets no update of its weight."""
    keep = ~update
    if not bool(keep.any()):
        opt.step()
        return
    saved_p = param.detach()[keep].clone()
    st = opt.state.get(param, {})
    saved = {k: v[keep].clone() for k, v in st.items() if torch.is_tensor(v) and v.shape == param.shape}
    opt.step()
    with torch.no_grad():
        param[keep] = saved_p
        st = opt.state.get(param, {})
        for k, v in saved.items():
            st[k][keep] = v

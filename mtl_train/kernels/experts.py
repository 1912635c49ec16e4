"""Batched experts and the gate mix of MMoE/OMoE (Ma et al., KDD 2018): hand-written forward and
backward passes, each beside the plain-autograd reference it is tested against.

Which one runs is :func:`mtl_train.kernels.fused` (``trainer.fused_kernels``). Timings and the
variants tried: docs/RESULTS.md, "Kernels".
"""
from __future__ import annotations

from typing import Sequence

import torch

from mtl_train.kernels import fused


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype an autocast region would compute a GEMM of ``t`` in: the autocast dtype when
    autocast is on for ``t``'s device (``trainer.precision=bf16``), else ``t.dtype``."""
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


class _ReluExperts(torch.autograd.Function):
    """Forward and backward of :class:`~mtl_train.models.layers.BatchedExperts` with ReLU, no
    dropout and one shared [B, D] input, written out by hand so that a training step makes none
    of the copies and extra passes autograd would make. Reference: :func:`relu_experts_reference`.

    Forward: layer 1 is one GEMM for all experts with the bias folded in,
    Y1 = relu([x, 1] [[W1cat], [b1]]) [B, E*H1] (W1cat = W1 as [D, E*H1]), so neither a bias
    broadcast nor a separate bias-gradient sum over [B, E*H1] is needed. Expert e reads the
    column block Y1[:, e*H1:(e+1)*H1] (a valid BLAS leading dimension, no copy): layer 2 is E
    GEMMs on those blocks, later layers ``baddbmm``. ReLU runs in place on the GEMM outputs.

    Backward, layer l >= 2: dZ = dY * (Y > 0); dW = Y_prev^T dZ, dX = dZ W^T, db = sum over the
    batch. Where Y_prev is layer 1's strided view, both products are E GEMMs on column blocks
    of [B, E*H1], written straight into a [B, E*H1] dPre (autograd would return dY1 as
    [E, B, H1] and copy it through the forward's transpose). Layer 1: ReLU mask in place, then
    [x, 1]^T dPre gives dW1 and db1 in one GEMM.

    Under autocast (``trainer.precision=bf16``) everything runs in the autocast dtype, as
    autocast would run these GEMMs: the [x, 1] and [W1cat; b1] copies are made in it directly,
    later weights are cast once per step, and the gradients are returned in the dtypes of x
    and the parameters (float32 master weights).

    Inputs: x [B, D], then W1 [E, D, H1], b1 [E, H1], W2 [E, H1, H2], b2 [E, H2], ...
    Output: [E, B, H_last], in the compute dtype.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        dt = compute_dtype(x)
        ctx.dtypes = [x.dtype] + [p.dtype for p in params]
        with torch.autocast(x.device.type, enabled=False):
            ws = [w.to(dt) for w in params[2::2]]
            bs = [b.to(dt) for b in params[3::2]]
            e, d_in, h = params[0].shape
            x1 = torch.empty(x.shape[0], d_in + 1, dtype=dt, device=x.device)
            x1[:, :d_in] = x
            x1[:, d_in] = 1
            w1 = torch.empty(d_in + 1, e * h, dtype=dt, device=x.device)
            w1[:d_in].view(d_in, e, h).copy_(params[0].permute(1, 0, 2))
            w1[d_in] = params[1].reshape(e * h)
            y1 = torch.mm(x1, w1).relu_()  # [B, E*H1]
            ys = [y1.view(-1, e, h).transpose(0, 1)]  # [E, B, H1], strided
            for w, b in zip(ws, bs):
                if len(ys) == 1:  # E GEMMs on Y1's column blocks (bf16 bmm would copy them)
                    z = torch.empty(e, x.shape[0], w.shape[2], dtype=dt, device=x.device)
                    for k in range(e):
                        torch.addmm(b[k], y1[:, k * h:(k + 1) * h], w[k], out=z[k])
                else:
                    z = torch.baddbmm(b.unsqueeze(1), ys[-1], w)
                ys.append(z.relu_())
        ctx.num_layers, ctx.num_experts, ctx.width = len(ws) + 1, e, h
        ctx.save_for_backward(x1, w1, y1, *ys[1:], *ws)
        return ys[-1] if ws else ys[-1].clone()

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        with torch.autocast(dout.device.type, enabled=False):
            grads = _ReluExperts._backward(ctx, dout)
        return tuple(g if g is None else g.to(dt) for g, dt in zip(grads, ctx.dtypes))

    @staticmethod
    def _backward(ctx, dout: torch.Tensor) -> tuple:
        n, e, h = ctx.num_layers, ctx.num_experts, ctx.width
        x1, w1, y1, *rest = ctx.saved_tensors
        dout = dout.to(y1.dtype)
        ys, ws = [None, *rest[:n - 1]], rest[n - 1:]
        batch = y1.shape[0]
        blocks = [slice(k * h, (k + 1) * h) for k in range(e)]
        d_w: list[torch.Tensor | None] = [None] * n
        d_b: list[torch.Tensor | None] = [None] * n
        if n == 1:
            d_pre = dout.transpose(0, 1).reshape(batch, e * h).clone()
        else:
            dy = dout
            for l in range(n - 1, 0, -1):
                dz = torch.ops.aten.threshold_backward(dy, ys[l], 0)  # [E, B, H_l]
                d_b[l] = dz.sum(1)
                if l > 1:
                    d_w[l] = torch.bmm(ys[l - 1].transpose(1, 2), dz)
                    dy = torch.bmm(dz, ws[l - 1].transpose(1, 2))
                    continue
                d_w[1] = torch.empty_like(ws[0])
                d_pre = torch.empty_like(y1)
                for k, blk in enumerate(blocks):
                    torch.mm(y1[:, blk].t(), dz[k], out=d_w[1][k])
                    torch.mm(dz[k], ws[0][k].t(), out=d_pre[:, blk])
        # layer 1's ReLU mask, in place on the [B, E*H1] gradient
        torch.ops.aten.threshold_backward.grad_input(d_pre, y1, 0, grad_input=d_pre)
        d_w1 = x1.t() @ d_pre  # [D + 1, E*H1]: weight rows, then the bias row
        d_in = x1.shape[1] - 1
        d_w[0] = d_w1[:d_in].view(d_in, e, h).permute(1, 0, 2).contiguous()
        d_b[0] = d_w1[d_in].view(e, h)
        dx = d_pre @ w1[:d_in].t() if ctx.needs_input_grad[0] else None
        return (dx, *[g for pair in zip(d_w, d_b) for g in pair])


class _MixExperts(torch.autograd.Function):
    """out[:, t] = sum_e G[:, t, e] * experts[e] for all T gates at once, as batched products over
    the batch rows: out[b] (T x H) = G[b] (T x E) @ experts[:, b] (E x H); backward
    dG[b] = d_out[b] @ experts[:, b]^T the same way, and d_experts[e] = sum_t G[:, t, e] d_out[:, t]
    by E*T fused multiply-adds into the [E, B, H] layout. Replaces T broadcast multiplies and
    sums over [E, B, H] (and their backward) with one pass over the experts per direction.
    Reference: :func:`mix_reference`.

    Inputs: G [B, T, E] (gate probabilities), experts [E, B, H]. Output: [B, T, H], in the
    compute dtype (see :func:`compute_dtype`; gradients come back in the inputs' dtypes).
    """

    @staticmethod
    def forward(ctx, g: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        dt = compute_dtype(experts)
        ctx.dtypes = (g.dtype, experts.dtype)
        g, experts = g.to(dt), experts.to(dt)
        ctx.save_for_backward(g, experts)
        with torch.autocast(experts.device.type, enabled=False):
            return torch.bmm(g, experts.transpose(0, 1))

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        with torch.autocast(dout.device.type, enabled=False):
            d_g, d_ex = _MixExperts._backward(ctx, dout)
        return (None if d_g is None else d_g.to(ctx.dtypes[0]), None if d_ex is None else d_ex.to(ctx.dtypes[1]))

    @staticmethod
    def _backward(ctx, dout: torch.Tensor):
        g, experts = ctx.saved_tensors
        dout = dout.to(experts.dtype)
        d_g = d_ex = None
        if ctx.needs_input_grad[1]:
            # d_experts[e] = sum_t G[:, t, e] * d_out[:, t]: T passes per expert, contiguous
            # output (a bmm writing into the [E, B, H] layout falls back to B separate GEMMs)
            d_ex = torch.empty(experts.shape, dtype=dout.dtype, device=dout.device)
            ge = g.permute(2, 1, 0).unsqueeze(-1)  # [E, T, B, 1]
            for e in range(d_ex.shape[0]):
                torch.mul(dout[:, 0], ge[e, 0], out=d_ex[e])
                for t in range(1, dout.shape[1]):
                    d_ex[e].addcmul_(dout[:, t], ge[e, t])
        if ctx.needs_input_grad[0]:
            d_g = torch.bmm(dout, experts.permute(1, 2, 0))
        return d_g, d_ex


def relu_experts(x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """E ReLU MLPs of identical shape on one shared input, no dropout.

    Expert e's layer l is y = relu(y W_l[e] + b_l[e]). Shapes: x [B, D]; ``params`` W1 [E, D, H1],
    b1 [E, H1], W2 [E, H1, H2], b2 [E, H2], ... -> [E, B, H_last] (in the autocast dtype under
    ``trainer.precision=bf16``). :class:`_ReluExperts` when the kernels are on, else
    :func:`relu_experts_reference`.
    """
    if fused():
        return _ReluExperts.apply(x, *params)
    return relu_experts_reference(x, params)


def relu_experts_reference(x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`relu_experts` in plain torch operators (autograd differentiates it): layer 1 as one
    GEMM for all experts, later layers as ``baddbmm``. Shapes as :func:`relu_experts`."""
    w0, b0 = params[0], params[1]
    e, d_in, h = w0.shape
    y = torch.relu(torch.addmm(b0.reshape(e * h), x, w0.permute(1, 0, 2).reshape(d_in, e * h)))  # [B, E*H1]
    y = y.view(-1, e, h).transpose(0, 1)  # [E, B, H1]
    for w, b in zip(params[2::2], params[3::2]):
        y = torch.relu(torch.baddbmm(b.unsqueeze(1), y, w))
    return y


def mix(gates: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """out[:, t] = sum_e gates[:, t, e] * experts[e] for all T gates at once.

    Shapes: gates [B, T, E], experts [E, B, H] -> [B, T, H] (in the autocast dtype under
    ``trainer.precision=bf16``). :class:`_MixExperts` when the kernels are on, else
    :func:`mix_reference`.
    """
    if fused():
        return _MixExperts.apply(gates, experts)
    return mix_reference(gates, experts)


def mix_reference(gates: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """:func:`mix` in plain torch operators: one batched product out[b] = G[b] @ experts[:, b],
    differentiated by autograd. Shapes as :func:`mix`."""
    return torch.bmm(gates, experts.transpose(0, 1))

"""mtl_train.kernels.experts: fused ReLU experts and mix against the plain-autograd reference."""
import pytest
import torch
from helpers import _loop_experts

from mtl_train import kernels
from mtl_train.kernels.experts import mix, mix_reference, relu_experts, relu_experts_reference
from mtl_train.models.layers import BatchedExperts, Gate, gate_probabilities, mix_experts

pytestmark = pytest.mark.usefixtures("fused_on")  # conftest.fused_on


@pytest.mark.parametrize("hidden", [[6], [6, 4], [6, 5, 3]])
def test_fused_relu_experts_and_mix_match_autograd_of_the_loop(hidden):
    torch.manual_seed(1)
    ex = BatchedExperts(3, 5, hidden)
    gates = [Gate(5, 3) for _ in range(2)]
    x = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    ex.double(), [g.double() for g in gates]
    params = [x, *ex.parameters(), *[p for g in gates for p in g.parameters()]]
    d_out = [torch.randn(9, hidden[-1], dtype=torch.float64) for _ in gates]

    y = ex(x)
    assert type(y.grad_fn).__name__ == "_ReluExpertsBackward"
    fused = mix_experts(gate_probabilities(gates, x), y)
    grads = torch.autograd.grad(fused, params, d_out)

    ref_y = _loop_experts(ex, x)
    ref = [sum(torch.softmax(g.linear(x), -1)[:, e:e + 1] * ref_y[e] for e in range(3)) for g in gates]
    ref_grads = torch.autograd.grad(ref, params, d_out)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_fused_experts_gradcheck():
    torch.manual_seed(2)
    ex = BatchedExperts(2, 3, [4, 3]).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    from mtl_train.kernels.experts import _ReluExperts
    params = [p for pair in zip(ex.weights, ex.biases) for p in pair]  # W1, b1, W2, b2
    assert torch.autograd.gradcheck(lambda x, *p: _ReluExperts.apply(x, *p), (x, *params))


BF16 = {"rtol": 2e-2, "atol": 2e-2}


def _expert_params(e, d, hidden, seed):
    g = torch.Generator().manual_seed(seed)
    params, d_in = [], d
    for h in hidden:
        params += [torch.randn(e, d_in, h, generator=g) / d_in ** 0.5, torch.randn(e, h, generator=g) * 0.1]
        d_in = h
    return [p.requires_grad_() for p in params]


def _grads(fn, x, params, d_out):
    y = fn(x, params)
    return y, torch.autograd.grad(y, [x, *params], d_out)


@pytest.mark.parametrize("hidden", [[6], [6, 4], [7, 5, 3]])
def test_relu_experts_forward_and_backward_equal_the_reference_fp32(hidden):
    x = torch.randn(11, 5, requires_grad=True)
    params = _expert_params(3, 5, hidden, seed=len(hidden))
    d_out = torch.randn(3, 11, hidden[-1])
    y, g = _grads(relu_experts, x, params, d_out)
    y_ref, g_ref = _grads(relu_experts_reference, x, params, d_out)
    assert type(y.grad_fn).__name__ == "_ReluExpertsBackward"
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hidden", [[16], [16, 8]])
def test_relu_experts_under_bf16_autocast_match_the_reference(hidden):
    x = torch.randn(32, 12, requires_grad=True)
    params = _expert_params(4, 12, hidden, seed=7)
    d_out = torch.randn(4, 32, hidden[-1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, g = _grads(relu_experts, x, params, d_out)
        y_ref, g_ref = _grads(relu_experts_reference, x, params, d_out)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), **BF16)
    for a, b, p in zip(g, g_ref, [x, *params]):
        assert a.dtype == b.dtype == p.dtype == torch.float32  # float32 master weights
        torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2 * float(b.abs().max()))


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_mix_forward_and_backward_equal_the_reference(autocast):
    g = torch.softmax(torch.randn(13, 3, 4), -1).requires_grad_()
    ex = torch.randn(4, 13, 6, requires_grad=True)
    d_out = torch.randn(13, 3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = mix(g, ex)
        y_ref = mix_reference(g, ex)
        grads = torch.autograd.grad(y, [g, ex], d_out)
        grads_ref = torch.autograd.grad(y_ref, [g, ex], d_out)
    assert type(y.grad_fn).__name__ == "_MixExpertsBackward" and y.dtype == y_ref.dtype
    tol = BF16 if autocast else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(y.float(), y_ref.float(), **tol)
    for a, b in zip(grads, grads_ref):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, **tol)


def test_reference_experts_and_mix_export_with_torch_export():
    # the reason for the reference path (issue 16): the custom autograd functions do not export
    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = BatchedExperts(3, 5, [6, 4])
            self.gate = torch.nn.Linear(5, 6)

        def forward(self, x):
            gates = torch.softmax(self.gate(x).view(-1, 2, 3), -1)
            return tuple(mix_experts(gates, self.experts(x)))

    m = Mixed()
    x, x2 = torch.randn(8, 5), torch.randn(8, 5)
    with kernels.use_fused(False):
        program = torch.export.export(m, (x,))
        for a, b in zip(program.module()(x2), m(x2)):
            torch.testing.assert_close(a, b)

"""Every hand-written kernel of mtl_train/kernels against the plain-autograd reference beside it,
and the switch (trainer.fused_kernels) that runs the references everywhere."""
import json

import pytest
import torch

from mtl_train import kernels
from mtl_train.kernels.experts import mix, mix_reference, relu_experts, relu_experts_reference
from mtl_train.kernels.sparse import sparse_lookup, sparse_lookup_reference
from mtl_train.kernels.sparse_adam import RowSparseAdam
from mtl_train.models.layers import BatchedExperts, mix_experts

BF16 = {"rtol": 2e-2, "atol": 2e-2}


@pytest.fixture(autouse=True)
def _fused_on():
    """Each test starts with the kernels on and leaves them on."""
    with kernels.use_fused(True):
        yield


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


def test_sparse_lookup_values_and_gradient_equal_the_reference():
    w = torch.randn(40, 5, requires_grad=True)
    ids = torch.randint(0, 40, (9, 7))
    ids[0, :3] = 17  # repeated ids sum into one row
    d_out = torch.randn(9, 7, 5)
    y = sparse_lookup(w, ids)
    (g,) = torch.autograd.grad(y, [w], d_out)
    y_ref = sparse_lookup_reference(w, ids)
    (g_ref,) = torch.autograd.grad(y_ref, [w], d_out)
    assert torch.equal(y, y_ref) and torch.equal(y, w[ids])
    assert g.is_sparse and g.is_coalesced() and g_ref.is_sparse
    torch.testing.assert_close(g.to_dense(), g_ref.to_dense(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g._indices(), g_ref.coalesce().indices())


def _sparse_grad(rows, values, shape):
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, shape, check_invariants=True)


@pytest.mark.parametrize("coalesced", [True, False])
def test_row_sparse_adam_fused_equals_reference_on_touched_rows(coalesced):
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(30, 4, generator=g)
    p_f, p_r = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt_f, opt_r = RowSparseAdam([p_f], lr=0.05), RowSparseAdam([p_r], lr=0.05)
    for step in range(6):
        rows = torch.randperm(30, generator=g)[:12]
        if coalesced:
            rows = rows.sort().values
        else:  # duplicated rows: the optimizer coalesces (sums) them
            rows = torch.cat([rows, rows[:3]])
        values = torch.randn(len(rows), 4, generator=g)
        grad = _sparse_grad(rows, values, (30, 4))
        grad = grad.coalesce() if coalesced else grad
        p_f.grad, p_r.grad = grad.clone(), grad.clone()
        before = p_r.data.clone()
        opt_f.step()
        with kernels.use_fused(False):
            opt_r.step()
        untouched = torch.ones(30, dtype=torch.bool)
        untouched[rows] = False
        torch.testing.assert_close(p_f.data, p_r.data, rtol=1e-6, atol=1e-7)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt_f.state[p_f][key], opt_r.state[p_r][key], rtol=1e-5, atol=1e-8)
        assert torch.equal(p_r.data[untouched], before[untouched])  # lazy: rows not in the batch keep their weights
    # a dense gradient touches every row, on both paths
    dense = torch.randn(30, 4, generator=g)
    p_f.grad, p_r.grad = dense.clone(), dense.clone()
    opt_f.step()
    with kernels.use_fused(False):
        opt_r.step()
    torch.testing.assert_close(p_f.data, p_r.data, rtol=1e-6, atol=1e-7)


def test_reference_row_sparse_adam_equals_dense_adam_when_every_row_is_touched():
    w0 = torch.randn(6, 3)
    p_s, p_d = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt_s, opt_d = RowSparseAdam([p_s], lr=0.05), torch.optim.Adam([p_d], lr=0.05)
    with kernels.use_fused(False):
        for _ in range(4):
            grad = torch.randn(6, 3)
            p_d.grad = grad
            p_s.grad = grad.to_sparse(sparse_dim=1)  # rows x dense values, as an embedding gradient
            opt_d.step()
            opt_s.step()
            torch.testing.assert_close(p_s.data, p_d.data, rtol=1e-6, atol=1e-7)


def test_switch_off_runs_plain_torch_ops_in_the_model():
    ex = BatchedExperts(3, 5, [6, 4])
    x = torch.randn(8, 5)
    gates = torch.softmax(torch.randn(8, 2, 3), -1)
    table = torch.randn(20, 4, requires_grad=True)
    ids = torch.randint(0, 20, (8, 2))
    fused = (ex(x), mix_experts(gates, ex(x)), sparse_lookup(table, ids))
    assert type(fused[0].grad_fn).__name__ == "_ReluExpertsBackward"
    with kernels.use_fused(False):
        assert not kernels.fused()
        ref = (ex(x), mix_experts(gates, ex(x)), sparse_lookup(table, ids))
        names = {type(t.grad_fn).__name__ for t in (ref[0], *ref[1], ref[2])}
        assert not any(n.startswith("_") for n in names), names  # no custom autograd function
    assert kernels.fused()  # restored
    torch.testing.assert_close(fused[0], ref[0])
    for a, b in zip(fused[1], ref[1]):
        torch.testing.assert_close(a, b)
    assert torch.equal(fused[2], ref[2])



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

def test_gradnorm_records_the_experts_last_layer_through_their_methods():
    ex = BatchedExperts(2, 5, [6, 4])
    x = torch.randn(3, 5)
    assert ex.take_last_layer() is None
    ex.record_last_layer(True)
    y = ex(x)
    X, Z = ex.take_last_layer()
    assert X.shape == (2, 3, 6) and Z.shape == (2, 3, 4) and torch.equal(torch.relu(Z), y)
    assert ex.take_last_layer() is None  # handed out once
    ex.record_last_layer(False)
    ex(x)
    assert ex.take_last_layer() is None


def test_fused_kernels_false_trains_end_to_end_close_to_fused(tmp_path):
    from conftest import find_run_dir, run_cli

    args = ["dataset.train_rows=6000", "dataset.val_rows=1000", "dataset.test_rows=1000", "trainer.batch_size=128",
            "trainer.epochs=2", "trainer.lr=0.01", "trainer.progress=false", "model.expert_hidden=[16,8]",
            "model.num_experts=3", "model.sparse_embedding=true"]
    metrics = {}
    for flag in ("true", "false"):
        (tmp_path / flag).mkdir()
        run_cli([*args, f"trainer.fused_kernels={flag}"], cwd=tmp_path / flag)
        metrics[flag] = json.loads((find_run_dir(tmp_path / flag) / "metrics.json").read_text())
    for task, m in metrics["true"]["test"].items():
        ref = metrics["false"]["test"][task]
        assert ref["auc"] > 0.55  # it learned
        assert ref["auc"] == pytest.approx(m["auc"], abs=0.01), task
        assert ref["logloss"] == pytest.approx(m["logloss"], rel=0.02), task

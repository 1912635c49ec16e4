"""mtl_train.kernels.sparse_adam: RowSparseAdam against its reference and dense Adam."""
import pytest
import torch
import torch.nn as nn

from mtl_train import kernels
from mtl_train.kernels.sparse_adam import RowSparseAdam
from mtl_train.models.embedding import lookup

pytestmark = pytest.mark.usefixtures("fused_on")  # conftest.fused_on


@pytest.mark.parametrize("fused", [True, False], ids=["fused_kernel", "op_by_op"])
def test_sparse_lookup_gradient_equals_dense_and_row_sparse_adam_equals_adam_on_touched_rows(fused, monkeypatch):
    if not fused:  # the formula RowSparseAdam falls back to (CUDA, or a torch without the kernel)
        monkeypatch.setattr(torch, "_fused_adam_", None, raising=False)
    torch.manual_seed(0)
    dense, sparse = nn.Embedding(6, 3), nn.Embedding(6, 3, sparse=True)
    sparse.weight.data.copy_(dense.weight.data)
    w = torch.randn(4, 5, 3)
    opt_d = torch.optim.Adam(dense.parameters(), lr=0.05)
    opt_s = RowSparseAdam(sparse.parameters(), lr=0.05)
    for step in range(4):
        ids = torch.randint(0, 6, (4, 5))
        ids[0, :] = torch.tensor([0, 1, 2, 3, 4])
        ids[1, 0] = 5  # every row is touched every step: lazy Adam == Adam
        for emb, opt in ((dense, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            (lookup(emb, ids) * w).sum().backward()
        rows = sparse.weight.grad._indices()[0]
        assert sparse.weight.grad.is_sparse and bool((rows[1:] > rows[:-1]).all())  # unique, sorted
        torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad)
        opt_d.step()
        opt_s.step()
        torch.testing.assert_close(sparse.weight.data, dense.weight.data, rtol=1e-6, atol=1e-7)
    # a row absent from the batch keeps its weight (lazy)
    before = sparse.weight.data.clone()
    opt_s.zero_grad()
    lookup(sparse, torch.tensor([[0, 1]])).sum().backward()
    opt_s.step()
    assert torch.equal(sparse.weight.data[2:], before[2:]) and not torch.equal(sparse.weight.data[:2], before[:2])


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

"""mtl_train.kernels.sparse: the sparse lookup against its reference."""
import pytest
import torch

from mtl_train.kernels.sparse import sparse_lookup, sparse_lookup_reference

pytestmark = pytest.mark.usefixtures("fused_on")  # conftest.fused_on


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

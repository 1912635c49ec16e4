"""The kernels switch (trainer.fused_kernels): off runs plain torch ops."""
import pytest
import torch

from mtl_train import kernels
from mtl_train.kernels.sparse import sparse_lookup
from mtl_train.models.layers import BatchedExperts, mix_experts

pytestmark = pytest.mark.usefixtures("fused_on")  # conftest.fused_on


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

"""mtl_train.models.layers: batched experts and gate mix equal a loop; last-layer recording."""
import pytest
import torch
from helpers import _loop_experts

from mtl_train.models.layers import BatchedExperts, Gate

pytestmark = pytest.mark.usefixtures("fused_on")  # conftest.fused_on


def test_batched_experts_and_gate_mix_equal_a_loop_over_experts():
    torch.manual_seed(0)
    ex = BatchedExperts(3, 5, [4, 2])
    x = torch.randn(7, 5)
    y = ex(x)
    torch.testing.assert_close(y, _loop_experts(ex, x))
    gate = Gate(5, 3)
    g = torch.softmax(gate.linear(x), -1)
    torch.testing.assert_close(gate.mix(x, y), sum(g[:, e:e + 1] * y[e] for e in range(3)))


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


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


def test_batched_experts_equal_loop_of_mlps():
    torch.manual_seed(1)
    ex = BatchedExperts(3, 5, [4, 2])
    x = torch.randn(6, 5)
    y = ex(x)
    for e in range(3):
        h = torch.relu(x @ ex.weights[0][e] + ex.biases[0][e])
        h = torch.relu(h @ ex.weights[1][e] + ex.biases[1][e])
        assert torch.allclose(y[e], h, atol=1e-6)
    # per-expert inputs give the same result when every expert reads x
    assert torch.allclose(ex(x.expand(3, 6, 5)), y, atol=1e-6)

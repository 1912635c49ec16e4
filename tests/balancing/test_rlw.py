"""loss=rlw (random loss weighting, Lin et al., TMLR 2022) on known values and through a checkpoint."""
import io
import math

import torch
from conftest import REPO
from omegaconf import OmegaConf

from mtl_train import registry
from mtl_train.balancing.base import build_balancer
from mtl_train.config import validate_group

# torch.randn(3, generator=torch.Generator().manual_seed(0)), the first two draws
Z1 = [1.5409960746765137, -0.293428897857666, -2.1787893772125244]


Z2 = [0.5684312582015991, -1.0845223665237427, -1.3985954523086548]


def by_hand(z, scale):
    e = [math.exp(v) for v in z]
    return [scale * v / sum(e) for v in e]


def step(bal, counts=(5, 5, 5)):
    """One backward of L_i = h_i (one scalar parameter per task): h_i's gradient is w_i."""
    h = torch.zeros(len(counts), requires_grad=True)
    bal.backward(h * 1.0, torch.tensor(counts), None, {})
    return h.grad


def rlw(seed=0):
    return build_balancer(validate_group("loss", OmegaConf.create({"name": "rlw", "seed": seed})), ["a", "b", "c"], None)


def test_weights_are_t_times_softmax_of_standard_normal_samples():
    bal = rlw()
    assert bal.weights().tolist() == [1.0, 1.0, 1.0]  # before the first step
    for z in (Z1, Z2):
        grad = step(bal)
        expected = by_hand(z, 3.0)  # e.g. step 1: [2.5408, 0.4055, 0.0537]
        assert torch.allclose(bal.weights(), torch.tensor(expected), atol=1e-6)
        assert torch.allclose(grad, torch.tensor(expected), atol=1e-6)
        assert abs(float(bal.weights().sum()) - 3.0) < 1e-6
    assert not torch.equal(rlw(seed=1).draw(torch.ones(3, dtype=torch.bool)), torch.tensor(by_hand(Z1, 3.0)))


def test_a_task_without_rows_keeps_its_weight_and_the_others_share_the_rest():
    bal = rlw()
    step(bal)
    w1 = by_hand(Z1, 3.0)
    grad = step(bal, counts=(5, 0, 5))
    rest = by_hand([Z2[0], Z2[2]], 3.0 - w1[1])
    assert torch.allclose(bal.weights(), torch.tensor([rest[0], w1[1], rest[1]]), atol=1e-6)
    assert float(grad[1]) == 0.0
    step(bal, counts=(0, 0, 0))  # no task: nothing changes, zero gradients
    assert torch.allclose(bal.weights(), torch.tensor([rest[0], w1[1], rest[1]]), atol=1e-6)


def test_a_resumed_run_draws_the_same_weights():
    bal = rlw()
    step(bal)
    buf = io.BytesIO()
    torch.save(bal.state_dict(), buf)
    buf.seek(0)
    resumed = rlw()
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert torch.equal(resumed.weights(), bal.weights())
    for _ in range(3):
        step(bal)
        step(resumed)
        assert torch.equal(resumed.weights(), bal.weights())
    assert torch.allclose(rlw().draw(torch.ones(3, dtype=torch.bool)), torch.tensor(by_hand(Z1, 3.0)), atol=1e-6)


def test_rlw_is_registered_as_a_loss_weighting_method():
    entry = registry.get("loss", "rlw")
    assert entry.target.needs_task_gradients is False  # sparse embedding gradients stay allowed
    assert OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "loss" / "rlw.yaml")) == registry.defaults(entry.config)

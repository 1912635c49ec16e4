import math

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from mtl_train.balancing.gradnorm import GradNorm
from mtl_train.data.schema import FeatureSchema, Task


class Toy(nn.Module):
    """Shared linear layer W followed by one linear head per task."""

    def __init__(self):
        super().__init__()
        self.schema = FeatureSchema([], [], [Task("small", "a", "regression"), Task("big", "b", "regression")])
        self.shared = nn.Linear(8, 16)
        self.heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(2))

    def last_shared_layer(self):
        return [self.shared.weight]

    def forward(self, x):
        h = torch.tanh(self.shared(x))
        return {"logits": torch.cat([hd(h) for hd in self.heads], 1), "shared": h}


def cfg(**over):
    base = dict(name="gradnorm", alpha=1.5, lr=0.025, target="last_shared_layer", initial_loss="first_step",
                min_weight=1e-3)
    base.update(over)
    return OmegaConf.create(base)


def toy_losses(model, x, y, scale):
    out = model(x)
    return ((out["logits"] - y) ** 2).mean(0) * scale, out


@pytest.mark.parametrize("target", ["last_shared_layer", "shared_representation"])
def test_gradnorm_weights_positive_sum_to_T_and_favour_the_small_task(target):
    torch.manual_seed(0)
    model = Toy()
    bal = GradNorm(["small", "big"], cfg(target=target), model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(256, 8)
    y = torch.stack([torch.sin(x[:, 0]), torch.cos(x[:, 1])], 1)
    scale = torch.tensor([1.0, 100.0])
    history = []
    for _ in range(100):
        losses, out = toy_losses(model, x, y, scale)
        opt.zero_grad()
        bal.backward(losses, torch.tensor([256, 256]), model, out)
        opt.step()
        w = bal.weights()
        history.append(w)
        assert (w > 0).all()
        assert float(w.sum()) == pytest.approx(2.0, abs=1e-5)
    # the task whose gradient is 100x smaller gets the larger weight
    assert history[-1][0] > 1.5 and history[-1][1] < 0.5
    assert history[-1][0] > history[10][0]


def test_gradnorm_weight_update_matches_hand_computed_step():
    torch.manual_seed(0)
    model = Toy()
    bal = GradNorm(["small", "big"], cfg(lr=0.1), model)
    x, y = torch.randn(32, 8), torch.randn(32, 2)
    losses, out = toy_losses(model, x, y, torch.tensor([1.0, 3.0]))
    norms = torch.stack([torch.autograd.grad(losses[i], model.shared.weight, retain_graph=True)[0].norm() for i in range(2)])
    bal.backward(losses, torch.tensor([32, 32]), model, out)
    # first step: L(0) = L so r = 1, target = mean(G); Adam's first step moves each weight by lr * sign(grad)
    G = norms  # w = 1
    sign = torch.sign(G - G.mean())
    w = 1 - 0.1 * sign
    w = w * 2 / w.sum()
    assert torch.allclose(bal.weights(), w, atol=1e-5)


def test_task_without_rows_is_left_out():
    torch.manual_seed(0)
    model = Toy()
    bal = GradNorm(["small", "big"], cfg(), model)
    x, y = torch.randn(16, 8), torch.randn(16, 2)
    losses, out = toy_losses(model, x, y, torch.tensor([1.0, 1.0]))
    losses = torch.stack([losses[0], losses[1] * 0])  # task "big" has no valid row
    bal.backward(losses, torch.tensor([16, 0]), model, out)
    w = bal.weights()
    assert torch.isfinite(w).all()
    assert float(w[1]) == 1.0 and float(w.sum()) == pytest.approx(2.0)
    assert math.isnan(float(bal.initial[1]))


def test_log2_initial_loss_for_binary_tasks():
    model = Toy()
    model.schema = FeatureSchema([], [], [Task("a", "a"), Task("b", "b", "regression")])
    bal = GradNorm(["a", "b"], cfg(initial_loss="log2"), model)
    assert float(bal.initial[0]) == pytest.approx(math.log(2))
    assert math.isnan(float(bal.initial[1]))


def test_gradnorm_refuses_a_model_without_shared_layer():
    from mtl_train.errors import ConfigError

    class NoShare(Toy):
        def last_shared_layer(self):
            return []

    with pytest.raises(ConfigError, match="shares no layer"):
        GradNorm(["small", "big"], cfg(), NoShare())

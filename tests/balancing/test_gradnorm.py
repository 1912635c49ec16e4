"""loss=gradnorm (Chen et al., ICML 2018): weights, hand-computed steps, the paper toy problem, fast path."""
import math

import pytest
import torch
import torch.nn as nn
from helpers import batches, loss_cfg, reference_grads, small_model
from omegaconf import OmegaConf

from mtl_train.balancing.base import build_balancer
from mtl_train.balancing.gradnorm import GradNorm
from mtl_train.data.schema import FeatureSchema, Task
from mtl_train.errors import ConfigError


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

    class NoShare(Toy):
        def last_shared_layer(self):
            return []

    with pytest.raises(ConfigError, match="shares no layer"):
        GradNorm(["small", "big"], cfg(), NoShare())


class Toy3(nn.Module):
    """Shared linear layer W (4 -> 6) followed by one linear head per task, three tasks."""

    def __init__(self):
        super().__init__()
        self.schema = FeatureSchema([], [], [Task(n, n, "regression") for n in ("a", "b", "c")])
        self.shared = nn.Linear(4, 6)
        self.heads = nn.ModuleList(nn.Linear(6, 1) for _ in range(3))

    def last_shared_layer(self):
        return [self.shared.weight]

    def forward(self, x):
        h = torch.tanh(self.shared(x))
        return {"logits": torch.cat([hd(h) for hd in self.heads], 1), "shared": h}


@pytest.mark.parametrize("target,min_weight", [("last_shared_layer", 1e-3), ("shared_representation", 1e-3),
                                               ("last_shared_layer", 0.5)])
def test_gradnorm_multi_step_matches_independent_computation(target, min_weight):
    clamped = check_gradnorm_steps(target, min_weight=min_weight)
    if min_weight == 0.5:
        assert clamped > 0  # the clamp (before the renormalisation, as the code does) was exercised


def check_gradnorm_steps(target, alpha=2.0, decay=(0.5, 0.7, 0.9), steps=8, lr=0.1, min_weight=1e-3):
    """``steps`` GradNorm steps with r_i != 1, each checked against Algorithm 1 of Chen et al.
    (ICML 2018) recomputed here with plain autograd: G_i = ||grad_W (w_i L_i)|| (w in the graph),
    r_i = L~_i / mean_j L~_j with L~_i = L_i / L_i(first step), target_i = mean(G) * r_i^alpha
    held constant, L_grad = sum_i |G_i - target_i|, one Adam step of w (loss.lr, torch's
    default betas/eps, written out by hand), then the code's documented choices: clamp at
    loss.min_weight, then renormalise to sum T. The model steps with the gradient of
    sum_i w_i L_i at this step's (pre-update) weights.

    The tasks' losses fall at different rates (task i's loss is multiplied by decay_i^(t-1) at
    step t, on top of the SGD training), so r_i and mean_j L~_j move far from 1. Adam moves
    each weight by about lr * sign(G_i - target_i), so a bug is seen only once it flips a sign:
    with these settings, dropping the normalisation of r is caught from step 2-4, alpha
    ignored (r_i^1) from step 2-3 and a missing renormalisation to T from step 1 (checked by
    hand by planting each in gradnorm.py)."""
    torch.manual_seed(0)
    T = 3
    model = Toy3()
    bal = GradNorm(["a", "b", "c"], cfg(alpha=alpha, lr=lr, min_weight=min_weight, target=target), model)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 4)
    y = torch.stack([torch.sin(x[:, 0]), x[:, 1] * x[:, 2], torch.cos(x[:, 3])], 1)
    # per-step loss scales: task a's loss falls fast, c's slowly
    decay = torch.tensor(decay)
    # the reference's state: weights, L_i(0), Adam moments
    w_ref = torch.ones(T)
    L0 = None
    m, v = torch.zeros(T), torch.zeros(T)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    r_seen, clamped = [], 0
    for step in range(1, steps + 1):
        out = model(x)
        losses = ((out["logits"] - y) ** 2).mean(0) * decay.pow(step - 1) * torch.tensor([1.0, 4.0, 0.5])
        # --- reference (before the balancer consumes the graph) ---
        W = model.shared.weight if target == "last_shared_layer" else out["shared"]
        wv = w_ref.clone().requires_grad_(True)
        G = torch.stack([torch.autograd.grad(wv[i] * losses[i], W, retain_graph=True, create_graph=True)[0].norm()
                         for i in range(T)])
        Ld = losses.detach()
        if L0 is None:
            L0 = Ld.clone()
        Lt = Ld / L0
        r = Lt / Lt.mean()
        tgt = (G.mean() * r.pow(alpha)).detach()
        # the test is only meaningful away from ties (sign(G_i - target_i) decides Adam's step)
        assert ((G - tgt).abs() / tgt > 1e-3).all()
        L_grad = (G - tgt).abs().sum()
        (g,) = torch.autograd.grad(L_grad, wv)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        new = w_ref - lr * (m / (1 - beta1 ** step)) / ((v / (1 - beta2 ** step)).sqrt() + eps)
        clamped += int((new < min_weight).sum())
        new = new.clamp(min=min_weight)
        new = new * T / new.sum()
        # the model's gradient: sum_i w_i L_i with this step's weights
        expect_grads = torch.autograd.grad((w_ref * losses).sum(), list(model.parameters()), retain_graph=True)
        r_seen.append(r)
        # --- the code under test ---
        sgd.zero_grad()
        bal.backward(losses, torch.tensor([64, 64, 64]), model, out)
        for p, e in zip(model.parameters(), expect_grads):
            assert torch.allclose(p.grad, e, atol=1e-5, rtol=1e-4)
        sgd.step()
        w_ref = new
        assert torch.allclose(bal.weights(), w_ref, atol=1e-5), (step, bal.weights(), w_ref)
        assert float(bal.weights().sum()) == pytest.approx(T, abs=1e-5)
    # the check covered steps whose r is far from 1 and whose mean L~ is far from 1
    assert (r_seen[-1] - 1).abs().max() > 0.3
    assert abs(float(Lt.mean()) - 1) > 0.3
    return clamped


class ToyNet(nn.Module):
    """4 shared ReLU layers and one linear head per task (the paper's toy network, smaller)."""

    def __init__(self, d_in, d_out, hidden, tasks):
        super().__init__()
        layers, d = [], d_in
        for _ in range(4):
            layers += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(hidden, d_out) for _ in range(tasks))
        self.schema = None

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def last_shared_layer(self):
        return [self.trunk[6].weight]

    def forward(self, x):
        h = self.trunk(x)
        return {"pred": torch.stack([hd(h) for hd in self.heads], 1), "shared": h}


def toy_run(method, steps=300):
    """Chen et al. (ICML 2018), Section 4: f_i(x) = sigma_i tanh((B + eps_i) x), B ~ N(0, 10),
    eps_i ~ N(0, 3.5) elementwise, sigma = (1, 100), squared-error losses. Smaller than the paper
    (inputs 50, outputs 20, hidden 64, 300 Adam steps of 100 samples) to stay fast."""
    d_in, d_out, sigma = 50, 20, torch.tensor([1.0, 100.0])
    g = torch.Generator().manual_seed(0)
    B = torch.randn(d_out, d_in, generator=g) * math.sqrt(10)
    eps = torch.randn(2, d_out, d_in, generator=g) * math.sqrt(3.5)

    def sample(n, gen):
        x = torch.randn(n, d_in, generator=gen) / math.sqrt(d_in)
        return x, torch.stack([sigma[i] * torch.tanh(x @ (B + eps[i]).T) for i in range(2)], 1)

    def losses(net, x, y):
        out = net(x)
        return ((out["pred"] - y) ** 2).mean((0, 2)), out

    xt, yt = sample(2000, torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    net = ToyNet(d_in, d_out, 64, 2)
    cfg = loss_cfg(method, **({"alpha": 0.12} if method == "gradnorm" else {}))
    bal = build_balancer(cfg, ["small", "big"], net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with torch.no_grad():
        L0 = losses(net, xt, yt)[0]
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = sample(100, gen)
        l, out = losses(net, x, y)
        opt.zero_grad()
        bal.backward(l, torch.tensor([100, 100]), net, out)
        opt.step()
    with torch.no_grad():
        L = losses(net, xt, yt)[0]
    return float((L / L0).sum()), bal.weights()


def test_gradnorm_on_the_paper_toy_problem_beats_equal_weights():
    torch.set_num_threads(1)
    equal, _ = toy_run("equal")
    gradnorm, w = toy_run("gradnorm")
    assert w[0] > 1.5 and w[1] < 0.5  # the small-sigma task's weight goes up
    assert gradnorm < equal - 0.05  # lower task-normalised test loss sum_i L_i / L_i(0)


@pytest.mark.parametrize("target", ["last_shared_layer", "shared_representation"])
def test_gradnorm_model_gradient_is_that_of_the_weighted_sum(target):
    model = small_model(2)
    bal = build_balancer(loss_cfg("gradnorm", target=target), ["a", "b"], model)
    with torch.no_grad():
        bal.w.copy_(torch.tensor([0.3, 1.7]))
    b = batches(2, 1)[0]
    ref = reference_grads(model, b, torch.tensor([0.3, 1.7]))
    out = model(b)
    losses, counts = model.graph.losses(out, b["labels"])
    bal.backward(losses, counts, model, out)
    for p, r in zip(model.parameters(), ref):
        assert torch.allclose(p.grad, r, atol=1e-6), p.shape


@pytest.mark.parametrize("tasks,weights", [(2, [0.3, 1.7]), (2, [1.99, 0.01]), (3, [0.02, 0.03, 2.95]),
                                           (3, [0.01, 0.02, 0.03])])
def test_gradnorm_fast_path_norms_and_cosines_equal_plain_autograd(tasks, weights):
    # MMoE: W is the experts' last layer, so GradNorm takes the fast path (per-task gradients at the
    # layer's pre-activation, the derived task's gradient from the full backward)
    model = small_model(tasks)
    names = ["a", "b", "r"][:tasks]
    assert build_balancer(loss_cfg("gradnorm_pcgrad"), names, model).experts is None  # no fast path there:
    assert not model.backbone.experts.record_last  # the experts keep their fused forward
    bal = build_balancer(loss_cfg("gradnorm"), names, model)
    assert bal.experts is not None and bal.experts.record_last
    w = torch.tensor(weights)
    with torch.no_grad():
        bal.w.copy_(w)
    b = batches(tasks, 1)[0]
    out = model(b)
    losses, counts = model.graph.losses(out, b["labels"])
    W = model.last_shared_layer()[0]
    g = [torch.autograd.grad(losses[i], [W], retain_graph=True)[0] for i in range(tasks)]
    ref = torch.autograd.grad((losses * w).sum(), list(model.parameters()), retain_graph=True)
    bal.log_due = True
    logs = bal.backward(losses, counts, model, out)
    for i, n in enumerate(names):
        assert logs[f"grad_norm/{n}"] == pytest.approx(float(w[i] * g[i].norm()), rel=1e-4, abs=1e-9)
    cos = float(torch.dot(g[0].flatten(), g[1].flatten()) / (g[0].norm() * g[1].norm()))
    assert logs[f"grad_cos/{names[0]}/{names[1]}"] == pytest.approx(cos, abs=1e-4)
    for p, r in zip(model.parameters(), ref):
        assert torch.allclose(p.grad, r, atol=1e-6), p.shape
    assert bal.experts.last_input is None and bal.experts.last_pre is None

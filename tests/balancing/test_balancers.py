"""Every balancing method on known values, on tasks without rows, and through a checkpoint."""
import io
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from mtl_train import registry
from mtl_train.balancing.base import build_balancer
from mtl_train.balancing.dwa import dwa_weights
from mtl_train.balancing.gradients import cagrad_coefficients, min_norm_weights, pcgrad_coefficients
from mtl_train.data.schema import DenseFeature, FeatureSchema, SparseFeature, Task
from mtl_train.errors import ConfigError
from mtl_train.models.builder import build_model

GRADIENT_METHODS = ["gradnorm", "pcgrad", "cagrad", "mgda", "gradnorm_pcgrad"]


def loss_cfg(name, **over):
    """The typed default config of ``loss=name`` with overrides."""
    cfg = OmegaConf.structured(registry.get("loss", name).config)
    return OmegaConf.merge(cfg, over)


class Linear(nn.Module):
    """L_i = <g_i, z> + c_i h_i with z = theta (shared, also the shared representation) and h_i
    task i's own parameter: the gradient of L_i is g_i on theta and c_i on h_i."""

    def __init__(self, g, c=None):
        super().__init__()
        g = torch.as_tensor(g, dtype=torch.float32)
        self.register_buffer("g", g)
        self.register_buffer("c", torch.as_tensor(c if c is not None else [1.0] * len(g), dtype=torch.float32))
        self.theta = nn.Parameter(torch.zeros(g.shape[1]))
        self.h = nn.ParameterList(nn.Parameter(torch.zeros(())) for _ in range(len(g)))
        self.schema = None

    def shared_parameters(self):
        return [self.theta]

    def last_shared_layer(self):
        return [self.theta]

    def step(self):
        z = self.theta * 1.0
        losses = self.g @ z + self.c * torch.stack(list(self.h))
        return losses, {"shared": z}


def run_once(name, g, counts=None, own=None, **over):
    model = Linear(g, own)
    bal = build_balancer(loss_cfg(name, **over), [f"t{i}" for i in range(len(g))], model)
    losses, out = model.step()
    counts = torch.as_tensor(counts if counts is not None else [1] * len(g))
    logs = bal.backward(losses, counts, model, out)
    return model, bal, logs


# ---- PCGrad -------------------------------------------------------------------------------------
def test_pcgrad_two_conflicting_gradients_match_the_formula():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    model, bal, logs = run_once("pcgrad", [g1.tolist(), g2.tolist()], own=[2.0, 3.0])
    # g1' = g1 - <g1,g2>/|g2|^2 g2 = (0.5, 0.5);  g2' = g2 - <g2,g1>/|g1|^2 g1 = (0, 1)
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    assert torch.allclose(p1, torch.tensor([0.5, 0.5])) and torch.allclose(p2, torch.tensor([0.0, 1.0]))
    assert torch.allclose(model.theta.grad, p1 + p2)
    # task-specific parameters keep their own gradient
    assert [float(h.grad) for h in model.h] == [2.0, 3.0]
    assert logs["grad_cos/t0/t1"] == pytest.approx(-1 / math.sqrt(2), abs=1e-6)
    assert torch.allclose(bal.weights(), torch.tensor([2.0, 1.5]))  # theta.grad = (g1 + 0.5 g2) + (g2 + g1)


def test_pcgrad_leaves_agreeing_gradients_and_mean_reduction():
    model, _, _ = run_once("pcgrad", [[1.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(model.theta.grad, torch.tensor([2.0, 1.0]))  # no conflict: the plain sum
    model, _, _ = run_once("pcgrad", [[1.0, 0.0], [-1.0, 1.0]], reduction="mean")
    assert torch.allclose(model.theta.grad, torch.tensor([0.25, 0.75]))


def test_pcgrad_three_tasks_follow_the_random_order():
    # g0 conflicts with g1 and g2; the order in which g0 is projected changes the result
    K = np.array([[1.0, -0.5, -0.5], [-0.5, 1.0, 0.2], [-0.5, 0.2, 1.0]])
    gen = torch.Generator().manual_seed(3)
    C = pcgrad_coefficients(K, gen)
    for i in range(3):  # every projected gradient no longer conflicts with the last task it was projected on
        assert C[i, i] == 1.0
    # replay: the same generator state gives the same coefficients
    gen2 = torch.Generator().manual_seed(3)
    assert np.allclose(pcgrad_coefficients(K, gen2), C)
    # hand check of row 0 for both orders
    a = np.array([1.0, 0.5, 0.0])  # project on g1 first: <g0,g1> = -0.5 -> +0.5 g1
    a = a + np.array([0.0, 0.0, -(a @ K[:, 2]) / K[2, 2]]) if a @ K[:, 2] < 0 else a
    b = np.array([1.0, 0.0, 0.5])
    b = b + np.array([0.0, -(b @ K[:, 1]) / K[1, 1], 0.0]) if b @ K[:, 1] < 0 else b
    assert np.allclose(C[0], a) or np.allclose(C[0], b)


# ---- MGDA ---------------------------------------------------------------------------------------
def test_mgda_two_gradients_give_the_min_norm_point():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    model, bal, _ = run_once("mgda", [g1.tolist(), g2.tolist()], normalization="none")
    # min over gamma of |gamma g1 + (1-gamma) g2|^2 = gamma^2 + 4 (1-gamma)^2 -> gamma = 0.8
    assert torch.allclose(bal.weights(), torch.tensor([0.8, 0.2]))
    assert torch.allclose(model.theta.grad, torch.tensor([0.8, 0.4]))
    assert [float(h.grad) for h in model.h] == pytest.approx([0.8, 0.2])
    # with l2 normalisation the unit gradients are balanced equally
    _, bal, _ = run_once("mgda", [g1.tolist(), g2.tolist()], normalization="l2")
    assert torch.allclose(bal.weights(), torch.tensor([0.5, 0.5]))


def test_min_norm_frank_wolfe_matches_a_grid_search():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(3, 5))
    K = G @ G.T
    a = min_norm_weights(K)
    best = min(((x, y, 1 - x - y) for x in np.linspace(0, 1, 201) for y in np.linspace(0, 1, 201) if x + y <= 1),
               key=lambda w: np.asarray(w) @ K @ np.asarray(w))
    assert a.sum() == pytest.approx(1.0) and (a >= 0).all()
    assert a @ K @ a <= np.asarray(best) @ K @ np.asarray(best) + 1e-12
    # optimality on the simplex: (K a)_j >= a^T K a for every j, with equality where a_j > 0
    Ka, v = K @ a, a @ K @ a
    assert (Ka >= v - 1e-9).all() and np.allclose(Ka[a > 1e-9], v, atol=1e-9)


# ---- CAGrad -------------------------------------------------------------------------------------
def test_cagrad_with_c_zero_is_the_mean_gradient():
    g = [[1.0, 0.0, 2.0], [-3.0, 1.0, 0.5]]
    model, _, _ = run_once("cagrad", g, own=[4.0, 5.0], c=0.0)
    assert torch.allclose(model.theta.grad, torch.tensor(g).mean(0))
    assert [float(h.grad) for h in model.h] == [4.0, 5.0]


def test_cagrad_solves_its_dual_problem():
    K = np.array([[1.0, -0.6], [-0.6, 4.0]])
    c = 0.4
    a, w = cagrad_coefficients(K, c, rescale=0)
    g0n = math.sqrt(K.mean())
    f = lambda x: x @ K @ np.array([0.5, 0.5]) + c * g0n * math.sqrt(x @ K @ x)  # noqa: E731
    grid = min((np.array([t, 1 - t]) for t in np.linspace(0, 1, 10001)), key=f)
    assert f(w) == pytest.approx(f(grid), abs=1e-7)
    gw = math.sqrt(w @ K @ w)
    assert np.allclose(a, 0.5 + c * g0n / gw * w, atol=1e-6)
    a1, _ = cagrad_coefficients(K, c, rescale=1)
    assert np.allclose(a1, a / (1 + c * c))


# ---- DWA ----------------------------------------------------------------------------------------
def test_dwa_weights_from_a_loss_history():
    w = dwa_weights(torch.tensor([0.5, 0.9]), torch.tensor([1.0, 1.0]), 2.0)
    e1, e2 = math.exp(0.5 / 2), math.exp(0.9 / 2)
    assert w.tolist() == pytest.approx([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], abs=1e-6)
    # undefined ratio (no rows in a window) counts as 1
    w = dwa_weights(torch.tensor([0.5, math.nan]), torch.tensor([1.0, 1.0]), 2.0)
    e1, e2 = math.exp(0.25), math.exp(0.5)
    assert w.tolist() == pytest.approx([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], abs=1e-6)


def test_dwa_windows_of_steps_drive_the_weights():
    bal = build_balancer(loss_cfg("dwa", window_steps=2), ["a", "b"], None)
    history = [[1.0, 2.0], [3.0, 2.0], [1.0, 1.5], [1.0, 0.5]]  # windows: means (2, 2) then (1, 1)
    for k, l in enumerate(history):
        losses = torch.tensor(l, requires_grad=True)
        bal.backward(losses, torch.tensor([4, 4]), None, {})
        if k < 3:  # first two windows: weights 1 (the paper's w(1) = w(2) = 1)
            assert bal.weights().tolist() == [1.0, 1.0]
        assert losses.grad.tolist() == [1.0, 1.0]
    expect = dwa_weights(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]), 2)
    assert bal.weights().tolist() == pytest.approx(expect.tolist())
    # a step where "b" has no row does not enter b's window mean
    bal = build_balancer(loss_cfg("dwa", window_steps=2), ["a", "b"], None)
    for l, n in [([1.0, 2.0], [4, 4]), ([1.0, 50.0], [4, 0]), ([2.0, 1.0], [4, 4]), ([2.0, 1.0], [4, 4])]:
        bal.backward(torch.tensor(l, requires_grad=True), torch.tensor(n), None, {})
    expected = dwa_weights(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 2.0]), 2.0)
    assert bal.weights().tolist() == pytest.approx(expected.tolist())


# ---- uncertainty --------------------------------------------------------------------------------
@pytest.mark.parametrize("form,c", [("classification", 1.0), ("regression", 0.5)])
def test_uncertainty_weight_gradient(form, c):
    bal = build_balancer(loss_cfg("uncertainty", form=form, lr=0.1, init_log_var=0.3), ["a", "b"], None)
    losses = torch.tensor([0.7, 2.0], requires_grad=True)
    bal.backward(losses, torch.tensor([5, 5]), None, {})
    s = 0.3
    # d/ds [c exp(-s) L + s/2] = -c exp(-s) L + 1/2 ; d/dL = c exp(-s)
    assert bal.log_var.grad.tolist() == pytest.approx([-c * math.exp(-s) * 0.7 + 0.5, -c * math.exp(-s) * 2.0 + 0.5])
    assert losses.grad.tolist() == pytest.approx([c * math.exp(-s)] * 2)
    # Adam's first step moves each log variance by lr against the sign of its gradient
    sign = np.sign([-c * math.exp(-s) * 0.7 + 0.5, -c * math.exp(-s) * 2.0 + 0.5])
    assert bal.log_var.detach().tolist() == pytest.approx((s - 0.1 * sign).tolist(), abs=1e-6)
    assert bal.weights().tolist() == pytest.approx((c * np.exp(-(s - 0.1 * sign))).tolist(), abs=1e-6)


def test_uncertainty_auto_form_follows_the_task_type():
    model = Linear([[1.0], [1.0]])
    model.schema = FeatureSchema([], [], [Task("t0", "a"), Task("t1", "b", "regression")])
    bal = build_balancer(loss_cfg("uncertainty"), ["t0", "t1"], model)
    assert bal.kinds == ["classification", "regression"]
    assert bal.weights().tolist() == [1.0, 0.5]


def test_static_weights_and_their_errors():
    model, bal, _ = run_once("static", [[1.0], [1.0]], own=[1.0, 1.0], weights={"t1": 3.0})
    assert [float(h.grad) for h in model.h] == [1.0, 3.0]
    with pytest.raises(ConfigError, match="loss.weights.nope"):
        build_balancer(loss_cfg("static", weights={"nope": 1.0}), ["t0"], None)
    with pytest.raises(ConfigError, match="loss.weights.t0"):
        build_balancer(loss_cfg("static", weights={"t0": -1.0}), ["t0"], None)


# ---- GradNorm on the paper's toy problem ---------------------------------------------------------
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


# ---- every method on a real model: efficiency tricks are exact, empty tasks, checkpoints -------------
def small_model(tasks=3, backbone="mmoe", sparse=False):
    schema = FeatureSchema([SparseFeature("u", 20), SparseFeature("i", 30)], [DenseFeature("d")],
                           [Task("a", "a"), Task("b", "b", parent="a"), Task("r", "r", "regression")][:tasks])
    mcfg = OmegaConf.create({"name": backbone, "backbone": backbone, "embedding_dim": 4, "sparse_embedding": sparse,
                             "num_experts": 3, "expert_hidden": [8, 6], "hidden": [8, 6], "activation": "relu",
                             "dropout": 0.0})
    gcfg = OmegaConf.create({"name": "independent", "tower_hidden": [5], "activation": "relu", "dropout": 0.0,
                             "parent_positive_only": False})
    return build_model(schema, mcfg, gcfg)


def batches(tasks=3, n=6, rows=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        labels = torch.stack([(torch.rand(rows, generator=g) < 0.4).float(), (torch.rand(rows, generator=g) < 0.2).float(),
                              torch.randn(rows, generator=g)], 1)[:, :tasks]
        out.append({"sparse": torch.stack([torch.randint(0, 20, (rows,), generator=g),
                                           torch.randint(0, 30, (rows,), generator=g)], 1),
                    "dense": torch.randn(rows, 1, generator=g), "labels": labels})
    return out


def step(model, bal, opt, batch):
    out = model(batch)
    losses, counts = model.graph.losses(out, batch["labels"])
    opt.zero_grad(set_to_none=True)
    logs = bal.backward(losses, counts, model, out)
    opt.step()
    return logs


def reference_grads(model, batch, coef):
    """Gradient of sum_i coef_i L_i on every parameter, by plain autograd."""
    out = model(batch)
    losses, _ = model.graph.losses(out, batch["labels"])
    params = list(model.parameters())
    return torch.autograd.grad((losses * coef).sum(), params, allow_unused=True)


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


@pytest.mark.parametrize("name", ["pcgrad", "gradnorm_pcgrad"])
def test_surgery_without_conflict_gives_the_plain_gradient(name):
    # a single valid task: nothing to project, every parameter gets that task's (weighted) gradient
    model = small_model(2)
    bal = build_balancer(loss_cfg(name), ["a", "b"], model)
    b = batches(2, 1)[0]
    b["labels"][:, 1] = float("nan")
    ref = reference_grads(model, b, torch.tensor([1.0, 0.0]))
    out = model(b)
    losses, counts = model.graph.losses(out, b["labels"])
    bal.backward(losses, counts, model, out)
    for p, r in zip(model.parameters(), ref):
        if r is None:
            assert p.grad is None or not p.grad.any()
        else:
            assert torch.allclose(p.grad, r, atol=1e-6)


@pytest.mark.parametrize("name", sorted(registry.options("loss")))
def test_a_task_without_rows_is_left_out(name):
    model = small_model(3)
    bal = build_balancer(loss_cfg(name, **({"window_steps": 2} if name == "dwa" else {})), ["a", "b", "r"], model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for k, b in enumerate(batches(3, 5)):
        before = bal.weights().clone()
        if k in (1, 3):
            b["labels"][:, 1] = float("nan")  # task b has no valid row
        if k == 4:
            b["labels"][:] = float("nan")  # no task has a valid row
        out = model(b)
        losses, counts = model.graph.losses(out, b["labels"])
        opt.zero_grad(set_to_none=True)
        logs = bal.backward(losses, counts, model, out)
        for p in model.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        assert torch.isfinite(bal.weights()).all()
        assert all(math.isfinite(v) for v in logs.values())
        if k in (1, 3) and name != "dwa":  # DWA's weights change only at window ends, from history
            assert float(bal.weights()[1]) == float(before[1])
        if k in (1, 3):
            tower_b = model.graph.towers[1]
            assert all(p.grad is None or not p.grad.any() for p in tower_b.parameters())
            assert not any("/b/" in key or key.endswith("/b") for key in logs if key.startswith("grad_cos"))
        if k == 4:
            assert torch.equal(bal.weights(), before)
        opt.step()


@pytest.mark.parametrize("name", sorted(registry.options("loss")))
def test_state_round_trip_gives_identical_weights(name):
    over = {"window_steps": 2} if name == "dwa" else {}
    bs = batches(3, 8, seed=1)

    def fresh():
        torch.manual_seed(0)
        model = small_model(3)
        bal = build_balancer(loss_cfg(name, **over), ["a", "b", "r"], model)
        return model, bal, torch.optim.Adam(model.parameters(), lr=1e-2)

    model, bal, opt = fresh()
    for b in bs[:3]:
        step(model, bal, opt, b)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "balancer": bal.state_dict()}, buf)
    trail = []
    for b in bs[3:]:
        step(model, bal, opt, b)
        trail.append(bal.weights().clone())
    model2, bal2, opt2 = fresh()
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    bal2.load_state_dict(state["balancer"])
    for b, w in zip(bs[3:], trail):
        step(model2, bal2, opt2, b)
        assert torch.equal(bal2.weights(), w)
    if name in ("gradnorm", "gradnorm_pcgrad", "uncertainty", "dwa"):
        assert not torch.equal(trail[-1], torch.ones(3))  # the weights did move


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_gradient_methods_log_cosines_only_when_due(name):
    model = small_model(2)
    bal = build_balancer(loss_cfg(name), ["a", "b"], model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    b = batches(2, 1)[0]
    logs = step(model, bal, opt, b)
    assert -1.0 <= logs["grad_cos/a/b"] <= 1.0
    bal.log_due = False
    assert step(model, bal, opt, b) == {}


@pytest.mark.parametrize("name", ["pcgrad", "cagrad", "gradnorm_pcgrad"])
def test_surgery_with_a_sparse_embedding(name):
    model = small_model(2, sparse=True)
    dense = small_model(2)
    dense.load_state_dict(model.state_dict())
    b = batches(2, 1)[0]
    grads = []
    for m in (model, dense):
        bal = build_balancer(loss_cfg(name), ["a", "b"], m)
        out = m(b)
        losses, counts = m.graph.losses(out, b["labels"])
        bal.backward(losses, counts, m, out)
        grads.append([p.grad.to_dense() if p.grad is not None and p.grad.is_sparse else p.grad for p in m.parameters()])
    assert model.embeddings[0].table.weight.grad.is_sparse
    for a, c in zip(*grads):
        assert (a is None and c is None) or torch.allclose(a, c, atol=1e-6)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_gradient_methods_refuse_a_model_without_shared_parameters(name):
    with pytest.raises(ConfigError, match=f"loss={name}"):
        build_balancer(loss_cfg(name), ["a", "b"], small_model(2, backbone="single_task"))


# ---- through the CLI: TensorBoard every N steps, balancer state in the checkpoint ---------------------
def test_cli_logs_cosines_and_weights_every_n_steps_and_checkpoints_the_balancer(tmp_path):
    from conftest import find_run_dir, run_cli
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(["loss=gradnorm_pcgrad", "loss.seed=3", "dataset.train_rows=1280", "dataset.val_rows=500",
             "dataset.test_rows=500", "trainer.batch_size=64", "trainer.epochs=1", "trainer.log_every_steps=5",
             "trainer.progress=false", "model.expert_hidden=[16]", "model.num_experts=2"], cwd=tmp_path)
    run = find_run_dir(tmp_path)
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    cos = acc.Scalars("train/grad_cos/click/purchase")
    assert [e.step for e in cos] == [5, 10, 15, 20]
    assert all(-1 <= e.value <= 1 for e in cos)
    w = [e.value for e in acc.Scalars("train/weight/click")]
    assert len(w) == 4 and len(set(w)) > 1
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["balancer"]
    assert set(state) == {"w", "initial", "opt", "generator"}
    assert state["w"].tolist() == pytest.approx([w[-1], 2 - w[-1]], abs=1e-5)
    assert state["opt"]["state"][0]["step"] == 20


def test_cli_static_weights(tmp_path):
    from conftest import find_run_dir, run_cli
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(["loss=static", "loss.weights={purchase: 5.0}", "dataset.train_rows=640", "dataset.val_rows=300",
             "dataset.test_rows=300", "trainer.batch_size=64", "trainer.epochs=1", "trainer.log_every_steps=5",
             "trainer.progress=false", "model.expert_hidden=[16]", "model.num_experts=2"], cwd=tmp_path)
    acc = EventAccumulator(str(find_run_dir(tmp_path) / "tb"))
    acc.Reload()
    assert {e.value for e in acc.Scalars("train/weight/purchase")} == {5.0}
    assert {e.value for e in acc.Scalars("train/weight/click")} == {1.0}


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


def test_gram_of_bfloat16_gradients_is_taken_in_float32():
    # under trainer.precision=bf16 the shared representation's gradient is bfloat16; torch.dot of two
    # bfloat16 vectors returns bfloat16 (8 bits of mantissa), which moved MGDA's weights by ~0.02
    from mtl_train.balancing.gradients import gram

    g = torch.Generator().manual_seed(0)
    base = torch.randn(100_000, generator=g)
    g1 = (base + 0.1 * torch.randn(100_000, generator=g)).bfloat16()
    g2 = (base + 0.13 * torch.randn(100_000, generator=g)).bfloat16()
    K = gram([[g1], [g2]], [0])
    exact = np.array([[float(a.double() @ b.double()) for b in (g1, g2)] for a in (g1, g2)])
    assert np.abs(K - exact).max() / np.abs(exact).max() < 1e-5
    assert np.allclose(min_norm_weights(K), min_norm_weights(exact), atol=1e-4)

"""Every gradient balancing method through the Balancer interface: exactness, tasks without rows, checkpoints."""
import io
import math

import pytest
import torch
from helpers import batches, loss_cfg, reference_grads, small_model

from mtl_train import registry
from mtl_train.balancing.base import build_balancer
from mtl_train.errors import ConfigError

GRADIENT_METHODS = ["gradnorm", "pcgrad", "cagrad", "mgda", "gradnorm_pcgrad"]


def step(model, bal, opt, batch):
    out = model(batch)
    losses, counts = model.graph.losses(out, batch["labels"])
    opt.zero_grad(set_to_none=True)
    logs = bal.backward(losses, counts, model, out)
    opt.step()
    return logs


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

"""Gradient-conflict diagnostics: cosines against autograd on a toy two-task model, training unchanged, reuse."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import TINY, batches, make_cfg, small_model

from mtl_train.train.diagnostics import GradConflict, shared_task_gram


class Toy(nn.Module):
    """Two tasks on one shared ReLU layer: L_k = mean((head_k(relu(W x + b)) - y_k)^2)."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(3, 4)
        self.heads = nn.ModuleList([nn.Linear(4, 1), nn.Linear(4, 1)])

    def shared_parameters(self):
        return list(self.shared.parameters())

    def losses(self, x, y):
        h = torch.relu(self.shared(x))
        return torch.stack([((head(h).squeeze(1) - y[:, k]) ** 2).mean() for k, head in enumerate(self.heads)])


def _reference_cosine(model, x, y):
    """cos(g_0, g_1) and the norms, g_k = d L_k / d(shared parameters) flattened, by plain autograd."""
    flat = []
    for k in range(2):
        grads = torch.autograd.grad(model.losses(x, y)[k], model.shared_parameters())
        flat.append(torch.cat([g.reshape(-1) for g in grads]).double())
    return float(flat[0] @ flat[1] / (flat[0].norm() * flat[1].norm())), [float(f.norm()) for f in flat]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cosines_and_norms_match_autograd_and_touch_nothing(sign):
    torch.manual_seed(0)
    model = Toy()
    x = torch.randn(16, 3)
    y = torch.stack([x[:, 0], sign * x[:, 0] + 0.1 * x[:, 1]], 1)
    ref_cos, ref_norms = _reference_cosine(model, x, y)
    losses = model.losses(x, y)
    rng = torch.get_rng_state()
    K, idx = shared_task_gram(losses, torch.tensor([16, 16]), model)
    assert idx == [0, 1]
    assert all(p.grad is None for p in model.parameters())  # no .grad written
    assert torch.equal(torch.get_rng_state(), rng)  # no random number drawn
    logs = GradConflict(["a", "b"], 1).record(K, idx)
    assert logs["diag/grad_cos/a/b"] == pytest.approx(ref_cos, abs=1e-6)
    assert [logs["diag/grad_norm/a"], logs["diag/grad_norm/b"]] == pytest.approx(ref_norms, rel=1e-6)
    # the graph is kept: the balancer's backward still runs after the measurement
    losses.sum().backward()
    assert model.shared.weight.grad is not None


def test_a_task_without_rows_is_left_out():
    torch.manual_seed(0)
    model = Toy()
    x = torch.randn(8, 3)
    losses = model.losses(x, torch.zeros(8, 2))
    K, idx = shared_task_gram(losses, torch.tensor([8, 0]), model)
    assert idx == [0] and K.shape == (1, 1)
    assert GradConflict(["a", "b"], 1).record(K, idx) == {"diag/grad_norm/a": pytest.approx(math.sqrt(K[0, 0]))}


def test_counters_share_of_negative_cosines_and_checkpoint_round_trip():
    gc = GradConflict(["a", "b", "c"], 10)
    assert [s for s in range(1, 31) if gc.due(s)] == [10, 20, 30]
    assert not GradConflict(["a"], None).due(10)
    K1 = np.array([[1.0, -0.5, 0.0], [-0.5, 1.0, 0.2], [0.0, 0.2, 4.0]])  # cos(a,b) = -0.5, cos(b,c) = 0.1
    K2 = np.array([[4.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # cos(a,b) = 0.5
    logs = gc.record(K1, [0, 1, 2])
    assert logs["diag/grad_cos/a/b"] == pytest.approx(-0.5) and logs["diag/grad_cos/b/c"] == pytest.approx(0.1)
    assert logs["diag/grad_norm/c"] == pytest.approx(2.0)
    again = GradConflict(["a", "b", "c"], 10)
    again.load_state_dict(json.loads(json.dumps(gc.state_dict())))
    again.record(K2, [0, 1, 2])
    s = again.summary()
    assert s["measured_steps"] == 2 and s["every_steps"] == 10
    assert s["negative_share"] == {"a/b": 0.5, "a/c": 0.0, "b/c": 0.0}
    assert s["mean_cos"]["a/b"] == pytest.approx(0.0) and s["mean_norm"]["a"] == pytest.approx(1.5)


@pytest.mark.parametrize("method", ["pcgrad", "gradnorm_pcgrad"])
def test_surgery_balancers_hand_over_the_same_gram_matrix(method):
    from helpers import loss_cfg

    from mtl_train.balancing.base import build_balancer

    torch.manual_seed(0)
    model = small_model(tasks=2)
    b = batches(tasks=2, n=1)[0]
    bal = build_balancer(loss_cfg(method), model.graph.loss_names, model)
    assert bal.provides_shared_gram
    out = model(b)
    losses, counts = model.graph.losses(out, b["labels"])
    K, idx = shared_task_gram(losses, counts, model)
    bal.step(losses, counts, model, out)
    K_bal, idx_bal = bal.shared_gram
    assert idx_bal == idx and np.allclose(K_bal, K, rtol=1e-5, atol=1e-10)


def _tb(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tb"))
    ea.Reload()
    return ea


@pytest.mark.parametrize("loss", ["gradnorm", "pcgrad"])
def test_measuring_every_step_leaves_training_unchanged(tmp_path, loss, monkeypatch):
    from mtl_train.train import trainer as tr

    if loss == "pcgrad":  # the surgery balancer's own gradients are reused: nothing computed twice
        def refuse(*a, **k):
            raise AssertionError("shared_task_gram called for a balancer that provides the Gram matrix")
        monkeypatch.setattr(tr, "shared_task_gram", refuse)
    for d, every in (("on", "1"), ("off", "null")):
        tr.run(make_cfg(*TINY, "dataset.train_rows=640", "model.expert_hidden=[16,8]", f"loss={loss}", "model.dropout=0.2",
                        f"trainer.diagnostics_every_steps={every}"), str(tmp_path / d))
    assert (tmp_path / "on" / "metrics.json").read_bytes() == (tmp_path / "off" / "metrics.json").read_bytes()
    on = torch.load(tmp_path / "on" / "checkpoints" / "last.pt", weights_only=False)
    off = torch.load(tmp_path / "off" / "checkpoints" / "last.pt", weights_only=False)
    assert all(torch.equal(on["model"][k], off["model"][k]) for k in off["model"])
    assert torch.equal(on["rng"]["torch"], off["rng"]["torch"])
    info = json.loads((tmp_path / "on" / "run.json").read_text())["diagnostics"]
    gc = info["grad_conflict"]
    assert gc["measured_steps"] == 10 and set(gc["negative_share"]) == {"click/purchase"}
    assert 0 <= gc["negative_share"]["click/purchase"] <= 1
    assert json.loads((tmp_path / "off" / "run.json").read_text())["diagnostics"]["grad_conflict"] is None
    ea = _tb(tmp_path / "on")
    assert len(ea.Scalars("diag/grad_cos/click/purchase")) == 10 and len(ea.Scalars("diag/grad_norm/click")) == 10
    # the gates of the MMoE at the evaluation (end of the epoch) and of the final evaluation
    assert [g["step"] for g in info["gates"]] == [10] and set(info["gates_final"]) == {"val", "test"}
    assert len(ea.Scalars("diag/gate/click/e0")) == 1


def test_best_pt_on_a_degenerate_evaluation_is_said(tmp_path, caplog, monkeypatch):
    import logging

    from mtl_train.data.datasets import load_dataset
    from mtl_train.train.trainer import Trainer

    cfg = make_cfg(*TINY, "dataset.train_rows=640")
    tr = Trainer(cfg, load_dataset(cfg.dataset, cfg.seed), str(tmp_path))
    metrics = {"click": {"auc": 0.7}, "purchase": {"auc": 0.3, "degenerate": "below_chance"},
               "purchase_given_click": {"auc": 0.5, "degenerate": "constant", "eval_only": True}}
    monkeypatch.setattr(tr, "evaluate", lambda split: metrics)
    with caplog.at_level(logging.WARNING):
        tr.validate()
    assert tr.progress.best_step == 0 and (tmp_path / "checkpoints" / "best.pt").exists()
    said = [r.getMessage() for r in caplog.records if "best.pt" in r.getMessage()]
    assert len(said) == 1 and "purchase: below_chance" in said[0] and "purchase_given_click" not in said[0]
    assert tr._degenerate_monitored(metrics) == ["purchase: below_chance"]
    tr.cfg.trainer.monitor = "auc/click"
    assert tr._degenerate_monitored(metrics) == []
    tr.logger.close()


def test_degenerate_evaluations_are_flagged_in_metrics_and_listed_in_run_json(tmp_path):
    from mtl_train.train import trainer as tr

    # lr 0: the untrained model; zero weights make every score constant (sigmoid of the tower bias)
    cfg = make_cfg(*TINY, "dataset.train_rows=640", "trainer.lr=1e-12", "trainer.diagnostics_every_steps=null")
    data = tr.load_dataset(cfg.dataset, cfg.seed)
    t = tr.Trainer(cfg, data, str(tmp_path))
    with torch.no_grad():
        for name, p in t.model.graph.named_parameters():
            if "weight" in name:
                p.zero_()
    t.fit()
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["val"]["click"]["degenerate"] == "constant" and m["val"]["click"]["auc"] == 0.5
    info = json.loads((tmp_path / "run.json").read_text())["diagnostics"]
    assert {"step": 10, "split": "test", "output": "click", "flag": "constant"} in info["degenerate"]

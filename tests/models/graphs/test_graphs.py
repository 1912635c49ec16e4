"""Task graphs (ESMM, DBMTL, GMSL, AITM, independent) on every backbone."""

import numpy as np
import pytest
import torch
from helpers import funnel_batch, funnel_schema
from helpers import group_cfg as cfg
from omegaconf import OmegaConf

from mtl_train.data.schema import FeatureSchema, SparseFeature, Task
from mtl_train.errors import ConfigError
from mtl_train.models.builder import build_model

BACKBONES = ["single_task", "shared_bottom", "omoe", "mmoe", "cgc", "ple", "esmm"]  # esmm: shared embeddings only


GRAPHS = ["independent", "esmm", "dbmtl", "gmsl", "aitm"]


SMALL = {
    "single_task": {"hidden": [8]}, "shared_bottom": {"hidden": [8]}, "omoe": {"expert_hidden": [8], "num_experts": 2},
    "mmoe": {"expert_hidden": [8], "num_experts": 2}, "cgc": {"expert_hidden": [8]}, "ple": {"expert_hidden": [8]},
    "esmm": {"embedding_dim": 4},
}


SMALL_GRAPH = {"independent": {"tower_hidden": [4]}, "esmm": {"tower_hidden": [4]},
               "dbmtl": {"tower_hidden": [4], "head_hidden": [3]},
               "gmsl": {"tower_hidden": [4], "gru_hidden": 3, "order_weight": 0.5},
               "aitm": {"tower_hidden": [4], "attention_dim": 3}}


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("n", [1, 2])
def test_every_graph_on_every_backbone_trains_one_step(graph, backbone, n):
    torch.manual_seed(0)
    s = funnel_schema(spend=graph not in ("aitm", "gmsl"))  # their order penalties refuse a regression task (tested below)
    m = build_model(s, cfg("model", backbone, **SMALL[backbone]), cfg("graph", graph, **SMALL_GRAPH[graph]))
    b = funnel_batch(n, s)
    out = m(b)
    T = len(s.tasks)
    assert out["logits"].shape == (n, T)
    losses, counts = m.graph.losses(out, b["labels"])
    assert losses.shape == (T,) and counts.shape == (T,) and torch.isfinite(losses).all()
    assert counts[0].item() == n
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = [p.detach().clone() for p in m.parameters()]
    losses.sum().backward()
    opt.step()
    assert any(not torch.equal(p0, p) for p0, p in zip(before, m.parameters()))
    ev = m.graph.eval_outputs(m(b), b)
    assert {"click", "cart", "purchase", "cart_given_click", "purchase_given_cart"} <= set(ev)
    for name, eo in ev.items():
        assert eo.score.shape == (n,) and eo.mask.shape == (n,)
        if eo.type == "binary":
            assert ((eo.score >= 0) & (eo.score <= 1)).all(), name
    # the conditional output is scored only where every ancestor is positive
    anc = (b["labels"][:, 0] == 1) & (b["labels"][:, 1] == 1)
    assert torch.equal(ev["purchase_given_cart"].mask, anc)


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("backbone", ["esmm", "mmoe", "ple", "single_task"])
def test_shared_parameters_hold_every_parameter_several_task_losses_reach(graph, backbone):
    # the gradient-surgery balancers (PCGrad, CAGrad, MGDA) combine per-task gradients on
    # model.shared_parameters() and add every other gradient as is: a parameter that two task
    # losses reach must be in it (ESMM's pCTR tower and, on MMoE, the click gate; AITM/GMSL's
    # earlier output layers under their order penalty); one that a single loss reaches must not,
    # except where sharing is decided for a whole parameter (PLE's last task experts) or the
    # order penalty's relu(p_k - p_(k-1)) happens to be 0 on every row
    torch.manual_seed(0)
    s = funnel_schema()
    over = dict(SMALL_GRAPH[graph], **({"calibrator_weight": 0.6} if graph == "aitm" else {}))
    m = build_model(s, cfg("model", backbone, **SMALL[backbone]), cfg("graph", graph, **over))
    b = funnel_batch(256, s)
    losses, _ = m.graph.losses(m(b), b["labels"])
    params = [p for p in m.parameters() if p.requires_grad]
    reached = [0] * len(params)
    for loss in losses:
        for j, g in enumerate(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)):
            reached[j] += int(g is not None and bool(g.abs().sum() > 0))
    names = {id(p): n for n, p in m.named_parameters()}
    several = {names[id(p)] for p, r in zip(params, reached) if r > 1}
    listed = {names[id(p)] for p in m.shared_parameters()}
    assert len(listed) == len(m.shared_parameters())  # each parameter once
    if backbone == "ple":  # one parameter holds every task's last-level experts, each loss its own slice
        last = f"backbone.task_experts.{m.backbone.num_levels - 1}."
        several = {n for n in several if not n.startswith(last) or graph != "independent"}
    assert several <= listed
    if backbone != "ple" and graph not in ("gmsl", "aitm"):
        assert listed == several
    if graph == "esmm" and backbone == "mmoe":
        assert {"backbone.gates.0.linear.weight", "backbone.gates.1.linear.weight", "graph.towers.0.1.weight"} <= listed
        assert "backbone.gates.2.linear.weight" not in listed and "graph.towers.2.1.weight" not in listed


@pytest.mark.parametrize("graph", ["esmm", "dbmtl", "aitm", "gmsl"])
def test_gradnorm_w_is_the_graphs_last_layer_every_loss_reaches_when_the_backbone_shares_none(graph):
    from mtl_train.balancing.gradnorm import GradNorm

    torch.manual_seed(0)
    s = funnel_schema()
    m = build_model(s, cfg("model", "esmm", **SMALL["esmm"]), cfg("graph", graph, **SMALL_GRAPH[graph]))
    expected = {"esmm": [m.graph.towers[0][-1].weight] if graph == "esmm" else None,
                "dbmtl": [m.graph.heads[0].last_linear().weight] if graph == "dbmtl" else None,
                "aitm": [m.graph.towers[0].last_linear().weight] if graph == "aitm" else None,
                "gmsl": [m.graph.gru.weight_ih_l0] if graph == "gmsl" else None}[graph]
    W = m.last_shared_layer()
    assert [id(p) for p in W] == [id(p) for p in expected]
    assert {id(p) for p in W} <= {id(p) for p in m.shared_parameters()}
    b = funnel_batch(64, s)
    losses, counts = m.graph.losses(m(b), b["labels"])
    norms = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, W, retain_graph=True)]).norm()
                         for loss in losses])
    assert (norms > 0).all()  # every task's loss reaches W
    bal = GradNorm(m.graph.loss_names, OmegaConf.create(dict(name="gradnorm", alpha=1.5, lr=0.1, target="last_shared_layer",
                                                             initial_loss="first_step", min_weight=1e-3)), m)
    bal.backward(losses, counts, m, m(b))
    # first step: r = 1, target = mean(G); Adam moves each weight by lr * sign(G - mean G); renormalised to T
    w = 1 - 0.1 * torch.sign(norms - norms.mean())
    assert torch.allclose(bal.weights(), w * 3 / w.sum(), atol=1e-5)
    # with a backbone that shares a layer, W stays the backbone's (MMoE: the experts' last layer)
    mm = build_model(s, cfg("model", "mmoe", **SMALL["mmoe"]), cfg("graph", graph, **SMALL_GRAPH[graph]))
    assert [id(p) for p in mm.last_shared_layer()] == [id(mm.backbone.experts.weights[-1])]


def test_balancers_that_need_a_shared_representation_refuse_models_without_one_at_build():
    from mtl_train.balancing.base import build_balancer

    s = funnel_schema()
    loss = lambda name: OmegaConf.load(f"conf/loss/{name}.yaml")  # noqa: E731
    # single-task networks under ESMM share the pCTR tower (so gradient surgery applies) but no representation
    m = build_model(s, cfg("model", "single_task", **SMALL["single_task"]), cfg("graph", "esmm", **SMALL_GRAPH["esmm"]))
    with pytest.raises(ConfigError, match="loss=mgda: this model has no shared representation"):
        build_balancer(loss("mgda"), m.graph.loss_names, m)
    build_balancer(loss("pcgrad"), m.graph.loss_names, m)
    assert [id(p) for p in build_balancer(loss("gradnorm"), m.graph.loss_names, m)._target_tensors(m, {})] == [
        id(m.graph.towers[0][-1].weight)]
    # CGC without shared experts: no shared layer, and no shared_representation to suggest
    m = build_model(s, cfg("model", "cgc", expert_hidden=[8], num_shared_experts=0), cfg("graph", "independent"))
    with pytest.raises(ConfigError) as e:
        build_balancer(loss("gradnorm"), m.graph.loss_names, m)
    assert "shares no layer" in str(e.value) and "shared_representation" not in str(e.value)


def test_graphs_needing_probabilities_refuse_a_regression_task_by_name():
    s = funnel_schema(spend=True)
    with pytest.raises(ConfigError, match="'spend'"):
        build_model(s, cfg("model", "esmm", embedding_dim=4), cfg("graph", "aitm"))
    with pytest.raises(ConfigError, match="'spend'"):
        build_model(s, cfg("model", "esmm", embedding_dim=4), cfg("graph", "gmsl", order_weight=0.1))
    reg = FeatureSchema([SparseFeature("a", 7)], [], [Task("visit", "visit"), Task("spend", "spend", "regression", "visit")])
    with pytest.raises(ConfigError, match="'spend'"):
        build_model(reg, cfg("model", "esmm", embedding_dim=4), cfg("graph", "esmm"))
    # outside the funnel a regression task trains with MSE and is reported as a value
    m = build_model(s, cfg("model", "esmm", embedding_dim=4), cfg("graph", "esmm", tower_hidden=[4]))
    b = funnel_batch(4, s)
    out = m(b)
    losses, _ = m.graph.losses(out, b["labels"])
    assert torch.allclose(losses[3], ((out["logits"][:, 3] - b["labels"][:, 3]) ** 2).mean())
    ev = m.graph.eval_outputs(out, b)
    assert ev["spend"].type == "regression" and torch.equal(ev["spend"].score, out["logits"][:, 3])


@pytest.mark.parametrize("graph", GRAPHS)
def test_each_graph_learns_the_synthetic_funnel(graph):
    from mtl_train.data.datasets import load_dataset

    torch.manual_seed(0)
    data = load_dataset(cfg("dataset", "synthetic", train_rows=2000, val_rows=10, test_rows=10,
                            vocab_sizes=[20, 20, 5], num_dense=2, click_rate=0.3, cvr_rate=0.3), seed=0)
    m = build_model(data.schema, cfg("model", "esmm", embedding_dim=4), cfg("graph", graph, **SMALL_GRAPH[graph]))
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    batch = data.train.take(torch.arange(2000))
    for _ in range(60):
        losses, _ = m.graph.losses(m(batch), batch["labels"])
        opt.zero_grad()
        losses.sum().backward()
        opt.step()
    # every loss term ends below the logloss of the constant base-rate predictor of its label
    p = batch["labels"].mean(0)
    base = -(p * p.log() + (1 - p) * (1 - p).log())
    assert (losses.detach() < 0.97 * base).all(), (losses, base)


def _click_and_revenue(**revenue):
    from mtl_train.models.graphs.independent import Independent

    s = FeatureSchema([SparseFeature("a", 7)], [], [Task("click", "click", weight="w"),
                                                    Task("rev", "rev", "regression", **revenue)])
    return Independent(s, [4, 4], [4])


def test_weighted_losses_are_sum_w_l_over_sum_w_of_valid_rows_with_row_counts():
    g = _click_and_revenue()
    logits = torch.tensor([[0.0, 1.0], [float(np.log(3.0)), 2.0], [0.0, 4.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [float("nan"), 1.0]])
    weights = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 1.0]])
    losses, counts = g.losses({"logits": logits}, labels, weights)
    # click: rows 0 (BCE at logit 0, label 1 = ln 2) and 1 (logit ln 3, label 0: -ln(1/4) = ln 4),
    # row 2 masked (its weight 5 counts for nothing): (1 ln 2 + 3 ln 4) / (1 + 3) = 7/4 ln 2
    # rev: squared errors 1, 4, 9 with weights 2, 0, 1: (2 + 0 + 9) / 3
    assert losses.tolist() == pytest.approx([7 / 4 * np.log(2.0), 11 / 3], rel=1e-6)
    assert counts.tolist() == [2.0, 3.0]  # valid rows, whatever the weights
    # without weights: the unweighted means, as before
    assert g.losses({"logits": logits}, labels)[0].tolist() == pytest.approx(
        [(np.log(2.0) + np.log(4.0)) / 2, 14 / 3], rel=1e-6)
    # weights summing to 0: loss 0, still attached, count kept
    zero = g.losses({"logits": logits.requires_grad_()}, labels, torch.zeros(3, 2))
    assert zero[0].tolist() == [0.0, 0.0] and zero[1].tolist() == [2.0, 3.0] and zero[0].requires_grad


def test_esmm_weighs_each_task_term_by_its_weights():
    from mtl_train.models.graphs.base import masked_mean

    v, m = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([True, True, False])
    assert masked_mean(v, m, torch.tensor([3.0, 1.0, 9.0]))[0].item() == pytest.approx(5 / 4)
    assert masked_mean(v, m)[0].item() == pytest.approx(1.5) and masked_mean(v, m)[1].item() == 2


@pytest.mark.parametrize("transform, mean, std, z", [
    ("standard", 10.0, 2.0, [0.0, 1.0, -2.5, float("nan")]),  # (y - 10) / 2
    ("log1p", 0.0, 1.0, [float(np.log(11.0)), float(np.log(13.0)), float(np.log(6.0)), float("nan")]),
])
def test_regression_transform_round_trip_through_loss_and_scores(transform, mean, std, z):
    g = _click_and_revenue(transform=transform, target_mean=mean, target_std=std)
    y = torch.tensor([10.0, 12.0, 5.0, float("nan")])
    labels = torch.stack([torch.tensor([1.0, 0.0, 1.0, 0.0]), y], 1)
    t = g.loss_targets(labels)
    assert torch.equal(t[:, 0], labels[:, 0])
    assert t[:, 1].tolist() == pytest.approx(z, nan_ok=True, rel=1e-6)
    assert torch.allclose(g.predictions(t)[:3, 1], y[:3], rtol=1e-6)  # inverted back to the label's scale
    # the loss sees the transformed label: an output equal to it gives a zero squared error
    losses, _ = g.losses({"logits": t.nan_to_num()}, labels)
    assert losses[1].item() == pytest.approx(0.0, abs=1e-10)
    # scores (eval, predict) are on the label's scale
    ev = g.eval_outputs({"logits": t.nan_to_num()}, {"labels": labels})
    assert torch.allclose(ev["rev"].score[:3], y[:3], rtol=1e-6) and ev["rev"].weight is None


def test_without_transform_labels_and_scores_pass_through_unchanged():
    g = _click_and_revenue()
    labels = torch.tensor([[1.0, 3e8], [0.0, -2.0]])
    assert g.loss_targets(labels) is labels and g.predictions(labels) is labels
    ev = g.eval_outputs({"logits": torch.zeros(2, 2)}, {"labels": labels, "weights": torch.tensor([[2.0, 1.0], [0.5, 1.0]])})
    assert ev["click"].weight.tolist() == [2.0, 0.5] and ev["rev"].weight is None  # rev has no weight column

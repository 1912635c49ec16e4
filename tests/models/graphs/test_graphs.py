"""Task graphs (ESMM, DBMTL, GMSL, AITM, independent) on every backbone, and their losses."""
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from mtl_train.config import validate_group
from mtl_train.data.schema import DenseFeature, FeatureSchema, SparseFeature, Task
from mtl_train.errors import ConfigError
from mtl_train.models.builder import build_model
from mtl_train.models.graphs.base import topological_order
from mtl_train.models.graphs.esmm import chain_log_probs

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


def funnel_schema(spend=False):
    tasks = [Task("click", "click"), Task("cart", "cart", parent="click"), Task("purchase", "purchase", parent="cart")]
    if spend:
        tasks.append(Task("spend", "spend", "regression"))
    return FeatureSchema([SparseFeature("a", 7), SparseFeature("b", 5)], [DenseFeature("x")], tasks)


def cfg(group, name, **over):
    c = OmegaConf.load(f"conf/{group}/{name}.yaml")
    c.pop("defaults", None)
    for k, v in over.items():
        c[k] = v
    return validate_group(group, c)


def funnel_batch(n, schema, seed=0):
    g = torch.Generator().manual_seed(seed)
    click = torch.randint(0, 2, (n,), generator=g).float()
    cart = click * torch.randint(0, 2, (n,), generator=g).float()
    purchase = cart * torch.randint(0, 2, (n,), generator=g).float()
    cols = [click, cart, purchase]
    if len(schema.tasks) == 4:
        cols.append(purchase * torch.rand(n, generator=g) * 3)
    return {
        "sparse": torch.stack([torch.randint(0, 7, (n,), generator=g), torch.randint(0, 5, (n,), generator=g)], 1),
        "dense": torch.randn(n, 1, generator=g),
        "labels": torch.stack(cols, 1),
    }


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


def test_esmm_product_along_a_three_step_chain():
    a = torch.tensor([[0.3, -1.2, 2.0]])
    log_p, log_not = chain_log_probs(a, [None, 0, 1], [0, 1, 2])
    s = torch.sigmoid(a)[0]
    expected = torch.tensor([s[0], s[0] * s[1], s[0] * s[1] * s[2]])
    assert torch.allclose(log_p.exp()[0], expected, atol=1e-6)
    assert torch.allclose(log_not.exp()[0], 1 - expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_esmm_log_space_loss_at_saturated_logits(dtype):
    # a = b = +50: pCTCVR = sigmoid(50)^2 rounds to 1, so a naive log(1 - p) is log(0)
    a = torch.tensor([[50.0, 50.0], [-50.0, -50.0]], dtype=dtype, requires_grad=True)
    log_p, log_not = chain_log_probs(a, [None, 0], [0, 1])
    # label 0 at +50: -log(1 - sigmoid(50)^2) = -log(2 e^-50 - e^-100) = 50 - log 2 (to 1e-21)
    assert math.isclose(-log_not[0, 1].item(), 50 - math.log(2), rel_tol=1e-6)
    # label 1 at -50: -log(sigmoid(-50)^2) = 2 softplus(50) = 100 (to 1e-21)
    assert math.isclose(-log_p[1, 1].item(), 100.0, rel_tol=1e-6)
    loss = -log_not[0, 1] - log_p[1, 1]
    loss.backward()
    # d/da [-log(1 - s(a)s(b))] = s(b) s(a)(1 - s(a)) / (1 - s(a)s(b)) -> 1/2 at a = b = 50;
    # d/da [-log s(a) - log s(b)] = -(1 - s(a)) -> -1 at a = -50
    assert torch.allclose(a.grad, torch.tensor([[0.5, 0.5], [-1.0, -1.0]], dtype=dtype), atol=1e-6)
    assert torch.isfinite(a.grad).all()


def test_esmm_losses_are_ctr_and_ctcvr_bce_over_all_impressions():
    s = FeatureSchema([SparseFeature("a", 7)], [], [Task("click", "click"), Task("purchase", "purchase", parent="click")])
    m = build_model(s, cfg("model", "esmm", embedding_dim=4), cfg("graph", "esmm", tower_hidden=[4]))
    # purchase=1 with click=0 (an inconsistent row): its CTCVR label is click AND purchase = 0
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    out = m({"sparse": torch.tensor([[2], [3], [4], [5]]), "dense": torch.zeros(4, 0), "labels": labels})
    losses, counts = m.graph.losses(out, labels)
    p_ctr = torch.sigmoid(out["logits"][:, 0])
    p_ctcvr = p_ctr * torch.sigmoid(out["logits"][:, 1])
    y_ctcvr = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert torch.allclose(losses[0], F.binary_cross_entropy(p_ctr, labels[:, 0]), atol=1e-6)
    assert torch.allclose(losses[1], F.binary_cross_entropy(p_ctcvr, y_ctcvr), atol=1e-6)
    assert counts.tolist() == [4, 4]
    ev = m.graph.eval_outputs(out, {"labels": labels, "purchase_if_click": torch.tensor([1.0, 0.0, 1.0, 0.0])})
    assert torch.equal(ev["purchase"].label, y_ctcvr) and ev["purchase"].mask.all()
    assert ev["purchase_given_click"].mask.tolist() == [True, True, False, False]
    assert torch.allclose(ev["purchase_given_click"].score, torch.sigmoid(out["logits"][:, 1]))
    assert ev["purchase_given_click_entire"].eval_only and ev["purchase_given_click_entire"].mask.all()


def test_esmm_entire_space_labels_with_missing_labels_in_the_chain():
    # a 0 anywhere on the chain is a known negative even where another label is missing (logs often
    # leave purchase null on unclicked impressions); no 0 and a missing label: left out
    nan = float("nan")
    m = build_model(funnel_schema(), cfg("model", "esmm", embedding_dim=4), cfg("graph", "esmm", tower_hidden=[4]))
    labels = torch.tensor([[0.0, nan, nan], [1.0, 0.0, nan], [1.0, 1.0, nan], [nan, 1.0, 1.0],
                           [nan, 0.0, 1.0], [1.0, 1.0, 1.0], [nan, nan, nan]])
    y = m.graph.entire_labels(labels)
    expected = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, nan], [nan, nan, nan],
                             [nan, 0.0, 0.0], [1.0, 1.0, 1.0], [nan, nan, nan]])
    assert torch.equal(torch.isnan(y), torch.isnan(expected))
    assert torch.equal(torch.nan_to_num(y, 9.0), torch.nan_to_num(expected, 9.0))
    batch = funnel_batch(7, m.schema)
    batch["labels"] = labels
    out = m(batch)
    _, counts = m.graph.losses(out, labels)
    assert counts.tolist() == [4, 5, 4]  # rows with a known entire-space label per task
    ev = m.graph.eval_outputs(out, batch)
    assert ev["purchase"].mask.tolist() == [True, True, False, False, True, True, False]
    # the conditional CVR metric still needs the label itself and every ancestor positive
    assert ev["cart_given_click"].mask.tolist() == [False, True, True, False, False, True, False]


def test_independent_parent_positive_only_trains_child_on_parent_positive_rows():
    s = FeatureSchema([SparseFeature("a", 7)], [], [Task("click", "click"), Task("purchase", "purchase", parent="click")])
    m = build_model(s, cfg("model", "esmm", embedding_dim=4),
                    cfg("graph", "independent", tower_hidden=[4], parent_positive_only=True))
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    out = m({"sparse": torch.tensor([[2], [3], [4]]), "dense": torch.zeros(3, 0), "labels": labels})
    losses, counts = m.graph.losses(out, labels)
    assert counts.tolist() == [3, 2]
    y = out["logits"][:2, 1]
    assert torch.allclose(losses[1], F.binary_cross_entropy_with_logits(y, labels[:2, 1]), atol=1e-6)
    ev = m.graph.eval_outputs(out, {"labels": labels})
    p = torch.sigmoid(out["logits"])
    assert torch.allclose(ev["purchase"].score, p[:, 0] * p[:, 1], atol=1e-6)


def test_dbmtl_parents_dag_override_and_cycle_refused():
    s = funnel_schema()
    g = cfg("graph", "dbmtl", tower_hidden=[4], head_hidden=[3], parents={"purchase": ["click", "cart"]})
    m = build_model(s, cfg("model", "esmm", embedding_dim=4), g)
    assert m.graph.parents == [[], [0], [0, 1]]
    assert m.graph.heads[2][0].in_features == 4 + 3 * 2  # own tower + both parents' head layers
    # the purchase logit depends on the click head (a directed link), not the other way round
    b = funnel_batch(3, s)
    out = m(b)
    grads = torch.autograd.grad(out["logits"][:, 2].sum(), list(m.graph.heads[0].parameters()), allow_unused=True)
    assert any(x is not None and x.abs().sum() > 0 for x in grads)
    with pytest.raises(ConfigError, match="cycle"):
        build_model(s, cfg("model", "esmm", embedding_dim=4),
                    cfg("graph", "dbmtl", parents={"click": ["purchase"]}))
    with pytest.raises(ConfigError, match="unknown parent task 'buy'"):
        build_model(s, cfg("model", "esmm", embedding_dim=4), cfg("graph", "dbmtl", parents={"click": ["buy"]}))
    assert topological_order(["c", "b", "a"], {"c": ["a"], "b": ["c"]}) == ["a", "c", "b"]


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


def test_aitm_calibrator_and_attention():
    s = FeatureSchema([SparseFeature("a", 7)], [], [Task("click", "click"), Task("purchase", "purchase", parent="click")])
    m = build_model(s, cfg("model", "aitm"), cfg("graph", "aitm", calibrator_weight=0.6))
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    out = m({"sparse": torch.tensor([[2], [3], [4]]), "dense": torch.zeros(3, 0), "labels": labels})
    losses, _ = m.graph.losses(out, labels)
    p = torch.sigmoid(out["logits"])
    bce = F.binary_cross_entropy(p[:, 1], labels[:, 1])
    assert torch.allclose(losses[1], bce + 0.6 * torch.relu(p[:, 1] - p[:, 0]).mean(), atol=1e-6)
    w = m.graph.ait[0].last_weights
    assert w.shape == (3, 2) and torch.allclose(w.sum(1), torch.ones(3))
    assert m.graph.towers[0][0].out_features == 128  # the paper's 128-64-32 towers
    assert m.embeddings[0].dim == 5  # and 5-dim embeddings


def test_presets_select_their_graph_and_precheck_accepts_combinations():
    from hydra import compose, initialize_config_module

    from mtl_train.cli import precheck_overrides

    with initialize_config_module(config_module="mtl_train.conf", version_base="1.3"):
        for preset in ("esmm", "dbmtl", "gmsl", "aitm"):
            c = compose("config", overrides=[f"model={preset}"])
            assert c.graph.name == preset and c.model.backbone == "shared_embedding"
        c = compose("config", overrides=["model=esmm", "graph=independent"])
        assert c.graph.name == "independent"  # the command line wins over the preset
        c = compose("config", overrides=["model=ple", "graph=esmm", "loss=gradnorm"])
        assert (c.model.backbone, c.graph.name, c.loss.name) == ("ple", "esmm", "gradnorm")
    precheck_overrides(["model=ple", "graph=esmm", "loss=gradnorm"])
    precheck_overrides(["model=aitm", "graph.calibrator_weight=0.3"])
    precheck_overrides(["model=esmm", "graph=dbmtl", "graph.head_hidden=[8]"])
    with pytest.raises(ConfigError, match="graph.calibrator_weight"):
        precheck_overrides(["model=aitm", "graph=esmm", "graph.calibrator_weight=0.3"])


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

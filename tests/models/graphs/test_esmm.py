"""graph=esmm's constructor: defaults and its one-line config errors (cases the mutation run
of docs/RESULTS.md, "Mutation testing", found untested)."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import funnel_batch, funnel_schema
from helpers import group_cfg as cfg

from mtl_train.data.schema import DenseFeature, FeatureSchema, SparseFeature, Task
from mtl_train.errors import ConfigError
from mtl_train.models.builder import build_model
from mtl_train.models.graphs.esmm import ESMM, chain_log_probs


def schema(*tasks):
    return FeatureSchema(sparse=[SparseFeature("u", 10)], dense=[DenseFeature("x")], tasks=list(tasks))


FUNNEL = (Task("click", "click"), Task("buy", "buy", parent="click"))


def test_defaults_are_relu_towers_without_dropout():
    g = ESMM(schema(*FUNNEL), [6, 6], [8, 4])
    layers = [m for m in g.modules() if not isinstance(m, (nn.Sequential, nn.ModuleList, ESMM))]
    assert not any(isinstance(m, nn.Dropout) for m in layers)
    assert sum(isinstance(m, nn.ReLU) for m in layers) == 4  # two hidden layers in each of two towers
    assert g.last_shared_layer() == [g.towers[0][-1].weight]  # the root task's last layer


def test_a_dataset_without_a_funnel_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        ESMM(schema(Task("click", "click"), Task("like", "like")), [6, 6], [8])
    assert str(e.value) == "graph=esmm: no task of this dataset has a parent (declare the funnel, e.g. purchase: click)"


def test_bad_tower_sizes_and_a_regression_task_in_the_funnel_name_the_key_and_the_task():
    with pytest.raises(ConfigError) as e:
        ESMM(schema(*FUNNEL), [6, 6], [8, 0])
    assert str(e.value) == "graph.tower_hidden: layer sizes must be positive, got [8, 0]"
    with pytest.raises(ConfigError) as e:
        ESMM(schema(Task("click", "click"), Task("time", "time", type="regression", parent="click")), [6, 6], [8])
    assert str(e.value) == ("graph: task 'time' is a regression task but graph=esmm (the probability product along "
                            "the funnel) needs its probability (binary tasks only)")


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


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

"""Mixture-of-experts backbones (OMoE, MMoE, CGC, PLE)."""
import pytest
import torch
from helpers import batch, graph_cfg, model_cfg, schema

from mtl_train.models.builder import build_model
from mtl_train.models.layers import BatchedExperts


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_ple_levels_and_expert_counts_independent_of_tasks(levels):
    s = schema(num_tasks=2)
    m = build_model(s, model_cfg("ple", num_levels=levels, num_task_experts=3, num_shared_experts=1), graph_cfg())
    bb = m.backbone
    assert len(bb.task_experts) == levels and len(bb.shared_gates) == levels - 1
    assert bb.task_experts[0].num_experts == 2 * 3 and bb.shared_experts[0].num_experts == 1
    # task gates mix own + shared experts; shared gates mix all experts of the level
    assert bb.task_gates[0][0].linear.out_features == 3 + 1
    if levels > 1:
        assert bb.shared_gates[0].linear.out_features == 2 * 3 + 1
    assert m(batch(2, s))["logits"].shape == (2, 2)


def test_experts_start_different():
    ex = BatchedExperts(4, 10, [8, 6])
    w = ex.weights[0]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(w[i], w[j])
    # and produce different outputs for the same input
    y = ex(torch.randn(3, 10))
    assert y.shape == (4, 3, 6)
    assert not torch.allclose(y[0], y[1])


def test_mmoe_gates_are_softmax_mixtures():
    s = schema(num_tasks=2)
    m = build_model(s, model_cfg("mmoe", num_experts=3), graph_cfg())
    x = m.embeddings[0](batch(4, s))
    bo = m.backbone(x)
    g = m.backbone.gates[0](x)
    assert torch.allclose(g.sum(1), torch.ones(4))
    manual = torch.einsum("be,ebh->bh", g, bo.shared)
    assert torch.allclose(bo.tasks[0], manual, atol=1e-6)

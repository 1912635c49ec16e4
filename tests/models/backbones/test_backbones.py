import pytest
import torch
from omegaconf import OmegaConf

from mtl_train.config import validate_group
from mtl_train.data.schema import DenseFeature, FeatureSchema, SparseFeature, Task
from mtl_train.models.builder import build_model
from mtl_train.models.layers import BatchedExperts

MODELS = ["single_task", "shared_bottom", "omoe", "mmoe", "cgc", "ple"]


def schema(num_tasks=3):
    tasks = [Task(f"t{i}", f"y{i}") for i in range(num_tasks)]
    return FeatureSchema([SparseFeature("a", 7), SparseFeature("b", 5)], [DenseFeature("x")], tasks)


def model_cfg(name, **over):
    cfg = OmegaConf.load(f"conf/model/{name}.yaml")
    for k, v in over.items():
        cfg[k] = v
    return validate_group("model", cfg)


def graph_cfg():
    return validate_group("graph", OmegaConf.load("conf/graph/independent.yaml"))


def batch(n, s):
    g = torch.Generator().manual_seed(n)
    return {
        "sparse": torch.stack([torch.randint(0, 7, (n,), generator=g), torch.randint(0, 5, (n,), generator=g)], 1),
        "dense": torch.randn(n, 1, generator=g),
        "labels": torch.randint(0, 2, (n, len(s.tasks)), generator=g).float(),
    }


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n", [1, 2])
def test_every_backbone_output_shapes(name, n):
    s = schema()
    m = build_model(s, model_cfg(name), graph_cfg())
    out = m(batch(n, s))
    assert out["logits"].shape == (n, 3)
    losses, counts = m.graph.losses(out, batch(n, s)["labels"])
    assert losses.shape == (3,) and counts.tolist() == [n] * 3
    losses.sum().backward()
    assert all(p.grad is not None for p in m.backbone.parameters() if p.requires_grad)


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


def test_batched_experts_equal_loop_of_mlps():
    torch.manual_seed(1)
    ex = BatchedExperts(3, 5, [4, 2])
    x = torch.randn(6, 5)
    y = ex(x)
    for e in range(3):
        h = torch.relu(x @ ex.weights[0][e] + ex.biases[0][e])
        h = torch.relu(h @ ex.weights[1][e] + ex.biases[1][e])
        assert torch.allclose(y[e], h, atol=1e-6)
    # per-expert inputs give the same result when every expert reads x
    assert torch.allclose(ex(x.expand(3, 6, 5)), y, atol=1e-6)


def test_mmoe_gates_are_softmax_mixtures():
    s = schema(num_tasks=2)
    m = build_model(s, model_cfg("mmoe", num_experts=3), graph_cfg())
    x = m.embeddings[0](batch(4, s))
    bo = m.backbone(x)
    g = m.backbone.gates[0](x)
    assert torch.allclose(g.sum(1), torch.ones(4))
    manual = torch.einsum("be,ebh->bh", g, bo.shared)
    assert torch.allclose(bo.tasks[0], manual, atol=1e-6)


def test_single_task_shares_nothing():
    s = schema(num_tasks=2)
    m = build_model(s, model_cfg("single_task"), graph_cfg())
    assert len(m.embeddings) == 2
    assert m.shared_parameters() == [] and m.last_shared_layer() == []

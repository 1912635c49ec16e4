"""graph=aitm (Xi et al., KDD 2021): calibrator and attention."""
import pytest
import torch
import torch.nn.functional as F
from helpers import group_cfg as cfg

from mtl_train.data.schema import FeatureSchema, SparseFeature, Task
from mtl_train.models.builder import build_model


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


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

"""graph=independent: parent_positive_only."""
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

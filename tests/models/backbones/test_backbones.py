"""Every backbone: output shapes."""
import pytest
from helpers import MODELS, batch, graph_cfg, model_cfg, schema

from mtl_train.models.builder import build_model


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

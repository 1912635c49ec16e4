"""graph=dbmtl: the parents DAG."""
import pytest
import torch
from helpers import funnel_batch, funnel_schema
from helpers import group_cfg as cfg

from mtl_train.errors import ConfigError
from mtl_train.models.builder import build_model
from mtl_train.models.graphs.base import topological_order


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


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

"""Simple backbones: single_task shares nothing."""
import pytest
from helpers import graph_cfg, model_cfg, schema

from mtl_train.models.builder import build_model


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


def test_single_task_shares_nothing():
    s = schema(num_tasks=2)
    m = build_model(s, model_cfg("single_task"), graph_cfg())
    assert len(m.embeddings) == 2
    assert m.shared_parameters() == [] and m.last_shared_layer() == []

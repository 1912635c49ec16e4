"""Gate diagnostics: known statistics on hand-set gates, the layouts of MMoE/OMoE/PLE, recording in a forward."""
import math

import pytest
import torch
from helpers import batch, graph_cfg, model_cfg, schema

from mtl_train.models.builder import build_model
from mtl_train.models.gates import (
    GateLevel,
    GateRecorder,
    GateSpec,
    gate_scalars,
    gate_statistics,
    gate_warnings,
    recording,
)


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


def _level(E=4, names=("click", "buy")):
    return [GateLevel([f"e{e}" for e in range(E)], [GateSpec(n, list(range(E))) for n in names])]


def _hand_set_mmoe(p0, p1, rows=5):
    """A two-task MMoE over 4 experts whose gates ignore the input (weights 0) and have the
    softmax probabilities p0 and p1 (their log as biases)."""
    s = schema(num_tasks=2)
    m = build_model(s, model_cfg("mmoe", num_experts=4), graph_cfg())
    with torch.no_grad():
        for gate, p in zip(m.backbone.gates, (p0, p1)):
            gate.linear.weight.zero_()
            gate.linear.bias.copy_(torch.tensor(p).log())
    return m, batch(rows, s)


def test_known_statistics_of_hand_set_gates_with_padding_dropped():
    m, b = _hand_set_mmoe([0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25])
    rec = GateRecorder()
    with torch.no_grad(), recording(m.backbone, rec):
        m(b)
    rec.commit(3)  # 5 rows scored, the last 2 padding
    assert m.backbone.gate_recorder is None  # removed after the block
    layout = m.backbone.gate_layout(["click", "buy"])
    (st,) = gate_statistics(layout, rec)
    assert rec.rows[(0, 0)] == 3 and st["gates"] == ["click", "buy"] and st["experts"] == ["e0", "e1", "e2", "e3"]
    assert st["weight"][0] == pytest.approx([0.7, 0.1, 0.1, 0.1], abs=1e-6)
    assert st["weight"][1] == pytest.approx([0.25] * 4, abs=1e-6)
    # -(0.7 ln 0.7 + 3 * 0.1 ln 0.1) = 0.94044 nats; uniform: ln 4
    assert st["entropy"][0] == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.1)), abs=1e-5)
    assert st["entropy"][0] == pytest.approx(0.940448, abs=1e-5)
    assert st["entropy"][1] == pytest.approx(math.log(4), abs=1e-6) and st["max_entropy"] == [math.log(4)] * 2
    assert st["unused"] == [] and st["unused_share"] == 0.0  # 0.1 < 1/8 for click, but buy uses every expert
    assert st["collapsed"] is None and st["one_hot"] == [] and gate_warnings([st]) == []
    tags = gate_scalars([st])
    assert tags["diag/gate/click/e0"] == pytest.approx(0.7, abs=1e-6)
    assert tags["diag/gate_entropy/buy"] == pytest.approx(math.log(4)) and tags["diag/gate_unused_share"] == 0.0


def test_unused_experts_collapse_and_one_hot():
    rec = GateRecorder()
    # rows of two gates over 4 experts: e3 below 1/(2*4) = 0.125 under both gates -> unused
    g = torch.tensor([[[0.95, 0.02, 0.02, 0.01], [0.995, 0.002, 0.002, 0.001]],
                      [[0.91, 0.04, 0.04, 0.01], [0.995, 0.002, 0.002, 0.001]]])  # [B=2, G=2, E=4]
    rec.add(0, 0, g)
    rec.commit(2)
    (st,) = gate_statistics(_level(), rec)
    assert st["weight"][0] == pytest.approx([0.93, 0.03, 0.03, 0.01])
    assert st["unused"] == ["e1", "e2", "e3"] and st["unused_share"] == 0.75
    assert st["collapsed"] == "e0"  # more than 90 % of both tasks' weight
    assert st["one_hot"] == ["buy"]  # mean weight 0.995 >= 0.99
    lines = gate_warnings([st])
    assert len(lines) == 2 and "expert e0" in lines[0] and "gate of buy" in lines[1]


def test_no_collapse_when_the_tasks_prefer_different_experts():
    rec = GateRecorder()
    rec.add(0, 0, torch.tensor([[0.95, 0.05], [0.96, 0.04]]))
    rec.add(0, 1, torch.tensor([[0.05, 0.95], [0.04, 0.96]]))
    rec.commit(2)
    (st,) = gate_statistics(_level(E=2), rec)
    assert st["collapsed"] is None and st["unused"] == [] and st["one_hot"] == []
    # mean of the per-row entropies, not the entropy of the mean gate
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert st["entropy"][0] == pytest.approx((h(0.95) + h(0.96)) / 2)


def test_omoe_has_one_shared_gate():
    s = schema(num_tasks=2)
    m = build_model(s, model_cfg("mmoe", num_experts=3, num_gates=1), graph_cfg())
    (lv,) = m.backbone.gate_layout(["a", "b"])
    assert [g.name for g in lv.gates] == ["shared"] and lv.gates[0].experts == [0, 1, 2]


def test_ple_layout_and_recording_every_level():
    s = schema(num_tasks=2)
    m = build_model(s, model_cfg("ple", num_levels=2, num_task_experts=2, num_shared_experts=1), graph_cfg())
    layout = m.backbone.gate_layout(["a", "b"])
    assert len(layout) == 2
    assert layout[0].experts == ["a_e0", "a_e1", "b_e0", "b_e1", "shared_e0"]
    assert [(g.name, g.experts, g.task) for g in layout[0].gates] == [
        ("a", [0, 1, 4], True), ("b", [2, 3, 4], True), ("shared", [0, 1, 2, 3, 4], False)]
    assert [g.name for g in layout[1].gates] == ["a", "b"]  # no shared gate at the last level
    b = batch(6, s)
    m.eval()
    with torch.no_grad():
        plain = m(b)["logits"]
        rec = GateRecorder()
        with recording(m.backbone, rec):
            recorded = m(b)["logits"]
    assert torch.equal(plain, recorded)  # recording changes no score
    rec.commit(6)
    stats = gate_statistics(layout, rec)
    assert [st["level"] for st in stats] == [0, 1]
    w = stats[0]["weight"]
    assert w[0][2] is None and w[0][3] is None and w[1][0] is None  # a's gate cannot select b's experts
    assert sum(x for x in w[0] if x is not None) == pytest.approx(1.0)
    assert sum(w[2]) == pytest.approx(1.0)  # the shared gate mixes all five
    tags = gate_scalars(stats)
    assert "diag/gate/level0/shared/b_e1" in tags and "diag/gate/level1/a/shared_e0" in tags
    assert "diag/gate_unused_share/level1" in tags


def test_cgc_with_one_expert_per_gate_is_not_called_collapsed():
    rec = GateRecorder()
    layout = [GateLevel(["shared_e0"], [GateSpec("a", [0]), GateSpec("b", [0])])]
    rec.add(0, 0, torch.ones(3, 1))
    rec.add(0, 1, torch.ones(3, 1))
    rec.commit(3)
    (st,) = gate_statistics(layout, rec)
    assert st["collapsed"] is None and st["one_hot"] == [] and st["entropy"] == [0.0, 0.0]


def test_backbones_without_gates_record_nothing():
    s = schema(num_tasks=2)
    m = build_model(s, model_cfg("shared_bottom"), graph_cfg())
    assert m.backbone.gate_layout() == []
    rec = GateRecorder()
    with recording(m.backbone, rec):
        assert m.backbone.gate_recorder is None

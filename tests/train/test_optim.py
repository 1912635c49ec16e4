"""mtl_train.train.optim: the learning-rate schedule."""
import pytest


def test_lr_factor_hand_computed():
    from types import SimpleNamespace

    from mtl_train.train.optim import lr_factor

    cos = SimpleNamespace(scheduler="cosine", warmup_steps=5, min_lr_ratio=0.0, step_size=1, gamma=1.0)
    assert [lr_factor(s, cos, 105) for s in (0, 1, 4)] == [0.2, 0.4, 1.0]
    assert lr_factor(5, cos, 105) == 1.0
    assert lr_factor(55, cos, 105) == pytest.approx(0.5)
    assert lr_factor(105, cos, 105) == pytest.approx(0.0)
    cos.min_lr_ratio = 0.1
    assert lr_factor(55, cos, 105) == pytest.approx(0.1 + 0.9 * 0.5)
    step = SimpleNamespace(scheduler="step", warmup_steps=0, min_lr_ratio=0.0, step_size=10, gamma=0.1)
    assert [lr_factor(s, step, 100) for s in (0, 9, 10, 25)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    none = SimpleNamespace(scheduler="none", warmup_steps=0)
    assert lr_factor(1000, none, 10) == 1.0

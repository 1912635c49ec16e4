"""The trainer in process: scheduler state, determinism, non-finite losses, label checks."""
import json
import math

import pytest
import torch
from helpers import TINY, make_cfg

from mtl_train.errors import DataError, TrainingError


def test_scheduler_state_is_in_the_checkpoint_and_drives_the_optimizer(tmp_path):
    from mtl_train.train.trainer import run

    cfg = make_cfg(*TINY, "trainer.scheduler=step", "trainer.step_size=10", "trainer.gamma=0.5")
    run(cfg, str(tmp_path))
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 32 and state["schedulers"][0]["last_epoch"] == 32
    assert state["optimizers"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5 ** 3)
    assert state["data"] == {"epoch": 0, "batch": 32, "kind": "memory"} and state["done"] is True
    assert state["schema"].task_names == ["click", "purchase"]


def test_same_config_and_seed_give_identical_metrics_json(tmp_path):
    from mtl_train.train.trainer import run

    for d in ("a", "b"):
        run(make_cfg(*TINY, "model.dropout=0.2", "trainer.eval_every_steps=10"), str(tmp_path / d))
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()


def _poisoned(cfg, batch_index):
    """The synthetic data with an infinite 'purchase' label in every row of one train batch."""
    from mtl_train.data.datasets import load_dataset
    from mtl_train.data.loader import InMemoryLoader

    data = load_dataset(cfg.dataset, cfg.seed)
    loader = InMemoryLoader(data.train, cfg.trainer.batch_size, seed=cfg.seed)
    loader.set_epoch(0)
    rows = loader._order()[batch_index * 64:(batch_index + 1) * 64]
    data.train.labels[rows, 1] = math.inf
    return data


def test_nonfinite_loss_stops_naming_step_and_task_and_keeps_last_good_checkpoint(tmp_path):
    from mtl_train.train.trainer import Trainer

    cfg = make_cfg(*TINY, "trainer.checkpoint_every_steps=5")
    torch.manual_seed(0)
    trainer = Trainer(cfg, _poisoned(cfg, 12), str(tmp_path))
    with pytest.raises(TrainingError) as e:
        trainer.fit()
    msg = str(e.value)
    assert "step 13" in msg and "'purchase'" in msg and "'click'" not in msg and "last.pt (step 10)" in msg
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 10
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nonfinite_skip_counts_and_reports(tmp_path):
    from mtl_train.train.trainer import Trainer

    cfg = make_cfg(*TINY, "trainer.nonfinite=skip")
    torch.manual_seed(0)
    trainer = Trainer(cfg, _poisoned(cfg, 12), str(tmp_path))
    trainer.fit()
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["nonfinite_skipped"] == 1 and info["steps"] == 31  # 32 batches, one skipped


def test_a_non_finite_model_is_never_saved(tmp_path):
    from mtl_train.data.datasets import load_dataset
    from mtl_train.train.trainer import Trainer

    cfg = make_cfg(*TINY)
    trainer = Trainer(cfg, load_dataset(cfg.dataset, cfg.seed), str(tmp_path))
    trainer.save("last.pt")
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match="non-finite"):
        trainer.save("last.pt")
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before


def test_no_positive_in_train_is_an_error_and_one_class_in_val_gives_null_auc(tmp_path, caplog):
    from mtl_train.data.datasets import load_dataset
    from mtl_train.train.trainer import Trainer, run

    with pytest.raises(DataError, match="task 'click' \\(column 'click'\\) has no positive label in the training split"):
        run(make_cfg(*TINY, "dataset.click_rate=0.000001", "dataset.signal=0.0"), str(tmp_path / "a"))
    cfg = make_cfg(*TINY)
    data = load_dataset(cfg.dataset, cfg.seed)
    data.val.labels[:, 1] = 0.0
    trainer = Trainer(cfg, data, str(tmp_path / "b"))
    m = trainer.evaluate("val")
    assert m["purchase"]["auc"] is None and m["click"]["auc"] is not None
    assert "only one class" in caplog.text

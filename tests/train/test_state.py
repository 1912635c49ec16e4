"""The checkpointed state, declared once (mtl_train.train.state): its layout, and exact restores."""
import random

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from mtl_train.config import validate
from mtl_train.errors import DataError
from mtl_train.train.state import RNG, DataPosition, Progress

TINY = ["dataset.train_rows=600", "dataset.val_rows=200", "dataset.test_rows=200", "dataset.vocab_sizes=[50,50,20]",
        "trainer.progress=false", "trainer.batch_size=64", "trainer.epochs=1", "trainer.device=cpu",
        "model.expert_hidden=[16]", "model.num_experts=2", "model.embedding_dim=4", "graph.tower_hidden=[8]"]


def make_trainer(run_dir, *overrides):
    from mtl_train.data.datasets import load_dataset
    from mtl_train.train.trainer import Trainer

    with initialize_config_module("mtl_train.conf", version_base="1.3"):
        cfg = validate(compose("config", overrides=[*TINY, *overrides]))
    return Trainer(cfg, load_dataset(cfg.dataset, cfg.seed), str(run_dir))


def test_a_checkpoint_holds_the_declared_parts_and_progress_fields(tmp_path):
    state = make_trainer(tmp_path).state.state_dict()
    assert list(state) == ["format", "model", "optimizers", "schedulers", "balancer", "data", "rng",
                           "step", "epoch", "best", "best_step", "bad_evals", "last_eval_step", "done",
                           "nonfinite_skipped", "resumes", "diagnostics", "config", "schema"]
    assert state["format"] == 1 and state["step"] == 0 and state["resumes"] == []
    assert state["data"] == {"epoch": 0, "batch": 0, "kind": "memory"}


def test_restore_is_exact_and_needs_every_entry(tmp_path):
    a = make_trainer(tmp_path / "a")
    a.train_epoch()
    saved = a.state.state_dict()
    torch.manual_seed(123)
    b = make_trainer(tmp_path / "b")
    b.state.load_state_dict(saved)
    assert b.progress.step == a.progress.step == 10 and b.progress.epoch == 0
    assert all(torch.equal(v, saved["model"][k]) for k, v in b.model.state_dict().items())
    assert b.optimizers[0].state_dict()["state"][0]["step"] == 10
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    for key in ("last_eval_step", "schedulers", "resumes"):  # no defaults: every entry is written
        with pytest.raises(KeyError):
            b.state.load_state_dict({k: v for k, v in saved.items() if k != key})
    # but a checkpoint written before the diagnostics existed loads, with none counted yet
    b.progress.diagnostics = {"degenerate": [1]}
    b.state.load_state_dict({k: v for k, v in saved.items() if k != "diagnostics"})
    assert b.progress.diagnostics == {}


def test_a_checkpoint_of_other_features_is_refused(tmp_path):
    saved = make_trainer(tmp_path / "a").state.state_dict()
    other = make_trainer(tmp_path / "b", "dataset.vocab_sizes=[50,50,30]")
    with pytest.raises(DataError, match="trainer.resume: the data's features or tasks differ"):
        other.state.load_state_dict(saved)


def test_progress_round_trips_every_field():
    p = Progress(step=7, epoch=1, best=0.7, best_step=5, bad_evals=2, last_eval_step=5, done=True,
                 nonfinite_skipped=3, resumes=[{"step": 4, "epoch": 0}])
    q = Progress()
    q.load_state_dict(p.state_dict())
    assert q == p and q.resumes is not p.resumes


def test_rng_restores_python_numpy_and_torch():
    rng = RNG()
    saved = rng.state_dict()
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    rng.load_state_dict(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_a_data_position_applies_only_in_its_epoch():
    class Loader:
        def __init__(self):
            self.calls = []

        def set_epoch(self, e):
            self.calls.append(("set_epoch", e))

        def load_state_dict(self, s):
            self.calls.append(("load", s["batch"]))

    pos = DataPosition(Loader())
    pos.load_state_dict({"epoch": 1, "batch": 5, "kind": "memory"})
    pos.begin_epoch(1)
    pos.begin_epoch(2)
    assert pos.loader.calls == [("load", 5), ("set_epoch", 2)]
    pos.load_state_dict({"epoch": 1, "batch": 9, "kind": "memory"})  # an ended epoch: dropped
    pos.begin_epoch(2)
    assert pos.loader.calls[-1] == ("set_epoch", 2)

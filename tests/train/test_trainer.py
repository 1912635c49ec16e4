"""The trainer in process: scheduler state, determinism, non-finite losses, label checks."""

import json
import logging
import math

import pytest
import torch
from helpers import TINY, make_cfg
from hydra import compose, initialize_config_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtl_train.config import validate
from mtl_train.data.datasets import load_dataset
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


def tiny_cfg(*overrides):
    """The config of a tiny synthetic run (helpers.TINY) with ``overrides``."""
    with initialize_config_module("mtl_train.conf", version_base="1.3"):
        return validate(compose("config", overrides=[*TINY, *overrides]))


def make_trainer(run_dir, *overrides):
    from mtl_train.train.trainer import Trainer

    cfg = tiny_cfg(*overrides)
    torch.manual_seed(cfg.seed)
    return Trainer(cfg, load_dataset(cfg.dataset, cfg.seed), str(run_dir))


def scalars(run_dir, tag) -> dict[int, float]:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


# ---- a training point at every evaluation and at the last step (issue 14, item 2) --------------
@pytest.mark.parametrize("overrides, points, evals", [
    ([], [32], [32]),  # 32 steps < log_every_steps=50, one evaluation at the epoch's end
    (["trainer.eval_every_steps=10"], [10, 20, 30, 32], [10, 20, 30, 32]),  # every evaluation, the last step
    (["trainer.max_steps=7"], [7], [7]),  # stopped inside the epoch
    (["trainer.log_every_steps=12", "trainer.eval_every_steps=10"], [10, 12, 20, 24, 30, 32], [10, 20, 30, 32]),
])
def test_a_run_shorter_than_log_every_steps_logs_its_curve(tmp_path, caplog, overrides, points, evals):
    trainer = make_trainer(tmp_path, "trainer.patience=null", *overrides)
    with caplog.at_level(logging.INFO, logger="mtl_train.train.logger"):
        trainer.fit()
    for tag in ("train/loss/click", "train/loss/purchase", "train/weight/click", "train/weight/purchase", "train/lr",
                "train/samples_per_s"):
        assert sorted(scalars(tmp_path, tag)) == points, tag
    assert sorted(scalars(tmp_path, "val/auc/click")) == evals
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train @ step")]
    assert [int(m.split()[3].rstrip(":")) for m in logged] == points


def test_a_skipped_last_batch_still_gets_its_point_at_the_evaluation(tmp_path):
    from mtl_train.data.loader import InMemoryLoader

    trainer = make_trainer(tmp_path, "trainer.nonfinite=skip")
    loader = InMemoryLoader(trainer.data.train, 64, seed=trainer.cfg.seed)
    loader.set_epoch(0)
    rows = loader._order()[31 * 64:]  # the epoch's last batch: an infinite label
    trainer.data.train.labels[rows, 1] = float("inf")
    trainer.fit()
    assert sorted(scalars(tmp_path, "train/loss/click")) == [31]


# ---- the weights logged at step N are the ones step N used, for every balancer (item 8) ---------
BALANCERS = [
    (["loss=equal"], False),
    (["loss=static", "loss.weights={purchase: 3.0}"], False),
    (["loss=dwa", "loss.window_steps=2"], True),
    (["loss=uncertainty", "loss.lr=0.05"], True),
    (["loss=gradnorm"], True),
    (["loss=gradnorm", "model.expert_hidden=[16,8]"], True),  # GradNorm's fast path
    (["loss=rlw"], True),
    (["loss=mgda"], True),
]


def _record_loss_gradient(trainer, seen: dict) -> None:
    """Record, per step, the gradient the balancer's last backward sent to the task losses [T]:
    the weights that multiplied them (the per-task passes before it send one-hot vectors)."""
    graph = trainer.model.graph
    losses_of = graph.losses

    def losses(out, labels):
        l, counts = losses_of(out, labels)
        step = trainer.progress.step + 1
        l.register_hook(lambda g: seen.__setitem__(step, g.detach().clone()))
        return l, counts

    graph.losses = losses


@pytest.mark.parametrize("overrides, moves", BALANCERS, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_logged_weights_are_the_ones_that_multiplied_the_step_losses(tmp_path, overrides, moves):
    trainer = make_trainer(tmp_path, "trainer.max_steps=6", "trainer.log_every_steps=1", *overrides)
    seen = {}
    _record_loss_gradient(trainer, seen)
    trainer.fit()
    logged = {n: scalars(tmp_path, f"train/weight/{n}") for n in ("click", "purchase")}
    assert sorted(seen) == sorted(logged["click"]) == list(range(1, 7))
    for step, applied in seen.items():
        assert [logged["click"][step], logged["purchase"][step]] == pytest.approx(applied.tolist(), abs=1e-6), step
    if moves:
        assert len({tuple(v.tolist()) for v in seen.values()}) > 1  # the test means something: weights moved
    if "loss=dwa" in overrides:  # windows of 2 steps: steps 1-4 use 1, step 5 the first computed weights
        assert all(logged["click"][s] == 1.0 for s in range(1, 5)) and logged["click"][5] != 1.0


@pytest.mark.parametrize("overrides", [["loss=pcgrad"], ["loss=cagrad"], ["loss=gradnorm_pcgrad"]], ids=lambda x: x[0])
def test_surgery_methods_log_the_coefficients_of_their_step(tmp_path, monkeypatch, overrides):
    """Gradient surgery weights task gradients, not losses: the logged weight of a task is the
    coefficient of its gradient that the step passed to ``combine`` (on the shared parameters for
    PCGrad/CAGrad; GradNorm+PCGrad's w, on the task-specific ones)."""
    import mtl_train.balancing.gradnorm_pcgrad as gp
    import mtl_train.balancing.surgery as su

    trainer = make_trainer(tmp_path, "trainer.max_steps=6", "trainer.log_every_steps=1", *overrides)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    shared = {id(p) for p in trainer.model.shared_parameters()}
    k_shared = next(k for k, p in enumerate(params) if id(p) in shared)
    k_own = next(k for k, p in enumerate(params) if id(p) not in shared)
    k_probe = k_own if "gradnorm_pcgrad" in overrides[0] else k_shared
    seen = {}
    for module in (gp, su):
        def combine(grads, k, coef, _combine=module.combine):
            if k == k_probe:
                seen[trainer.progress.step + 1] = list(coef)
            return _combine(grads, k, coef)
        monkeypatch.setattr(module, "combine", combine)
    trainer.fit()
    logged = {n: scalars(tmp_path, f"train/weight/{n}") for n in ("click", "purchase")}
    assert sorted(seen) == sorted(logged["click"]) == list(range(1, 7))
    for step, coef in seen.items():
        assert [logged["click"][step], logged["purchase"][step]] == pytest.approx(coef, abs=1e-5), step
    if "gradnorm_pcgrad" in overrides[0]:
        assert len({tuple(c) for c in seen.values()}) > 1


# ---- a broken model stops the run as a non-finite loss does (item 6) ------------------------------
def test_skip_stops_at_a_broken_model_keeping_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, "trainer.optimizer=sgd", "trainer.lr=1e8", "trainer.nonfinite=skip",
                           "trainer.checkpoint_every_steps=1")
    with pytest.raises(TrainingError) as e:
        trainer.fit()
    msg = str(e.value)
    assert msg.startswith("non-finite loss at step 3 (epoch 1) in task 'click' (nan)")
    assert "last.pt (step 2)" in msg and "non-finite" in msg and "trainer.nonfinite=skip" in msg
    assert trainer.progress.nonfinite_skipped == 0  # no batch was skipped for a model that is broken
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 2
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["steps"] == 2 and info["error"] == msg and info["nonfinite_skipped"] == 0


def test_skip_stops_at_non_finite_parameters(tmp_path):
    trainer = make_trainer(tmp_path, "trainer.nonfinite=skip")
    batch = next(iter(trainer.loader))
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"^non-finite loss at step 1 .*no checkpoint had been written yet; "
                                            r"the model's parameters are non-finite"):
        trainer.train_step(batch)


def test_evaluation_refuses_non_finite_scores(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.save("last.pt")
    trainer.progress.step = 4
    with torch.no_grad():
        list(trainer.model.graph.towers[1].parameters())[-1].fill_(float("nan"))  # purchase's output
    with pytest.raises(TrainingError) as e:
        trainer.validate()
    assert str(e.value) == (f"non-finite scores on val in output 'purchase' (400 of 400 rows) at step 4; stopped, "
                            f"the last good checkpoint is {tmp_path / 'checkpoints' / 'last.pt'} (step 0)")
    assert not (tmp_path / "checkpoints" / "best.pt").exists()


@pytest.mark.cuda
def test_a_cuda_run_equals_the_cpu_run_within_tolerance(tmp_path):
    from mtl_train.train.trainer import Trainer

    # dense embedding gradients on both (the CPU default, a row-sparse Adam, is another optimizer)
    params, results = {}, {}
    for dev in ("cpu", "cuda"):
        cfg = make_cfg(*TINY, f"trainer.device={dev}", "model.sparse_embedding=false", "trainer.max_steps=20")
        torch.manual_seed(0)
        trainer = Trainer(cfg, load_dataset(cfg.dataset, cfg.seed), str(tmp_path / dev))
        results[dev] = trainer.fit()
        params[dev] = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    for k, v in params["cpu"].items():
        torch.testing.assert_close(params["cuda"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    for name, m in results["cpu"]["test"].items():
        assert results["cuda"]["test"][name]["auc"] == pytest.approx(m["auc"], abs=1e-4)


def test_the_end_of_a_run_scores_val_once_and_writes_last_pt_once(tmp_path, monkeypatch):
    from mtl_train.train.trainer import Trainer

    calls = []
    for name in ("evaluate", "save"):
        orig = getattr(Trainer, name)
        monkeypatch.setattr(Trainer, name, lambda self, arg, _o=orig, _n=name: calls.append((_n, arg)) or _o(self, arg))
    cfg = make_cfg(*TINY)
    results = Trainer(cfg, load_dataset(cfg.dataset, cfg.seed), str(tmp_path)).fit()
    # val at the epoch's end (best.pt), then only test: best.pt's val metrics are those already computed
    assert calls == [("evaluate", "val"), ("save", "best.pt"), ("save", "last.pt"), ("evaluate", "test")]
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(results))

"""End-to-end runs: balancer logs and static weights in TensorBoard."""
import pytest
import torch


def test_cli_logs_cosines_and_weights_every_n_steps_and_checkpoints_the_balancer(tmp_path):
    from conftest import find_run_dir, run_cli
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(["loss=gradnorm_pcgrad", "loss.seed=3", "dataset.train_rows=1280", "dataset.val_rows=500",
             "dataset.test_rows=500", "trainer.batch_size=64", "trainer.epochs=1", "trainer.log_every_steps=5",
             "trainer.progress=false", "model.expert_hidden=[16]", "model.num_experts=2"], cwd=tmp_path)
    run = find_run_dir(tmp_path)
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    cos = acc.Scalars("train/grad_cos/click/purchase")
    assert [e.step for e in cos] == [5, 10, 15, 20]
    assert all(-1 <= e.value <= 1 for e in cos)
    w = [e.value for e in acc.Scalars("train/weight/click")]
    assert len(w) == 4 and len(set(w)) > 1
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["balancer"]
    assert set(state) == {"w", "initial", "opt", "generator"}
    # the checkpoint holds the weights after step 20's update (step 21's); step 20 logged the ones it used
    assert sum(state["w"].tolist()) == pytest.approx(2, abs=1e-5)
    assert state["w"].tolist() != pytest.approx([w[-1], 2 - w[-1]], abs=1e-5)
    assert state["opt"]["state"][0]["step"] == 20


def test_cli_static_weights(tmp_path):
    from conftest import find_run_dir, run_cli
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(["loss=static", "loss.weights={purchase: 5.0}", "dataset.train_rows=640", "dataset.val_rows=300",
             "dataset.test_rows=300", "trainer.batch_size=64", "trainer.epochs=1", "trainer.log_every_steps=5",
             "trainer.progress=false", "model.expert_hidden=[16]", "model.num_experts=2"], cwd=tmp_path)
    acc = EventAccumulator(str(find_run_dir(tmp_path) / "tb"))
    acc.Reload()
    assert {e.value for e in acc.Scalars("train/weight/purchase")} == {5.0}
    assert {e.value for e in acc.Scalars("train/weight/click")} == {1.0}

"""Checkpoint files (mtl_train.train.checkpoint): atomic writes, stale temporaries, finding a
checkpoint from a run directory, one-line load errors, the finiteness check."""
import os

import pytest
import torch

from mtl_train.errors import ConfigError, DataError
from mtl_train.train import checkpoint as ckpt


def test_save_atomic_round_trips_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    obj = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7}
    ckpt.save_atomic(obj, str(path))
    ckpt.save_atomic({**obj, "step": 8}, str(path))  # over an existing file
    back = ckpt.load(str(path))
    assert back["step"] == 8 and torch.equal(back["model"]["w"], obj["model"]["w"])
    assert os.listdir(path.parent) == ["last.pt"]


def test_remove_stale_temporaries_deletes_only_temporaries(tmp_path):
    for name in (".tmp-1.pt", ".tmp-abc.pt", "last.pt", ".tmp-x.json", "tmp-2.pt"):
        (tmp_path / name).write_bytes(b"x")
    removed = ckpt.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [".tmp-1.pt", ".tmp-abc.pt"]
    assert sorted(os.listdir(tmp_path)) == [".tmp-x.json", "last.pt", "tmp-2.pt"]
    assert ckpt.remove_stale_temporaries(str(tmp_path)) == []


def test_load_errors_are_one_line_naming_the_file(tmp_path):
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(DataError) as e:
        ckpt.load(missing)
    assert str(e.value) == f"checkpoint not found: {missing}"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a pickle\nsecond line")
    with pytest.raises(DataError) as e:
        ckpt.load(str(bad))
    msg = str(e.value)
    assert msg.startswith(f"{bad}: not a readable checkpoint (") and msg.endswith(")") and "\n" not in msg
    other = tmp_path / "other.pt"
    for obj in ({"weights": 1}, [1, 2]):
        torch.save(obj, other)
        with pytest.raises(DataError) as e:
            ckpt.load(str(other))
        assert str(e.value) == f"{other}: not an mtl-train checkpoint (no 'model' entry)"


def test_find_checkpoint_takes_a_file_or_a_run_directory_in_preference_order(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError) as e:
        ckpt.find_checkpoint(str(run), "trainer.resume")
    assert str(e.value) == f"trainer.resume: no checkpoint (last.pt or best.pt) in {run}/checkpoints"
    (run / "checkpoints" / "best.pt").write_bytes(b"x")
    assert ckpt.find_checkpoint(str(run), "k") == str(run / "checkpoints" / "best.pt")
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    assert ckpt.find_checkpoint(str(run), "k") == str(run / "checkpoints" / "last.pt")
    assert ckpt.find_checkpoint(str(run), "k", prefer=("best.pt", "last.pt")) == str(run / "checkpoints" / "best.pt")
    assert ckpt.find_checkpoint(str(run / "checkpoints"), "k") == str(run / "checkpoints" / "last.pt")  # the folder itself
    assert ckpt.find_checkpoint(str(run / "checkpoints" / "best.pt"), "k") == str(run / "checkpoints" / "best.pt")
    with pytest.raises(ConfigError) as e:
        ckpt.find_checkpoint(str(tmp_path / "gone"), "checkpoint")
    assert str(e.value) == f"checkpoint: no such file or run directory: {tmp_path / 'gone'}"
    rel = os.path.relpath(run / "checkpoints" / "last.pt")
    assert ckpt.find_checkpoint(rel, "k") == str(run / "checkpoints" / "last.pt")  # made absolute


def test_run_dir_of_and_existing_checkpoints(tmp_path):
    assert ckpt.run_dir_of(str(tmp_path / "run" / "checkpoints" / "last.pt")) == str(tmp_path / "run")
    assert ckpt.run_dir_of(str(tmp_path / "elsewhere" / "model.pt")) is None
    assert ckpt.existing_checkpoints(str(tmp_path)) == []
    (tmp_path / "checkpoints").mkdir()
    for name in ("last.pt", "best.pt", "notes.txt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"x")
    assert ckpt.existing_checkpoints(str(tmp_path)) == [str(tmp_path / "checkpoints" / n) for n in ("best.pt", "last.pt")]


def test_all_finite_checks_every_floating_tensor():
    ok = {"w": torch.ones(3), "n": torch.tensor([2**62]), "step": 3}
    assert ckpt.all_finite(ok)
    assert not ckpt.all_finite({**ok, "b": torch.tensor([0.0, float("nan")])})
    assert not ckpt.all_finite({"a": torch.ones(2), "b": torch.tensor([float("-inf")], dtype=torch.float64)})
    assert ckpt.all_finite({})


def test_load_restores_non_tensor_objects_such_as_the_feature_schema(tmp_path):
    from mtl_train.data.schema import FeatureSchema, SparseFeature, Task

    schema = FeatureSchema(sparse=[SparseFeature("u", 5)], dense=[], tasks=[Task("click", "click")])
    path = str(tmp_path / "last.pt")
    ckpt.save_atomic({"model": {}, "schema": schema}, path)
    assert ckpt.load(path)["schema"] == schema  # a pickle, not weights only

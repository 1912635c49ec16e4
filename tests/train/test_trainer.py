"""Runs you can trust, in process: data position, LR schedule, non-finite losses, refusal,
config and data validation, eval/predict modes."""
import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import CENSUS
from hydra import compose, initialize_config_module

from mtl_train.config import validate
from mtl_train.errors import ConfigError, DataError, TrainingError

TINY = ["dataset.train_rows=2000", "dataset.val_rows=400", "dataset.test_rows=400", "dataset.vocab_sizes=[50,50,20]",
        "trainer.progress=false", "trainer.batch_size=64", "trainer.epochs=1", "trainer.device=cpu",
        "model.expert_hidden=[16]", "model.num_experts=2", "model.embedding_dim=4", "graph.tower_hidden=[8]"]


def make_cfg(*overrides):
    with initialize_config_module("mtl_train.conf", version_base="1.3"):
        return validate(compose("config", overrides=list(overrides)))


# ---- data position --------------------------------------------------------------------------
def test_loader_state_resumes_mid_epoch_with_the_same_batches():
    from mtl_train.data.loader import InMemoryLoader
    from mtl_train.data.schema import Table

    n = 103
    table = Table(torch.arange(n).view(n, 1), torch.zeros(n, 0), torch.zeros(n, 1))
    full = InMemoryLoader(table, 10, seed=3)
    full.set_epoch(2)
    want = [b["sparse"].view(-1).tolist() for b in full]
    assert len(want) == 11 and sorted(sum(want, [])) == list(range(n))

    a = InMemoryLoader(table, 10, seed=3)
    a.set_epoch(2)
    it = iter(a)
    first = [next(it)["sparse"].view(-1).tolist() for _ in range(4)]
    state = a.state_dict()
    assert state == {"epoch": 2, "batch": 4, "kind": "memory"}
    b = InMemoryLoader(table, 10, seed=3)
    b.load_state_dict(state)
    rest = [x["sparse"].view(-1).tolist() for x in b]
    assert first + rest == want
    assert b.state_dict() == {"epoch": 2, "batch": 11, "kind": "memory"}
    assert list(b) == []  # an exhausted epoch stays exhausted until set_epoch
    with pytest.raises(DataError, match=r"batch 12 outside \[0, 11\]"):
        b.load_state_dict({"epoch": 0, "batch": 12})
    # a position taken by the streaming loader (dataset.mode=auto chose otherwise) is refused
    with pytest.raises(DataError, match="taken reading the train split streamed; this run reads it in memory, "
                                        "where that position means other rows"):
        b.load_state_dict({"epoch": 0, "batch": 3, "kind": "stream"})
    b.load_state_dict({"epoch": 1, "batch": 0, "kind": "stream"})  # an epoch's start is the same either way
    b.load_state_dict({"epoch": 0, "batch": 3})  # checkpoints of earlier versions hold no kind


# ---- LR schedule ------------------------------------------------------------------------------
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


# ---- non-finite loss ------------------------------------------------------------------------
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


# ---- refusing to overwrite, resume config ---------------------------------------------------
def test_a_directory_with_a_checkpoint_is_refused_unless_resuming(tmp_path):
    from mtl_train.cli import resume_overrides
    from mtl_train.train.trainer import run

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        run(make_cfg(*TINY), str(tmp_path))
    with pytest.raises(ConfigError, match="hydra.run.dir"):
        resume_overrides([f"hydra.run.dir={tmp_path}"])
    (tmp_path / ".hydra").mkdir()
    assert resume_overrides([f"trainer.resume={tmp_path}"]) == [f"hydra.run.dir='{tmp_path}'",
                                                                 "hydra.output_subdir=.hydra/resume-1"]
    assert resume_overrides([f"trainer.resume={tmp_path / 'checkpoints' / 'last.pt'}"])[0] == \
        f"hydra.run.dir='{tmp_path}'"
    with pytest.raises(DataError, match="not a readable checkpoint"):
        run(make_cfg(*TINY, f"trainer.resume={tmp_path}"), str(tmp_path))
    with pytest.raises(ConfigError, match="trainer.resume: no such file or run directory: .*/nope"):
        run(make_cfg(*TINY, f"trainer.resume={tmp_path / 'nope'}"), str(tmp_path / "new"))


def test_resume_config_keeps_the_run_config_and_refuses_changes():
    from omegaconf import OmegaConf

    from mtl_train.train.resume import resume_config

    stored = OmegaConf.to_container(make_cfg("model=ple", "trainer.lr=0.01"))
    current = make_cfg("trainer.resume=/x", "trainer.epochs=4")
    cfg = resume_config(stored, current, ["trainer.resume", "trainer.epochs"])
    assert cfg.model.name == "ple" and cfg.trainer.lr == 0.01 and cfg.trainer.epochs == 4
    assert cfg.trainer.resume == "/x"
    with pytest.raises(ConfigError, match="trainer.lr: differs from the run being resumed"):
        resume_config(stored, make_cfg("trainer.lr=0.1"), ["trainer.lr"])
    with pytest.raises(ConfigError, match="model: differs"):
        resume_config(stored, make_cfg("model=mmoe"), ["model"])


def test_a_finished_run_resumed_with_more_epochs_equals_a_longer_run(tmp_path):
    from mtl_train.train.trainer import run

    run(make_cfg(*TINY, "trainer.epochs=2", "trainer.patience=null"), str(tmp_path / "long"))
    short = tmp_path / "short"
    run(make_cfg(*TINY, "trainer.patience=null"), str(short))
    assert json.loads((short / "run.json").read_text())["steps"] == 32
    run(make_cfg(f"trainer.resume={short}", "trainer.epochs=2"), str(short), ["trainer.resume", "trainer.epochs"])
    assert json.loads((short / "run.json").read_text())["steps"] == 64
    assert (short / "metrics.json").read_bytes() == (tmp_path / "long" / "metrics.json").read_bytes()


# ---- config validation --------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, needle", [
    (["mode=serve"], "mode: 'serve' is not one of train, eval, predict"),
    (["trainer.scheduler=linear"], "trainer.scheduler: 'linear' is not one of none, cosine, step"),
    (["trainer.nonfinite=ignore"], "trainer.nonfinite"),
    (["trainer.checkpoint_every_steps=0"], "trainer.checkpoint_every_steps: must be positive"),
    (["trainer.warmup_steps=-1"], "trainer.warmup_steps: must not be negative"),
    (["trainer.gamma=abc"], "trainer.gamma"),
    (["infer.split=dev"], "infer.split: 'dev'"),
    (["infer.batch_size=0"], "infer.batch_size: must be positive"),
    (["+infer.splt=val"], "infer.splt: unknown key"),
    (["+trainr={}"], "trainr: unknown top-level config key"),
    (["+trainer.lr_decay=1"], "trainer.lr_decay: unknown key"),
])
def test_config_errors_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        make_cfg(*overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_precheck_knows_top_level_keys_and_infer():
    from mtl_train.cli import precheck_overrides

    precheck_overrides(["mode=eval", "checkpoint=/x", "infer.split=val", "trainer.resume=/y"])
    with pytest.raises(ConfigError, match="infer.splt"):
        precheck_overrides(["infer.splt=val"])
    with pytest.raises(ConfigError, match="modee"):
        precheck_overrides(["modee=eval"])
    # Hydra's flags and their values are not overrides: a config dir with '=' in its name,
    # shell completion's install=bash; valid override forms pass the grammar check
    precheck_overrides(["--config-dir", "/tmp/cd=1", "--cfg", "job", "model=ple"])
    precheck_overrides(["-sc", "install=bash"])
    precheck_overrides(["-m", "model=mmoe,ple", "seed=range(3)", "trainer.lr=choice(0.1,0.01)", "+x=1", "~seed",
                        "hydra/sweeper=basic", "dataset=parquet", "dataset.train_path='logs/day=*/p.parquet'",
                        "graph.tower_hidden=[8,4]"])
    with pytest.raises(ConfigError, match="Hydra cannot parse"):
        precheck_overrides(["--config-dir", "/tmp", "dataset.train_path=logs/day=*/p.parquet"])


# ---- data validation -------------------------------------------------------------------------
def test_corrupt_missing_and_incomplete_parquet_files_fail_naming_file_and_column(tmp_path):
    from mtl_train.data.files import read_parquet

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"a": list(range(1000)), "b": [1.0] * 1000}), good)
    assert read_parquet(str(good), ["a"]).num_rows == 1000
    with pytest.raises(DataError, match=r"good.parquet: missing column 'c'"):
        read_parquet(str(good), ["a", "c"])
    with pytest.raises(DataError, match="data file not found: .*nope.parquet"):
        read_parquet(str(tmp_path / "nope.parquet"))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(DataError, match="garbage.parquet: not a readable Parquet file"):
        read_parquet(str(garbage))
    data = good.read_bytes()
    cut = tmp_path / "truncated.parquet"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.parquet"):
        read_parquet(str(cut))
    damaged = tmp_path / "damaged.parquet"  # footer intact, column pages overwritten
    damaged.write_bytes(data[:4] + b"\xff" * (len(data) // 2 - 4) + data[len(data) // 2:])
    with pytest.raises(DataError, match="damaged.parquet"):
        read_parquet(str(damaged))


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


# ---- eval and predict ------------------------------------------------------------------------------
def test_eval_reproduces_metrics_and_scored_predictions_give_the_same_auc(tmp_path):
    from mtl_train.metrics import binary_metrics
    from mtl_train.train.infer import run_eval, run_predict
    from mtl_train.train.trainer import run

    train_dir = tmp_path / "train"
    results = run(make_cfg(*TINY), str(train_dir))
    ev = run_eval(make_cfg("mode=eval", f"checkpoint={train_dir}", "trainer.device=cpu"), str(tmp_path / "ev"))
    assert ev["test"] == results["test"]  # exactly the run's metrics.json entry
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["test"] == json.loads(
        (train_dir / "metrics.json").read_text())["test"]
    out = run_predict(make_cfg("mode=predict", f"checkpoint={train_dir}", "trainer.device=cpu",
                               "infer.id_columns=[c0,c2]"), str(tmp_path / "pr"))
    tbl = pq.read_table(out)
    # one prob/label pair per evaluated output (purchase_given_click: labels only on clicked rows)
    assert tbl.column_names == ["row", "c0", "c2", "prob_click", "label_click", "prob_purchase", "label_purchase",
                                "prob_purchase_given_click", "label_purchase_given_click"]
    assert tbl.num_rows == 400 and tbl.column("row").to_pylist() == list(range(400))
    for task in ("click", "purchase", "purchase_given_click"):
        p = tbl.column(f"prob_{task}").to_numpy()
        y = tbl.column(f"label_{task}").to_numpy(zero_copy_only=False)
        keep = ~np.isnan(y)
        assert binary_metrics(p[keep], y[keep])["auc"] == ev["test"][task]["auc"]
    with pytest.raises(ConfigError, match="infer.input: dataset 'synthetic'"):
        run_eval(make_cfg("mode=eval", f"checkpoint={train_dir}", f"infer.input={out}"), str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="checkpoint: eval and predict need"):
        run_eval(make_cfg("mode=eval"), str(tmp_path / "x"))


@pytest.mark.skipif(not CENSUS.exists(), reason="shared census data not present")
def test_census_eval_and_predict_on_a_file_agree(tmp_path, monkeypatch):
    import gzip

    from mtl_train import io
    from mtl_train.metrics import binary_metrics
    from mtl_train.train.infer import run_eval, run_predict
    from mtl_train.train.trainer import run

    lines = gzip.open(CENSUS, "rt").readlines()
    small, new = tmp_path / "census.csv", tmp_path / "new.csv"  # rows 0..3999 to train on, 4000..7999 as a new file
    small.write_text("".join(lines[:4000]))
    new.write_text("".join(lines[4000:8000]))
    monkeypatch.setattr(io, "_UMASK", 0o022)  # whatever the machine's umask, files must come out 0644
    train_dir = tmp_path / "train"
    run(make_cfg("dataset=census", f"dataset.path={small}", *TINY[4:]), str(train_dir))
    common = [f"checkpoint={train_dir / 'checkpoints' / 'best.pt'}", f"infer.input={new}", "trainer.device=cpu"]
    ev = run_eval(make_cfg("mode=eval", *common), str(tmp_path / "ev"))["input"]
    assert ev["income"]["rows"] == 4000 and ev["marital"]["auc"] > 0.7
    out = run_predict(make_cfg("mode=predict", *common, "infer.id_columns=[age,sex]",
                               f"infer.output={tmp_path / 'p.parquet'}"), str(tmp_path / "pr"))
    tbl = pq.read_table(out)
    assert tbl.column_names[:2] == ["age", "sex"] and tbl.column("sex").to_pylist()[:1][0] in ("Male", "Female")
    for task in ("income", "marital"):
        p = tbl.column(f"prob_{task}").to_numpy()
        y = tbl.column(f"label_{task}").to_numpy(zero_copy_only=False)
        assert binary_metrics(p, y)["auc"] == ev[task]["auc"]
    # files are written with the umask's mode (read at import), not mkstemp's 0600
    for f in (out, train_dir / "checkpoints" / "best.pt", tmp_path / "ev" / "eval.json"):
        assert os.stat(f).st_mode & 0o777 == 0o644, f
    # an existing output is refused before any scoring (the input file always), unless infer.overwrite
    before = new.read_bytes()
    with pytest.raises(ConfigError, match=r"infer.output: .*new.csv is the input file \(infer.input\)"):
        run_predict(make_cfg("mode=predict", *common, f"infer.output={new}", "infer.overwrite=true"), str(tmp_path / "x"))
    monkeypatch.setenv("HOME", str(tmp_path))  # the same file named through ~ and through a relative path
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"is the input file"):
        run_predict(make_cfg("mode=predict", *common[:1], "infer.input='~/new.csv'", "trainer.device=cpu",
                             "infer.output=new.csv", "infer.overwrite=true"), str(tmp_path / "x"))
    assert new.read_bytes() == before
    with pytest.raises(ConfigError, match=r"p.parquet exists; choose another path or set infer.overwrite=true"):
        run_predict(make_cfg("mode=predict", *common, f"infer.output={out}"), str(tmp_path / "x"))
    with pytest.raises(ConfigError, match=r"metrics.json exists"):
        run_eval(make_cfg("mode=eval", *common, f"infer.output={train_dir / 'metrics.json'}"), str(tmp_path / "x"))
    with pytest.raises(ConfigError, match=r"unknown extension '.txt' \(this mode writes .csv, .parquet, .pq\)"):
        run_predict(make_cfg("mode=predict", *common, f"infer.output={tmp_path / 'p.txt'}"), str(tmp_path / "x"))
    run_predict(make_cfg("mode=predict", *common, f"infer.output={out}", "infer.overwrite=true"), str(tmp_path / "x"))
    # *.csv writes CSV, with the same columns and values
    csv_out = run_predict(make_cfg("mode=predict", *common, "infer.id_columns=[age,sex]",
                                   f"infer.output={tmp_path / 'p.csv'}"), str(tmp_path / "x"))
    import pyarrow.csv as pcsv

    csv = pcsv.read_csv(csv_out)
    assert csv.column_names == tbl.column_names and csv.num_rows == 4000
    assert np.allclose(csv.column("prob_income").to_numpy(), tbl.column("prob_income").to_numpy(), atol=1e-6)


# ---- GAUC -------------------------------------------------------------------------------------
def test_gauc_groups_by_a_feature_and_leaves_out_null_and_oov_ids():
    from mtl_train.data.datasets import load_dataset
    from mtl_train.data.schema import OOV_ID
    from mtl_train.metrics import group_auc
    from mtl_train.train.evaluate import evaluate
    from mtl_train.train.infer import predict_table
    from mtl_train.train.trainer import Trainer

    cfg = make_cfg(*TINY, "trainer.gauc_by=c2", "trainer.monitor=gauc/mean")
    data = load_dataset(cfg.dataset, cfg.seed)
    val = data.val
    val.sparse[:50, 2] = OOV_ID  # as if 50 rows came from users never seen in training
    val.sparse[50:60, 2] = 0  # null ids
    tr = Trainer(cfg, data, "/tmp/unused-gauc-run")
    m = evaluate(tr.model, val, tr.device, 128, "val", tr.gauc_index)["click"]
    # the same numbers from the row-order predictions, grouped by hand
    score, label, _ = predict_table(tr.model, val, tr.device, 128)["click"]
    g = val.sparse[:, 2].numpy()
    want = group_auc(score[60:], label[60:], g[60:])
    assert m["gauc_rows"] == want["gauc_rows"] and m["gauc_groups"] == want["gauc_groups"]
    assert m["gauc"] == pytest.approx(want["gauc"], abs=1e-12)
    # with the OOV and null rows as groups of their own the value would differ
    assert group_auc(score, label, g)["gauc_rows"] > m["gauc_rows"]
    assert m["auc"] is not None and m["rows"] == len(val)  # the plain metrics keep every row
    with pytest.raises(ConfigError, match="trainer.gauc_by: no categorical feature 'user'"):
        Trainer(make_cfg(*TINY, "trainer.gauc_by=user"), data, "/tmp/unused-gauc-run")
    with pytest.raises(ConfigError, match="trainer.monitor: gauc needs trainer.gauc_by"):
        Trainer(make_cfg(*TINY, "trainer.monitor=gauc/click"), data, "/tmp/unused-gauc-run")


def test_a_parquet_run_resumed_where_mode_auto_would_stream_reads_as_the_interrupted_run(tmp_path, monkeypatch):
    # the data position {epoch, batch} depends on how the train split is read; a machine with less
    # memory would make dataset.mode=auto stream it, repeating some rows and skipping others
    from omegaconf import OmegaConf
    from test_parquet import SCHEMA, write_log

    from mtl_train.data import parquet as pqd
    from mtl_train.train.trainer import run

    write_log(tmp_path / "train.parquet", 600, 0)
    write_log(tmp_path / "val.parquet", 200, 1)
    (tmp_path / "schema.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(SCHEMA)))
    common = ["dataset=parquet", f"dataset.train_path={tmp_path / 'train.parquet'}",
              f"dataset.val_path={tmp_path / 'val.parquet'}", f"dataset.schema_file={tmp_path / 'schema.yaml'}",
              f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.progress=false", "trainer.progress=false",
              "trainer.batch_size=64", "trainer.epochs=1", "trainer.patience=null", "trainer.device=cpu",
              "model.expert_hidden=[8]", "model.num_experts=2"]
    run(make_cfg(*common), str(tmp_path / "whole"))
    part = tmp_path / "part"
    run(make_cfg(*common, "trainer.max_steps=3"), str(part))
    assert torch.load(part / "checkpoints" / "last.pt", weights_only=False)["data"]["kind"] == "memory"
    monkeypatch.setattr(pqd, "memory_budget", lambda mb: 1)  # now mode=auto would stream every split
    run(make_cfg(f"trainer.resume={part}", "trainer.max_steps=null"), str(part), ["trainer.resume", "trainer.max_steps"])
    # the same rows in the same order: the final weights equal the uninterrupted run's (the labels of
    # write_log are random, so best.pt, which the extra evaluation at step 3 may pick, is not compared)
    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=False) for d in (tmp_path / "whole", part))
    assert a["step"] == b["step"] == 9 and a["data"] == b["data"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])

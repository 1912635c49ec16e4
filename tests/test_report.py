"""mtl-report on folders that are not one sweep: single runs, several sweeps, a sweep plus runs."""
import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

TINY = ["dataset.train_rows=2000", "dataset.val_rows=500", "dataset.test_rows=500", "trainer.epochs=1",
        "trainer.progress=false"]


def _report(folder: Path, out: Path, *extra) -> list[dict]:
    from mtl_train import report

    report.main([str(folder), "--out", str(out / "rep"), *extra])
    with open(out / "rep.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Three separate single runs in one folder: the default learning rate twice (the same command
    run twice), and trainer.lr=0.01 once."""
    root = tmp_path_factory.mktemp("runs")
    for name, extra in (("a", []), ("b", ["trainer.lr=0.01"]), ("c", [])):
        run_cli([*TINY, *extra, f"hydra.run.dir=runs/{name}"], cwd=root)
    return root / "runs"


def test_separate_runs_that_differ_get_a_row_each(runs, tmp_path, capsys):
    rows = _report(runs, tmp_path)
    out = capsys.readouterr().out
    # a and c are the same command: not seeds of one row, so each run is a row; b differs in trainer.lr
    assert "3 jobs (3 single runs, no sweep), axes: trainer.lr; one job per row" in out
    assert [(r["trainer.lr"], r["source"], r["n"]) for r in rows] == [("0.001", "a", "1"), ("0.01", "b", "1"),
                                                                      ("0.001", "c", "1")]
    for r in rows:  # each row is its run's metrics.json, with no std
        m = json.loads((runs / r["source"] / "metrics.json").read_text())
        assert float(r["test/auc/click_mean"]) == m["test"]["click"]["auc"] and r["test/auc/click_std"] == ""
    assert rows[0]["test/auc/click_mean"] == rows[2]["test/auc/click_mean"]  # same command, same numbers
    assert rows[0]["test/auc/click_mean"] != rows[1]["test/auc/click_mean"]
    assert "±" not in out
    assert (tmp_path / "rep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # matplotlib is a dependency


def test_two_separate_runs_differing_in_an_override(runs, tmp_path, capsys):
    two = tmp_path / "two"
    for name in ("a", "b"):
        shutil.copytree(runs / name, two / name)
    rows = _report(two, tmp_path)
    out = capsys.readouterr().out
    assert "2 jobs (2 single runs, no sweep), axes: trainer.lr; one job per row" in out
    assert [(r["trainer.lr"], r["n"], r["jobs"]) for r in rows] == [("0.001", "1", "1"), ("0.01", "1", "1")]
    assert "source" not in rows[0]  # no two runs share their values: the axis names each row


def _fake(root: Path, name: str, overrides: list[str], auc: float | None, *, seed: int = 0, single: bool = False,
          mode: str = "train", lr: float = 0.001):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(f"mode: {mode}\nseed: {seed}\ntrainer:\n  lr: {lr}\nmodel:\n  name: x\n")
    choice = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "mmoe")
    (d / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  mode: {'RUN' if single else 'MULTIRUN'}\n  runtime:\n    choices:\n      model: {choice}\n"
        "      hydra/launcher: basic\n")
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if auc is not None:
        (d / "metrics.json").write_text(json.dumps({"val": {"a": {"auc": auc}}, "test": {"a": {"auc": auc}}}))


def test_sweep_plus_single_run_repeating_a_job(tmp_path, capsys):
    f = tmp_path / "f"
    _fake(f, "sw/0_x", ["model=mmoe", "seed=0"], 0.70)
    _fake(f, "sw/1_x", ["model=mmoe", "seed=1"], 0.80)
    _fake(f, "sw/2_x", ["model=ple", "seed=0"], 0.60)
    _fake(f, "sw/3_x", ["model=ple", "seed=1"], 0.62)
    _fake(f, "run1", [], 0.71, single=True)                       # model and seed at their defaults: mmoe, 0
    _fake(f, "run2", ["model=ple", "seed=2"], 0.64, seed=2, single=True)
    _fake(f, "ev", ["mode=eval"], None, mode="eval", single=True)  # an eval run: no training metrics
    rows = _report(f, tmp_path)
    out = capsys.readouterr().out
    assert "6 jobs (1 sweep and 2 single runs), axes: model, seed; mean ± std (sample, ddof=1) over seeds 0, 1" in out
    assert "left out 1 eval/predict run(s): ev" in out
    got = [(r["model"], r["source"], r["n"], round(float(r["val/auc/a_mean"]), 6)) for r in rows]
    # run1 repeats the sweep's mmoe seed 0: it gets its own row; run2 (seed 2) adds a seed to ple's row
    assert got == [("mmoe", "run1", "1", 0.71), ("ple", "run2, sw", "3", 0.62), ("mmoe", "sw", "2", 0.75)]
    assert float(rows[1]["val/auc/a_std"]) == pytest.approx(0.02)


def test_two_sweeps_pool_their_seeds_and_defaults_compare_by_value(tmp_path, capsys):
    f = tmp_path / "f"
    _fake(f, "s1/0_x", ["model=mmoe", "seed=0", "trainer.lr=1e-3"], 0.70)
    _fake(f, "s1/1_x", ["model=mmoe", "seed=1", "trainer.lr=1e-3"], 0.72)
    _fake(f, "s2/0_x", ["seed=2"], 0.74, seed=2)                   # lr and model left at their defaults
    _fake(f, "s2/1_x", ["seed=3", "trainer.lr=0.01"], 0.50, seed=3, lr=0.01)
    rows = _report(f, tmp_path)
    out = capsys.readouterr().out
    assert "4 jobs (2 sweeps), axes: seed, trainer.lr; mean ± std" in out  # model=mmoe is the default: no axis
    assert [(r["trainer.lr"], r["n"]) for r in rows] == [("1e-3", "3"), ("0.01", "1")]
    assert "source" not in rows[0]
    assert float(rows[0]["val/auc/a_mean"]) == pytest.approx(0.72)


def test_one_sweep_report_is_unchanged(tmp_path, capsys):
    f = tmp_path / "sw"
    _fake(f, "0_x", ["model=mmoe", "seed=0"], 0.70)
    _fake(f, "1_x", ["model=mmoe", "seed=1"], 0.80)
    rows = _report(f, tmp_path)
    out = capsys.readouterr().out
    assert out.startswith(f"{f}: 2 jobs, axes: seed; mean ± std (sample, ddof=1) over seeds 0, 1")
    assert [(r["n"], r["jobs"]) for r in rows] == [("2", "2")] and "source" not in rows[0]

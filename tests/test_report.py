"""mtl-report (mtl_train.report) on hand-made run folders: single runs, several sweeps, failed jobs."""
import json
from pathlib import Path

import pytest
from helpers import _report


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


def _fake_job(root: Path, name: str, overrides: list[str], metrics: dict | None, error: str | None = None):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (d / "error.txt").write_text(error + "\n")


def test_report_hand_computed_and_failed_jobs(tmp_path, capsys):
    sw = tmp_path / "sw"

    def m(auc, logloss):
        return {"val": {"a": {"auc": auc, "logloss": logloss}}, "test": {"a": {"auc": None, "logloss": logloss}}}

    _fake_job(sw, "0_x", ["model=mmoe", "seed=0", "trainer.lr=0.1"], m(0.7, 0.5))
    _fake_job(sw, "1_x", ["model=mmoe", "seed=1", "trainer.lr=0.1"], m(0.8, 0.3))
    _fake_job(sw, "2_x", ["model=mmoe", "seed=2", "trainer.lr=0.1"], m(0.9, 0.4))
    _fake_job(sw, "3_x", ["model=single_task", "seed=0", "trainer.lr=0.1"], None, "loss=gradnorm: no shared layer")
    _fake_job(sw, "4_x", ["model=single_task", "seed=1", "trainer.lr=0.1"], None, "loss=gradnorm: no shared layer")
    _fake_job(sw, "5_x", ["model=single_task", "seed=2", "trainer.lr=0.1"], None)  # still running
    rows = _report(sw, tmp_path, "--splits", "val")
    out = capsys.readouterr().out
    assert "axes: model, seed" in out  # trainer.lr did not vary: not an axis
    mm, st = rows
    assert (mm["model"], mm["n"], mm["jobs"], mm["failed"]) == ("mmoe", "3", "3", "0")
    assert float(mm["val/auc/a_mean"]) == pytest.approx(0.8)
    assert float(mm["val/auc/a_std"]) == pytest.approx(0.1)  # sample std of 0.7, 0.8, 0.9
    assert float(mm["val/logloss/a_std"]) == pytest.approx(0.1)
    assert mm["test/auc/a_mean"] == "" and float(mm["test/logloss/a_mean"]) == pytest.approx(0.4)
    assert (st["n"], st["failed"], st["val/auc/a_mean"]) == ("0", "3", "")
    line = next(line for line in out.splitlines() if line.startswith("single_task"))
    assert "0/3" in line and "loss=gradnorm: no shared layer" in line and "running or killed" in line
    assert "0.8000 ± 0.1000" in out


def test_report_bad_directory_is_one_line(tmp_path, capsys):
    from mtl_train import report

    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path / "nope")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mtl-report: error:") and "nope" in err[0]


def _gates(weights, experts, gates, level=0):
    return {"level": level, "experts": experts, "gates": gates, "weight": weights, "unused_share": 0.25,
            "collapsed": None}


def test_gate_heatmaps_per_job_and_level(tmp_path, capsys):
    from mtl_train import report

    f = tmp_path / "sw"
    _fake(f, "0_x", ["model=mmoe", "seed=0"], 0.70)
    _fake(f, "1_x", ["model=ple", "seed=0"], 0.60)
    _fake(f, "2_x", ["model=shared_bottom", "seed=0"], 0.65)  # no gates: no heatmap
    mmoe = [_gates([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]], ["e0", "e1", "e2", "e3"], ["a", "b"])]
    ple = [_gates([[0.5, None, 0.5], [None, 0.4, 0.6], [0.2, 0.3, 0.5]], ["a_e0", "b_e0", "shared_e0"],
                  ["a", "b", "shared"]),
           _gates([[0.9, None, 0.1], [None, 0.5, 0.5]], ["a_e0", "b_e0", "shared_e0"], ["a", "b"], level=1)]
    for name, levels in (("0_x", mmoe), ("1_x", ple)):
        (f / name / "run.json").write_text(json.dumps({"diagnostics": {"gates_final": {"test": levels, "val": levels}}}))
    rep = report.build_report(f)
    assert [j.gates.get("test") is not None for j in rep.jobs] == [True, True, False]
    assert rep.jobs[1].gates["test"][1]["weight"][0] == [0.9, None, 0.1]
    _report(f, tmp_path)
    out = capsys.readouterr().out
    png = tmp_path / "rep_gates.png"
    assert str(png) in out and png.stat().st_size > 5000
    from matplotlib.image import imread

    h, w = imread(png).shape[:2]
    assert h > w / 3  # two job rows, two level columns


def test_no_gate_heatmap_without_gate_data(tmp_path):
    from mtl_train import report

    f = tmp_path / "sw"
    _fake(f, "0_x", ["model=mmoe", "seed=0"], 0.70)
    (f / "0_x" / "run.json").write_text("{not json")
    rep = report.build_report(f)
    assert rep.jobs[0].gates == {} and not report.write_gate_heatmaps(rep, tmp_path / "g.png")

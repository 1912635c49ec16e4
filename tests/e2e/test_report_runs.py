"""End-to-end: mtl-report on separate single runs."""
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli
from helpers import _report

TINY = ["dataset.train_rows=2000", "dataset.val_rows=500", "dataset.test_rows=500", "trainer.epochs=1",
        "trainer.progress=false"]


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

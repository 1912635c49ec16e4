"""Sweeps: TensorBoard HPARAMS rows per job, the sweep report, failing jobs, the Optuna sweeper."""
import csv
import json
import statistics
from pathlib import Path

import pytest
from conftest import CENSUS, REPO, run_cli
from helpers import _report

TINY = ["dataset.train_rows=1500", "dataset.val_rows=400", "dataset.test_rows=400", "trainer.progress=false",
        "trainer.batch_size=128", "trainer.epochs=1", "trainer.eval_batch_size=4096"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """6 jobs in one process: shared_bottom, mmoe, single_task x seeds 0, 1 with GradNorm on tiny
    synthetic data; the two single_task jobs fail (GradNorm needs a shared layer)."""
    root = tmp_path_factory.mktemp("sweep")
    # scripts/leak_check.py's probe records open files and threads after every job
    env = {"PYTHONPATH": str(REPO / "scripts"), "MTL_LEAK_PROBE_OUT": str(root / "probe.jsonl")}
    proc = run_cli(["-m", "model=shared_bottom,mmoe,single_task", "seed=0,1", "loss=gradnorm", *TINY,
                    "hydra.sweep.dir=sw", "+hydra.callbacks.leak_probe._target_=leak_check.LeakProbe"],
                   cwd=root, check=False, env=env)
    # a job's bad input ends that job only: the sweep goes on, then exits 2 naming the failed jobs
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mtl-train: error: 2 job(s)") and "4_single_task_independent_gradnorm_seed0" in last
    return root / "sw"


def _jobs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/metrics.json"))


def test_every_job_is_one_hparams_row_with_its_final_metrics(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    jobs = _jobs(sweep)
    assert [j.name for j in jobs] == ["0_shared_bottom_independent_gradnorm_seed0",
                                      "1_shared_bottom_independent_gradnorm_seed1",
                                      "2_mmoe_independent_gradnorm_seed0", "3_mmoe_independent_gradnorm_seed1"]
    for job in jobs:
        # the job's events sit in its own directory under the sweep: one run of `--logdir <sweep>`
        events = list(job.glob("tb/events.out.tfevents.*"))
        assert len(events) == 1, events  # one event file: no sub-run for the hparams
        acc = EventAccumulator(str(job / "tb"), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        assert set(content) == {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert start.group_name == job.name and end.status == api_pb2.STATUS_SUCCESS
        hp = start.hparams
        model = "mmoe" if "mmoe" in job.name else "shared_bottom"
        assert hp["model.name"].string_value == model  # nested keys flattened
        assert hp["seed"].number_value == float(job.name[-1])
        assert hp["loss.alpha"].number_value == 1.5 and hp["trainer.batch_size"].number_value == 128
        assert hp["dataset.vocab_sizes"].string_value.startswith("[10000, 10000, 1000")  # lists as strings
        assert hp["trainer.max_steps"].string_value == "None"  # None readable
        if model == "mmoe":
            assert hp["model.expert_hidden"].string_value == "[64, 32]" and hp["model.num_gates"].string_value == "None"
        else:
            assert hp["model.hidden"].string_value == "[128, 64]" and "model.num_experts" not in hp

        metrics = json.loads((job / "metrics.json").read_text())
        tags = set(acc.Tags()["scalars"])
        final = {t for t in tags if t.startswith("hparams/")}
        assert final == {f"hparams/{s}/{m}/{t}" for s in ("val", "test") for m in ("auc", "logloss")
                         for t in ("click", "purchase", "purchase_given_click")}  # every evaluated output
        for tag in final:
            _, split, metric, task = tag.split("/")
            (event,) = acc.Scalars(tag)  # one value per metric tag
            assert event.value == pytest.approx(metrics[split][task][metric], abs=1e-6)
            assert f"{split}/{metric}/{task}" in tags  # the curve lives under its own tag


def test_report_averages_seeds_of_the_sweep(sweep, tmp_path, capsys):
    rows = _report(sweep, tmp_path)
    out = capsys.readouterr().out
    assert "axes: model, seed" in out and "over seeds 0, 1" in out
    assert [r["model"] for r in rows] == ["shared_bottom", "mmoe", "single_task"]
    assert (rows[2]["n"], rows[2]["failed"], rows[2]["test/auc/click_mean"]) == ("0", "2", "")
    jobs = _jobs(sweep)
    for row in rows[:2]:
        assert row["n"] == "2" and row["failed"] == "0"
        ms = [json.loads((j / "metrics.json").read_text()) for j in jobs if f"_{row['model']}_" in j.name]
        for split in ("val", "test"):
            for task in ("click", "purchase"):
                for metric in ("auc", "logloss"):
                    vals = [m[split][task][metric] for m in ms]
                    col = f"{split}/{metric}/{task}"
                    assert float(row[f"{col}_mean"]) == pytest.approx(statistics.fmean(vals), abs=1e-12)
                    assert float(row[f"{col}_std"]) == pytest.approx(statistics.stdev(vals), abs=1e-12)
        line = next(line for line in out.splitlines() if line.startswith(row["model"] + " "))
        m, s = float(row["test/auc/click_mean"]), float(row["test/auc/click_std"])
        assert f"{m:.4f} ± {s:.4f}" in line
    runs = list(csv.DictReader(open(tmp_path / "rep_runs.csv")))
    assert [r["job"] for r in runs] == [j.name for j in jobs] + [
        "4_single_task_independent_gradnorm_seed0", "5_single_task_independent_gradnorm_seed1"]
    assert runs[4]["error"].startswith("loss=gradnorm")
    assert (tmp_path / "rep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "rep.md").read_text().count("\n| ") == 4  # header + 3 rows (the separator starts "|-")


def test_nothing_leaks_from_job_to_job(sweep):
    """Event writers (and their threads) are closed after each job, also after a failed job; the
    full 50-job measurement is scripts/leak_check.py."""
    samples = [json.loads(line) for line in (sweep.parent / "probe.jsonl").read_text().splitlines()]
    assert len(samples) == 6
    for later in samples[2:]:
        assert later["open_files"] <= samples[1]["open_files"]
        assert later["threads"] <= samples[1]["threads"]


def test_a_failing_job_writes_its_error_and_no_metrics(sweep):
    for seed in (0, 1):
        job = sweep / f"{4 + seed}_single_task_independent_gradnorm_seed{seed}"
        assert "shares no layer" in (job / "error.txt").read_text()
        assert not (job / "metrics.json").exists()


@pytest.mark.skipif(not CENSUS.exists(), reason="shared census data not present")
def test_optuna_example_searches_returns_the_objective_and_persists_in_sqlite(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed")
    import yaml

    run_cli(["-m", "experiment=census_optuna", f"dataset.path={CENSUS}", "dataset.max_rows=600",
             "hydra.sweeper.n_trials=2", "trainer.batch_size=64", "trainer.epochs=1", "model.expert_hidden=[8]",
             "hydra.sweep.dir=sw", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}"], cwd=tmp_path)
    sw = tmp_path / "sw"
    best = yaml.safe_load((sw / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"trainer.lr", "model.num_experts", "loss.alpha"}
    values = {}
    for job in sorted(sw.glob("*/metrics.json")):
        m = json.loads(job.read_text())
        values[job.parent.name] = m["val"]["income"]["auc"] + m["val"]["marital"]["auc"]  # objective: both, weight 1
        overrides = yaml.safe_load((job.parent / ".hydra/overrides.yaml").read_text())
        assert any(o.startswith("loss.alpha=") for o in overrides)
        assert 2 <= int(next(o for o in overrides if o.startswith("model.num_experts=")).split("=")[1]) <= 8
    assert len(values) == 2
    assert best["best_value"] == pytest.approx(max(values.values()), abs=1e-9)
    # the study persisted in its SQL storage (a later sweep with the same storage continues it)
    import optuna

    study = optuna.load_study(study_name="census_mmoe_gradnorm", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(values.values()), abs=1e-9)

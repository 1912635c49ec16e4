"""``mtl-report <folder>``: the runs of a sweep (or of any folder of runs) as one table, CSV files and a plot.

    mtl-train -m experiment=census_compare hydra.sweep.dir=multirun/census_compare
    mtl-report multirun/census_compare                      # table on stdout; report.{md,csv,png} + runs.csv there
    mtl-report multirun/census_compare --out docs/census_compare --plot-split test --plot-metric auc

A job is a sub-directory of the sweep with ``.hydra/config.yaml``; its metrics come from its
``metrics.json`` (the exact per-task val/test metrics the run wrote) and its swept values from
``.hydra/overrides.yaml``. The table's axes are the overrides whose values differ between jobs;
``seed``, when it is one of them, is averaged over: each row then holds mean +- std over the seeds
(std: sample standard deviation, ``ddof=1``; empty for one seed) and ``n``, the number of seeds
with a value. A job that failed (``error.txt``, see :func:`mtl_train.cli._run_failed`) or is
still running (no ``metrics.json``) counts in ``failed``/``missing`` and never in a mean.

The folder may also hold single runs (``outputs/``), several sweeps, or a sweep plus single runs.
A job without an override compares with its effective value (its config group option or composed
config value: ``mtl-train`` and ``mtl-train model=mmoe`` ran the same model). A row only averages
jobs with different seeds; jobs that share every value, seed included (the same command run
twice, a single run repeating a sweep's job), come from different sources and get a row each,
named in a ``source`` column (the sweep directory, or the run's directory). The first line says
what the folder holds (``2 single runs, no sweep``). Eval and predict runs are left out (named).

Files written (``--out PREFIX``, default ``<sweep dir>/report``): ``PREFIX.csv`` (one row per
table row: axes, n, failed, missing, ``<split>/<metric>/<task>`` mean and std), ``PREFIX_runs.csv``
(one row per job), ``PREFIX.md`` (the table in Markdown) and ``PREFIX.png`` (per-task
``--plot-metric`` on ``--plot-split`` by the first axis, one marker per value of the other axes,
error bars = std over seeds; matplotlib, a dependency of mtl-train, draws it) and, where jobs have
gates (MMoE, OMoE, CGC, PLE), ``PREFIX_gates.png``: per job and level, a heatmap of the mean gate
weight of each task on each expert on ``--plot-split`` (run.json ``diagnostics.gates_final``).

Errors (one line ``mtl-report: error: ...``, exit status 2): a missing sweep directory, a
directory without jobs, an unreadable ``metrics.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mtl_train import extras
from mtl_train.errors import MtlError
from mtl_train.metrics import METRICS

SPLITS = ("val", "test")


class ReportError(MtlError):
    """The sweep directory is missing, holds no job, or a job's files are unreadable."""


@dataclass
class Job:
    """One job of a sweep, or one single run: its directory, overrides, composed config and metrics."""

    name: str
    path: Path
    overrides: dict[str, str]
    metrics: dict | None  # {"val"|"test": {task: {"auc": ..., ...}}}; None: failed or missing
    error: str | None = None
    config: object = None  # the composed config (.hydra/config.yaml), None when unreadable
    choices: dict[str, str] = field(default_factory=dict)  # config group -> option (.hydra/hydra.yaml)
    source: str = "."  # the sweep directory of a sweep job, the run directory of a single run (relative)
    single: bool = False  # a single run (Hydra mode RUN), not a job of a sweep
    gates: dict = field(default_factory=dict)  # run.json diagnostics.gates_final: {split: [gate levels]}

    def value(self, key: str):
        """The value ``key`` had in this job, as a comparable string (JSON), or None when unknown:
        the job's override if it has one, else its config group option, else its composed config's
        value. So a run that left ``trainer.epochs`` at its default compares equal to one that set
        it to that default."""
        if key in self.overrides:
            return _canonical(_override_value(key, self.overrides[key]))
        if key in self.choices:
            return _canonical(self.choices[key])
        if self.config is None:
            return None
        try:
            node = OmegaConf.select(self.config, key, throw_on_missing=False)
            if node is None or (isinstance(node, DictConfig) and not self.choices):
                return None  # unknown (or a config group of a job without hydra.yaml)
            return _canonical(OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node)
        except Exception:  # an interpolation that cannot resolve outside the run
            return None

    def shown(self, key: str) -> str:
        """``key``'s value as the table shows it: the override's text, else the effective value."""
        if key in self.overrides:
            return self.overrides[key]
        v = self.value(key)
        if v is None:
            return ""
        v = json.loads(v)
        return v if isinstance(v, str) else "null" if v is None else json.dumps(v).replace('"', "")


_PARSER = None


def _override_value(key: str, text: str):
    """The value of ``key=text`` as Hydra parses it (``1e-3`` -> 0.001), the text when it does not parse."""
    global _PARSER
    try:
        if _PARSER is None:
            from hydra.core.override_parser.overrides_parser import OverridesParser

            _PARSER = OverridesParser.create()
        return _PARSER.parse_overrides([f"{key}={text}"])[0].value()
    except Exception:
        return text


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class Row:
    """One row of the table: the jobs that share every axis value but the seed (each with its own
    seed; jobs that repeat a seed with the same values come from different sources and get a row each)."""

    key: tuple[str, ...]
    jobs: list[Job] = field(default_factory=list)


def _parse_override(text: str) -> tuple[str, str] | None:
    text = text.strip()
    if "=" not in text or text.startswith("~"):
        return None
    key, value = text.split("=", 1)
    return key.lstrip("+"), value


def _load_yaml(path: Path):
    try:
        return OmegaConf.load(path) if path.exists() else None
    except Exception:  # a half-written file of a running job: the report goes on without it
        return None


def load_jobs(sweep_dir: str | os.PathLike, skipped: list[Path] | None = None) -> list[Job]:
    """Every training run under ``sweep_dir`` (directories holding ``.hydra/config.yaml``): the jobs
    of one or more sweeps, single runs, or both. A sweep job's source is its sweep directory, a
    single run's (``hydra.mode: RUN`` in its ``.hydra/hydra.yaml``) its own directory. Eval and
    predict runs (``mode=eval|predict``) are left out and appended to ``skipped``. Jobs come in the
    order of their Hydra job number (the leading ``<num>_`` of the directory name), else by name.

    Raises:
        ReportError: no such directory, no job in it, or an unreadable ``metrics.json``.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ReportError(f"{root}: no such sweep directory")
    jobs = []
    for cfg in sorted(root.rglob(".hydra/config.yaml")):
        d = cfg.parent.parent
        if d == root:
            continue
        config = _load_yaml(cfg)
        if config is not None and config.get("mode", "train") not in ("train", None):
            if skipped is not None:
                skipped.append(d)
            continue
        hydra_cfg = _load_yaml(d / ".hydra" / "hydra.yaml")
        choices, single = {}, False
        if hydra_cfg is not None:
            h = hydra_cfg.get("hydra", {})
            single = str(h.get("mode", "")) == "RUN"
            choices = {k: v for k, v in (OmegaConf.to_container(h.get("runtime", {}).get("choices", {})) or {}).items()
                       if "/" not in k}
        source = d if single else d.parent
        ov_path = d / ".hydra" / "overrides.yaml"
        overrides = {}
        if ov_path.exists():
            for item in OmegaConf.to_container(OmegaConf.load(ov_path)) or []:
                kv = _parse_override(str(item))
                if kv:
                    overrides[kv[0]] = kv[1]
        metrics, error = None, None
        if (d / "metrics.json").exists():
            try:
                metrics = json.loads((d / "metrics.json").read_text())
            except (OSError, ValueError) as e:
                raise ReportError(f"{d / 'metrics.json'}: unreadable ({e})") from None
        elif (d / "error.txt").exists():
            text = (d / "error.txt").read_text().strip()
            error = text.splitlines()[0] if text else "failed"
        jobs.append(Job(str(d.relative_to(root)), d, overrides, metrics, error, config, choices,
                        str(source.relative_to(root)), single, _final_gates(d)))
    if not jobs:
        raise ReportError(f"{root}: no job directories (with .hydra/config.yaml) in this sweep")

    def order(j: Job):  # a sweep's jobs by job number (10_ after 9_), also in a folder of several sweeps
        head = j.path.name.split("_", 1)[0]
        return (j.source, 0, int(head), j.name) if head.isdigit() else (j.source, 1, 0, j.name)

    return sorted(jobs, key=order)


def _final_gates(run_dir: Path) -> dict:
    """run.json's ``diagnostics.gates_final`` ({split: levels}, see mtl_train/models/gates.py), or {}
    (no run.json yet, an older run, a backbone without gates, an unreadable file)."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
        gates = (info.get("diagnostics") or {}).get("gates_final") or {}
        return gates if isinstance(gates, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def sweep_axes(jobs: list[Job]) -> list[str]:
    """The override keys whose values differ between jobs, in the order they first appear. A job
    without that override counts with its effective value (:meth:`Job.value`)."""
    keys: list[str] = []
    for j in jobs:
        for k in j.overrides:
            if k not in keys:
                keys.append(k)
    return [k for k in keys if len({j.value(k) for j in jobs}) > 1]


def metric_columns(jobs: list[Job]) -> list[str]:
    """``<split>/<metric>/<task>`` for every metric any job has, splits then metrics then tasks."""
    found = set()
    tasks: list[str] = []
    for j in jobs:
        for split, per in (j.metrics or {}).items():
            for task, m in per.items():
                if task not in tasks:
                    tasks.append(task)
                for metric in METRICS:
                    if metric in m:
                        found.add((split, metric, task))
    return [f"{s}/{m}/{t}" for s in SPLITS for m in METRICS for t in tasks if (s, m, t) in found]


def job_value(job: Job, column: str) -> float | None:
    if job.metrics is None:
        return None
    split, metric, task = column.split("/", 2)
    v = job.metrics.get(split, {}).get(task, {}).get(metric)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def group_rows(jobs: list[Job], axes: list[str], over: str = "seed") -> tuple[list[Row], bool]:
    """Jobs grouped by every axis but ``over``, rows in the order of their first job.

    A row averages over ``over`` only: where two jobs of a group share its value too (two single
    runs of the same command, a sweep and a run that repeats one of its jobs), they are not
    replicates, and the group is split by source (sweep directory or single run), a row each.
    Returns the rows (their key: the shown value of each axis but ``over``, then the source when
    split) and whether any group was split (the table then has a ``source`` column).
    """
    group_axes = [a for a in axes if a != over]
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        groups.setdefault(tuple(j.value(a) for a in group_axes), []).append(j)
    parts: list[list[Job]] = []
    split = False
    for members in groups.values():
        if len({j.value(over) for j in members}) == len(members):
            parts.append(members)
            continue
        split = True
        by_source: dict[str, list[Job]] = {}
        for j in members:
            by_source.setdefault(j.source, []).append(j)
        for sub in by_source.values():
            if len({j.value(over) for j in sub}) == len(sub):
                parts.append(sub)
            else:  # one source repeating a value of `over` (hand-made directories): a row per job
                parts += [[j] for j in sub]
    parts.sort(key=lambda part: jobs.index(part[0]))
    rows = []
    for part in parts:
        key = tuple(part[0].shown(a) for a in group_axes)
        if split:
            key += (", ".join(dict.fromkeys(_source_name(j) for j in part)),)
        rows.append(Row(key, part))
    return rows, split


def _source_name(job: Job) -> str:
    return job.source if job.source != "." else job.path.parent.name


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``ddof=1``; None for fewer than two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Report:
    sweep_dir: Path
    jobs: list[Job]
    axes: list[str]          # swept keys, seed included when swept
    group_axes: list[str]    # the columns naming a row: the axes but seed, then "source" when a group was split
    columns: list[str]       # <split>/<metric>/<task>
    rows: list[Row]
    skipped: list[Path] = field(default_factory=list)  # eval/predict runs left out

    def stats(self, row: Row, column: str) -> tuple[float | None, float | None, int]:
        vals = [v for v in (job_value(j, column) for j in row.jobs) if v is not None]
        m, s = mean_std(vals)
        return m, s, len(vals)

    def sources(self) -> str:
        """What the folder holds: "1 sweep", or e.g. "2 single runs, no sweep", "1 sweep and 1 single run"."""
        sweeps = len({j.source for j in self.jobs if not j.single})
        singles = sum(j.single for j in self.jobs)
        parts = ([f"{sweeps} sweep{'s' * (sweeps != 1)}"] if sweeps else []) + (
            [f"{singles} single run{'s' * (singles != 1)}"] if singles else [])
        return " and ".join(parts) + ("" if sweeps else ", no sweep")

    def note(self) -> str:
        """What a row's numbers are: one job each, or mean +- std over the seeds of its jobs."""
        seeds = sorted({j.shown("seed") for r in self.rows if len(r.jobs) > 1 for j in r.jobs})
        if not seeds:
            return "one job per row; n = jobs with metrics / jobs"
        return f"mean ± std (sample, ddof=1) over seeds {', '.join(seeds)}; n = jobs with metrics / jobs"


def build_report(sweep_dir: str | os.PathLike) -> Report:
    """The jobs under ``sweep_dir``, their axes and rows (see :func:`group_rows`).

    Raises:
        ReportError: see :func:`load_jobs`.
    """
    skipped: list[Path] = []
    jobs = load_jobs(sweep_dir, skipped)
    axes = sweep_axes(jobs)
    rows, split = group_rows(jobs, axes)
    group_axes = [a for a in axes if a != "seed"]
    if split:
        group_axes.append("source" if "source" not in group_axes else "source_dir")
    return Report(Path(sweep_dir), jobs, axes, group_axes, metric_columns(jobs), rows, skipped)


def _fmt(m: float | None, s: float | None) -> str:
    if m is None:
        return "-"
    return f"{m:.4f}" if s is None else f"{m:.4f} ± {s:.4f}"


def table_rows(rep: Report, columns: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the printed table."""
    header = [*rep.group_axes, "n", *columns]
    if any(j.metrics is None for j in rep.jobs):
        header.append("failed")
    cells = []
    for row in rep.rows:
        ok = sum(j.metrics is not None for j in row.jobs)
        line = [*row.key, f"{ok}/{len(row.jobs)}"]
        for c in columns:
            m, s, _ = rep.stats(row, c)
            line.append(_fmt(m, s))
        if "failed" in header:
            errs = sorted({j.error or "no metrics.json (running or killed)" for j in row.jobs if j.metrics is None})
            line.append("; ".join(errs))
        cells.append(line)
    return header, cells


def format_text(header: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def format_markdown(header: list[str], cells: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells]
    return "\n".join(out)


def write_csv(rep: Report, path: Path) -> None:
    """One row per table row: axes, n (jobs with metrics), jobs, failed, then mean/std per column."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*rep.group_axes, "n", "jobs", "failed",
                    *[f"{c}_{k}" for c in rep.columns for k in ("mean", "std")]])
        for row in rep.rows:
            ok = sum(j.metrics is not None for j in row.jobs)
            vals = []
            for c in rep.columns:
                m, s, _ = rep.stats(row, c)
                vals += ["" if m is None else repr(m), "" if s is None else repr(s)]
            w.writerow([*row.key, ok, len(row.jobs), len(row.jobs) - ok, *vals])


def write_runs_csv(rep: Report, path: Path) -> None:
    """One row per job: its directory, every swept value, every metric, the error if any."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job", *rep.axes, *rep.columns, "error"])
        for j in rep.jobs:
            vals = [job_value(j, c) for c in rep.columns]
            w.writerow([j.name, *[j.overrides.get(a, "") for a in rep.axes],
                        *["" if v is None else repr(v) for v in vals], j.error or ""])


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _x_and_hue(rep: Report, row, first: str | None, metric: str) -> tuple[str, str]:
    """A row's place on the plot: its x label (the first axis' value) and its hue (the other axes' values)."""
    x = row.key[0] if first else "all"
    hue = ", ".join(f"{a}={v}" for a, v in zip(rep.group_axes[1:], row.key[1:])) or metric
    return x, hue


def _plot_panel(ax, rep: Report, col: str, xs: list[str], hues: list[str], first: str | None, split: str,
                metric: str) -> None:
    """One task's panel: a marker per row at (x, mean) with a std error bar, "n/a" where a row has no value."""
    width = 0.6 / max(1, len(hues))
    lo, hi = math.inf, -math.inf
    missing: list[float] = []  # rows without a value (failed jobs, undefined AUC): marked "n/a"
    for h_i, hue in enumerate(hues):
        pos, means, errs = [], [], []
        for row in rep.rows:
            x, hue_r = _x_and_hue(rep, row, first, metric)
            if hue_r != hue:
                continue
            m, s, _ = rep.stats(row, col)
            if m is None:
                missing.append(xs.index(x) + (h_i - (len(hues) - 1) / 2) * width)
                continue
            pos.append(xs.index(x) + (h_i - (len(hues) - 1) / 2) * width)
            means.append(m)
            errs.append(s or 0.0)
            lo, hi = min(lo, m - (s or 0.0)), max(hi, m + (s or 0.0))
        ax.errorbar(pos, means, yerr=errs, fmt=_MARKERS[h_i % len(_MARKERS)], capsize=3, markersize=6, label=hue)
    if lo < hi:
        pad = 0.15 * (hi - lo) + 1e-4
        ax.set_ylim(lo - pad, hi + pad)
    elif lo == hi and math.isfinite(lo):
        ax.set_ylim(lo - 0.01, hi + 0.01)
    for x_pos in missing:
        ax.text(x_pos, ax.get_ylim()[0], "n/a", ha="center", va="bottom", fontsize=7, color="gray")
    task = col.split("/", 2)[2]
    ax.set_title(f"{task}: {split} {metric}")
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels(xs, rotation=30 if len(xs) > 4 else 0, ha="right" if len(xs) > 4 else "center")
    ax.set_xlabel(first or "")
    ax.grid(axis="y", alpha=0.3)


def write_plot(rep: Report, path: Path, split: str = "test", metric: str = "auc") -> bool:
    """Per-task ``metric`` on ``split``: one panel per task, x = the first axis, one marker per
    value of the other axes (side by side), error bars = std over seeds. Returns False when there is nothing to plot.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in rep.columns if c.startswith(f"{split}/{metric}/")]
    if not cols:
        return False
    first = rep.group_axes[0] if rep.group_axes else None
    xs: list[str] = []
    hues: list[str] = []
    for row in rep.rows:
        x, hue = _x_and_hue(rep, row, first, metric)
        xs += [x] if x not in xs else []
        hues += [hue] if hue not in hues else []
    fig, axes = plt.subplots(1, len(cols), figsize=(max(6.0, 0.9 * len(xs) * max(1, len(hues)) ** 0.5 * 2) * len(cols) / 1.6,
                                                    4.2), squeeze=False)
    for ax, col in zip(axes[0], cols):
        _plot_panel(ax, rep, col, xs, hues, first, split, metric)
    seeds = "mean ± std over seeds" if any(len(r.jobs) > 1 for r in rep.rows) else "one run per point"
    fig.suptitle(f"{rep.sweep_dir.name}: {split} {metric} per task ({seeds})", fontsize=10)
    if len(hues) > 1 or rep.group_axes[1:]:
        axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


MAX_GATE_JOBS = 24


def write_gate_heatmaps(rep: Report, path: Path, split: str = "test") -> bool:
    """The gate use of every job with gates (MMoE, OMoE, CGC, PLE): one heatmap per job and level,
    rows = gates (tasks; ``shared`` for OMoE's gate and PLE's shared gates), columns = the level's
    experts, colour = the mean gate weight over ``split`` with best.pt's weights (run.json
    ``diagnostics.gates_final``; a gate that cannot select an expert: blank). Each title gives the
    job, the level, the unused experts' share and a collapse. At most :data:`MAX_GATE_JOBS` jobs,
    in the report's order. Returns False when no job has gate data.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    jobs = [j for j in rep.jobs if j.gates.get(split)][:MAX_GATE_JOBS]
    if not jobs:
        return False
    cols = max(len(j.gates[split]) for j in jobs)
    widest = max(len(lv["experts"]) for j in jobs for lv in j.gates[split])
    fig, axes = plt.subplots(len(jobs), cols, squeeze=False, layout="constrained",
                             figsize=(max(4.0, 0.45 * widest + 2.0) * cols + 1.0, 0.6 + 2.3 * len(jobs)))
    image = None
    for r, job in enumerate(jobs):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(job.gates[split]):
                ax.axis("off")
                continue
            lv = job.gates[split][c]
            w = np.array([[np.nan if v is None else v for v in row] for row in lv["weight"]], dtype=float)
            image = ax.imshow(np.ma.masked_invalid(w), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(lv["experts"])))
            ax.set_xticklabels(lv["experts"], rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(len(lv["gates"])))
            ax.set_yticklabels(lv["gates"], fontsize=8)
            if w.size <= 64:
                for (i, k), v in np.ndenumerate(w):
                    if not np.isnan(v):
                        ax.text(k, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                                color="black" if v > 0.5 else "white")
            note = f"unused {lv['unused_share']:.0%}" + (f", collapsed on {lv['collapsed']}" if lv.get("collapsed") else "")
            level = f" level {lv['level']}" if len(job.gates[split]) > 1 else ""
            ax.set_title(f"{job.name}{level}: {note}", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label=f"mean gate weight ({split})")
    fig.suptitle(f"{rep.sweep_dir.name}: gate weight per task and expert ({split}, best.pt)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``mtl-report``)."""
    p = argparse.ArgumentParser(prog="mtl-report",
                                description="Table, CSV and plot of an mtl-train sweep, or of any folder of runs.")
    p.add_argument("sweep_dir", help="the sweep directory (hydra.sweep.dir, e.g. multirun/2026-01-01/12-00-00_123), "
                                     "or any folder of runs (e.g. outputs)")
    p.add_argument("--out", help="prefix of the files written (default <sweep dir>/report)")
    p.add_argument("--splits", default="val,test", help="splits shown in the printed table (default val,test)")
    p.add_argument("--metrics", default="auc,gauc,logloss",
                   help="metrics shown in the printed table, where the runs have them (default auc,gauc,logloss)")
    p.add_argument("--plot-split", default="test", choices=SPLITS)
    p.add_argument("--plot-metric", default="auc", choices=METRICS)
    args = p.parse_args(argv)
    try:
        rep = build_report(args.sweep_dir)
    except MtlError as e:
        print(f"mtl-report: error: {e}", file=sys.stderr)
        sys.exit(2)
    splits, metrics = args.splits.split(","), args.metrics.split(",")
    shown = [c for c in rep.columns if c.split("/")[0] in splits and c.split("/")[1] in metrics]
    header, cells = table_rows(rep, shown)
    note = rep.note()
    holds = rep.sources()
    holds = "" if holds == "1 sweep" else f" ({holds})"
    jobs = f"{len(rep.jobs)} job{'s' * (len(rep.jobs) != 1)}"
    axes = ", ".join(rep.axes) or "(none)"
    print(f"{rep.sweep_dir}: {jobs}{holds}, axes: {axes}; {note}")
    if rep.skipped:
        names = ", ".join(str(p.relative_to(rep.sweep_dir)) for p in rep.skipped)
        print(f"left out {len(rep.skipped)} eval/predict run(s): {names}")
    print(format_text(header, cells))
    out = Path(args.out) if args.out else rep.sweep_dir / "report"
    out.parent.mkdir(parents=True, exist_ok=True)
    md = f"{jobs} of `{rep.sweep_dir.name}`{holds}, axes: {axes}; {note}.\n\n"
    out.with_suffix(".md").write_text(md + format_markdown(header, cells) + "\n")
    write_csv(rep, out.with_suffix(".csv"))
    write_runs_csv(rep, out.with_name(out.name + "_runs.csv"))
    written = [out.with_suffix(".md"), out.with_suffix(".csv"), out.with_name(out.name + "_runs.csv")]
    try:
        if not extras.has_module("matplotlib"):  # also where its parent is absent: never a traceback
            raise ImportError("matplotlib")
        if write_plot(rep, out.with_suffix(".png"), args.plot_split, args.plot_metric):
            written.append(out.with_suffix(".png"))
        gates_png = out.with_name(out.name + "_gates.png")
        if write_gate_heatmaps(rep, gates_png, args.plot_split):
            written.append(gates_png)
    except ImportError:
        print('mtl-report: note: matplotlib is not installed, so no plot was drawn (pip install matplotlib)',
              file=sys.stderr)
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()

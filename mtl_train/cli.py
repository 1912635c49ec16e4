"""The ``mtl-train`` entry point: a Hydra app over the config groups in ``conf/``.

    mtl-train dataset=census dataset.path=census-income.test.gz model=ple loss=gradnorm
    mtl-train -m model=mmoe,ple loss=equal,gradnorm        # a sweep, one directory per job
    mtl-train -m experiment=census_compare                 # a canonical comparison (conf/experiment/)
    mtl-train trainer.resume=outputs/2026-01-01/12-00-00_1234ab  # continue a run in its directory
    mtl-train mode=eval checkpoint=<run dir or .pt> infer.split=test   # re-evaluate a checkpoint
    mtl-train mode=predict checkpoint=<run dir or .pt> infer.input=new.parquet
    mtl-train mode=export checkpoint=<run dir or .pt> export.output=<dir>   # model.pt2, model.onnx, manifest.json

Bad input (an unknown option or key, a missing file or column) ends the run with one line
``mtl-train: error: ...`` on stderr and exit status 2. SIGINT/SIGTERM write
``checkpoints/last.pt`` and exit with 128 + the signal number (130, 143) and one line saying
how to resume.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
import sys
import time
from importlib import resources

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mtl_train import distributed, extras
from mtl_train.config import SECTIONS
from mtl_train.errors import ConfigError, MtlError, RunInterrupted
from mtl_train.metrics import METRICS

log = logging.getLogger("mtl_train")

GROUPS = ("dataset", "model", "graph", "loss", "trainer")
_UID = f"{os.getpid()}{secrets.token_hex(2)}"


def _uid() -> str:
    """A token unique to this process (pid + random), fixed for its lifetime so that all jobs
    of one sweep share a sweep directory while two runs started in the same second differ."""
    return _UID


if not OmegaConf.has_resolver("mtl_uid"):
    OmegaConf.register_new_resolver("mtl_uid", _uid)


def _conf_root():
    return resources.files("mtl_train.conf")


def group_options(group: str) -> list[str]:
    """Names of the options of a config group (the YAML files in ``conf/<group>/``)."""
    d = _conf_root() / group
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml")) if d.is_dir() else []


def _check_grammar(args: list[str]) -> None:
    """Every ``key=value`` argument must parse in Hydra's override grammar; Hydra itself would
    print a parser message without the key and exit 1. The commonest case is a value holding
    ``=`` (Hive-style partitions, ``logs/day=*/...``), which needs quotes that reach Hydra.

    Raises:
        ConfigError: naming the key, the parser's message and the quoting that works.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in args:
        if "=" not in arg:
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as e:
            key, value = arg.split("=", 1)
            why = str(e).strip().splitlines()[0]
            example = f", e.g. \"{key}='{value}'\"" if "'" not in value and '"' not in value else ""
            raise ConfigError(f"{key}: Hydra cannot parse the override {arg!r} ({why}); a value with '=', spaces, "
                              f"commas or brackets needs quotes that reach Hydra{example}") from None


# Hydra's own command-line flags that take a value (Hydra 1.3's ``--help`` lists them); what
# follows one is the flag's value, not a config override
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c", "--package", "-p",
                "--experimental-rerun"}
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}  # --info [TOPIC]


def _override_indices(args: list[str]) -> list[int]:
    """The positions of the config overrides among the command-line ``args``: the arguments that
    are neither Hydra's flags nor their values (``--config-dir DIR``); none with
    ``-sc``/``--shell-completion``, whose ``install=bash`` is Hydra's command, not an override."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a in ("-sc", "--shell-completion"):
            return []
        if a in _VALUE_FLAGS or (a in ("-i", "--info") and i + 1 < len(args) and args[i + 1] in _INFO_TOPICS):
            i += 2
            continue
        if not a.startswith("-"):
            out.append(i)
        i += 1
    return out


def _overrides(args: list[str]) -> list[str]:
    """The config overrides among the command-line ``args`` (see :func:`_override_indices`)."""
    return [args[i] for i in _override_indices(args)]


def _path_keys() -> set[str]:
    """Every config key that holds a path: ``checkpoint`` and the fields declared
    ``param(..., path=True)`` of every option of every group and section (``dataset.path``,
    ``dataset.schema_file``, ``trainer.resume``, ``infer.input``, ...)."""
    from mtl_train import registry
    from mtl_train.config import TrainerConfig, path_keys

    keys = {"checkpoint"} | {f"trainer.{k}" for k in path_keys(TrainerConfig)}
    keys |= {f"{s}.{k}" for s, schema in SECTIONS.items() for k in path_keys(schema)}
    for group in registry.GROUPS:
        for entry in registry.options(group).values():
            keys |= {f"{group}.{k}" for k in path_keys(entry.config)}
    return keys


def absolute_path_overrides(args: list[str]) -> list[str]:
    """``args`` with the value of every path override (see :func:`_path_keys`) made absolute
    against the launch directory (:func:`mtl_train.config.resolve_path`), so that Hydra's record
    (``.hydra/config.yaml``, ``overrides.yaml``) holds the path that was read, whatever
    ``hydra.job.chdir`` does. Quoted values, sweeps (``a,b``), interpolations and ``null`` are
    left as given: validation resolves every path field anyway."""
    from mtl_train.config import resolve_path

    keys, out = None, list(args)
    for i in _override_indices(args):
        key, eq, value = args[i].partition("=")
        name = key.lstrip("+")
        if name.startswith("infer.dataset."):  # a checkpoint's dataset path on mode=eval/predict
            name = "dataset." + name[len("infer.dataset."):]
        if not eq or ("." not in name and name != "checkpoint"):
            continue  # no path key (a group choice, seed, mode): the registry's modules (torch) not imported
        if keys is None:
            keys = _path_keys()
        if (name in keys and value and value != "null" and value[0] not in "'\"[{"
                and not any(c in value for c in ",${}()'\" ")):
            out[i] = f"{key}={_quote(resolve_path(value))}"
    return out


INFER_MODES = ("eval", "predict", "export")


def eval_dataset_overrides(args: list[str]) -> list[str]:
    """``args`` with, for ``mode=eval``/``predict``/``export``, every ``dataset=<name>`` and
    ``dataset.<key>=<value>`` moved to ``+infer.dataset.name`` / ``+infer.dataset.<key>``: those
    modes score the checkpoint's dataset, and these overrides apply to it (its paths may point
    at other files, see :func:`mtl_train.train.infer.checkpoint_config`), instead of to the
    command line's default dataset, which would refuse the key or ignore it."""
    if _last_value(args, "mode") not in INFER_MODES:
        return list(args)
    out = list(args)
    for i in _override_indices(args):
        key, eq, value = args[i].partition("=")
        if eq and (key == "dataset" or key.startswith("dataset.")):
            sub = "name" if key == "dataset" else key[len("dataset."):]
            out[i] = f"+infer.dataset.{sub}={value}"
    return out


def _unknown_option(group: str, option: str, options) -> ConfigError:
    if group == "hydra/sweeper" and option == "optuna":
        return ConfigError(extras.missing_extra_message(extras.OPTUNA[1], extras.OPTUNA[2]))
    return ConfigError(f"{group}={option}: unknown {group} '{option}' (choose from {', '.join(options)})")


def _compose(overrides: list[str]) -> DictConfig:
    """The config Hydra composes from ``conf/`` with these group ``overrides`` (its defaults lists,
    experiments and presets resolved by Hydra itself), Hydra's own node included.

    Raises:
        ConfigError: one line for Hydra's own error (a missing option, e.g. an experiment's
            ``override /hydra/sweeper: optuna`` without the plugin).
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException, MissingConfigException

    try:
        with initialize_config_module(config_module="mtl_train.conf", version_base="1.3"):
            return compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as e:
        group, _, option = (e.missing_cfg_file or "").rpartition("/")
        if group and e.options is not None:
            raise _unknown_option(group, option, e.options) from None
        raise ConfigError(str(e).strip().splitlines()[0]) from None
    except HydraException as e:
        raise ConfigError(str(e).strip().splitlines()[0]) from None


def precheck_overrides(args: list[str]) -> DictConfig:
    """Catch the commonest command-line mistakes before Hydra runs the app, so that each gets
    one clear line: an override Hydra cannot parse (:func:`_check_grammar`), an unknown option
    of a group (``model=mmeo``), an unknown key of a group (``model.num_expert=4``,
    ``trainr.lr=1``) and a sweeper that is not installed.

    The options each group ends up with (after experiments and presets such as ``model=esmm``,
    which selects ``graph=esmm``) are Hydra's own: the group overrides are composed by Hydra's
    public compose API and the keys checked against the composed config. Sweep values
    (``model=mmoe,ple``) are checked one by one, the first one composed; overrides with
    ``+``/``~`` prefixes, Hydra's keys (``hydra.*``) and sweep functions are left to Hydra and
    the typed schemas.

    Returns:
        the config composed from the group overrides (Hydra's node included), which
        :func:`check_output_dir` reads the output directory from.

    Raises:
        ConfigError: naming the group and option, or the key.
    """
    args = _overrides(args)
    _check_grammar(args)
    groups, dotted = [], []
    for arg in args:
        if "=" not in arg or arg[0] in "+~":
            continue
        key, value = arg.split("=", 1)
        if key.startswith("hydra/") and "(" not in value:  # Hydra's groups (hydra/sweeper=optuna): composed
            if key == "hydra/sweeper" and value == "optuna":
                extras.require_extra(*extras.OPTUNA)
            groups.append(f"{key}={value.split(',')[0]}")
            continue
        if key.startswith("hydra") or "/" in key or "(" in value:
            continue
        if key in GROUPS or key == "experiment":
            options = group_options(key)
            values = value.split(",")
            for v in values:
                if v not in options:
                    raise _unknown_option(key, v, options)
            groups.append(f"{key}={values[0]}")
        elif "." in key:
            dotted.append(key)
        elif key not in ("seed", "mode", "checkpoint"):
            raise ConfigError(f"{key}: unknown config key (groups: {', '.join(GROUPS)}; "
                              f"top-level keys: seed, mode, checkpoint, infer, objective, export)")
    cfg = _compose(groups)
    chosen = cfg.hydra.runtime.choices
    for key in dotted:
        group, sub = key.split(".", 1)
        if group in SECTIONS:
            known_fields = [f.name for f in dataclasses.fields(SECTIONS[group])]
            if sub.split(".", 1)[0] not in known_fields:
                raise ConfigError(f"{key}: unknown key '{sub}' (known keys: {', '.join(known_fields)})")
            continue
        if group not in GROUPS:
            raise ConfigError(f"{key}: unknown config group '{group}' (choose from {', '.join(GROUPS)})")
        first = sub.split(".", 1)[0]
        if first not in cfg[group]:
            raise ConfigError(f"{key}: unknown key '{first}' for {group}={chosen.get(group)} "
                              f"(known keys: {', '.join(map(str, cfg[group].keys()))})")
    return cfg


def _last_value(args: list[str], key: str) -> str | None:
    """The value of the last ``key=value`` among ``args`` (quotes stripped), or None."""
    value = None
    for arg in args:
        if arg.startswith(key + "="):
            value = arg.split("=", 1)[1].strip("'\"")
    return value


def _quote(value: str) -> str:
    return f"'{value}'" if "'" not in value else value


def resume_overrides(args: list[str]) -> list[str]:
    """Extra Hydra overrides for ``trainer.resume=<run dir or checkpoint>``.

    A resumed run continues in the directory of the run it resumes (``hydra.run.dir`` set to
    it unless given), so that one directory holds one run's checkpoints, TensorBoard events,
    metrics.json and log. Hydra's files of the resuming invocation go to
    ``.hydra/resume-<k>`` there, keeping the original ``.hydra/`` intact. A checkpoint file
    outside a ``<run>/checkpoints/`` folder starts a new run directory.

    Also refuses (ConfigError) an explicit ``hydra.run.dir`` that already holds a
    checkpoint when no resume is asked for, before Hydra writes anything there.
    """
    from mtl_train.train.checkpoint import existing_checkpoints, run_dir_of

    resume = _last_value(args, "trainer.resume")
    run_dir = _last_value(args, "hydra.run.dir")
    if resume in (None, "", "null"):
        if run_dir and existing_checkpoints(run_dir):
            raise ConfigError(f"hydra.run.dir: {run_dir} already holds a checkpoint; continue that run with "
                              f"trainer.resume={run_dir}, or choose another directory")
        return []
    extra = []
    if run_dir is None:
        target = os.path.abspath(os.path.expanduser(resume))
        run_dir = target if os.path.isdir(target) else run_dir_of(target) if os.path.isfile(target) else None
        if run_dir is None:
            return []
        extra.append(f"hydra.run.dir={_quote(run_dir)}")
    if _last_value(args, "hydra.output_subdir") is None and os.path.isdir(os.path.join(run_dir, ".hydra")):
        k = 1
        while os.path.exists(os.path.join(run_dir, ".hydra", f"resume-{k}")):
            k += 1
        extra.append(f"hydra.output_subdir=.hydra/resume-{k}")
    return extra


# Hydra's flags after which it runs no job (prints, completes): no output directory is created
_NO_JOB_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i", "-sc", "--shell-completion"}


def check_output_dir(args: list[str], composed: DictConfig) -> None:
    """Check, before Hydra creates it, that the run's output directory can be created:
    ``hydra.sweep.dir`` with ``-m``/``--multirun``, else ``hydra.run.dir`` (the last one given in
    ``args``, or the one of ``composed``, the config :func:`precheck_overrides` composed: the
    default ``outputs/...`` under the working directory), its interpolations resolved as Hydra
    resolves them. Hydra itself would end with a ``NotADirectoryError``/``PermissionError`` traceback
    and exit 1. Nothing is created here (see :func:`mtl_train.io.ensure_writable_dir`).

    Raises:
        ConfigError: ``hydra.run.dir: cannot create '<path>': <reason>``.
    """
    from mtl_train.io import ensure_writable_dir

    if _NO_JOB_FLAGS & set(args):
        return
    key = "hydra.sweep.dir" if {"-m", "--multirun"} & set(args) else "hydra.run.dir"
    given = _last_value(_overrides(args), key)
    try:
        if given is not None:
            composed = composed.copy()
            OmegaConf.update(composed, key, given)
        path = OmegaConf.select(composed, key, throw_on_missing=True)
    except Exception:  # noqa: BLE001 - an interpolation only Hydra's run can resolve: Hydra creates it as before
        return
    if isinstance(path, str) and path:
        ensure_writable_dir(key, path)


def _fail(err: Exception, code: int = 2) -> None:
    rank = distributed.rank()
    if not rank:  # a refusal before the process group forms: the launcher's variables say which rank this is
        try:
            env = distributed.detect()
        except MtlError:
            env = None
        rank = env.rank if env else 0
    who = f"[rank {rank}] " if rank else ""
    print(f"mtl-train: error: {who}{err}", file=sys.stderr)
    _leave()
    sys.exit(code)


def _leave() -> None:
    """Several ranks: wait until every rank has finished (rank 0 writing the run directory last),
    then leave the process group; nothing for one process."""
    distributed.exit_barrier()
    distributed.shutdown()


def _run_dir_of(args: list[str], composed: DictConfig) -> str | None:
    """``hydra.run.dir`` as Hydra will resolve it (the last one given in ``args``, else the one of
    ``composed``), or None where only Hydra's run can resolve it."""
    given = _last_value(_overrides(args), "hydra.run.dir")
    try:
        if given is not None:
            composed = composed.copy()
            OmegaConf.update(composed, "hydra.run.dir", given)
        path = OmegaConf.select(composed, "hydra.run.dir", throw_on_missing=True)
    except Exception:  # noqa: BLE001 - an interpolation only Hydra's run can resolve
        return None
    return os.path.abspath(path) if isinstance(path, str) and path else None


def distributed_overrides(args: list[str], composed: DictConfig) -> list[str]:
    """Join the process group when this process is one rank of several (torchrun, srun; see
    :mod:`mtl_train.distributed`) and return ``args`` made the same for the whole job: one run
    directory, decided by rank 0 and sent to every rank (``hydra.run.dir``); on the other ranks
    Hydra writes neither ``.hydra/`` nor a log file (their warnings and errors go to stderr,
    prefixed with the rank). One process: ``args`` unchanged.

    Raises:
        ConfigError: a sweep (``-m``) or ``mode=eval``/``predict`` under several ranks, a backend
            the device does not support (see :func:`mtl_train.distributed.backend_for`).
        DistributedError: the process group did not form within ``trainer.dist_timeout_s``.
    """
    env = distributed.detect()
    if env is None or _NO_JOB_FLAGS & set(args):
        return list(args)
    from mtl_train.train.device import resolve_device  # imports torch: not for one process's --help
    if {"-m", "--multirun"} & set(args):
        raise ConfigError(f"-m/--multirun: a sweep does not run under torchrun or srun (WORLD_SIZE={env.world_size}); "
                          f"launch one distributed job per configuration (e.g. a shell loop over torchrun)")
    mode = _last_value(_overrides(args), "mode") or composed.get("mode")
    if mode in INFER_MODES:
        raise ConfigError(f"mode={mode}: scores a checkpoint in one process; run it without torchrun or srun")
    over = _overrides(args)
    trainer = composed.trainer
    device = resolve_device(_last_value(over, "trainer.device") or trainer.device)
    backend = _last_value(over, "trainer.dist_backend") or trainer.get("dist_backend")
    backend = None if backend in (None, "null") else backend
    given = _last_value(over, "trainer.dist_timeout_s") or trainer.get("dist_timeout_s")
    try:
        timeout = float(given)
    except (TypeError, ValueError):
        timeout = -1.0
    if not timeout > 0:
        raise ConfigError(f"trainer.dist_timeout_s: must be a positive number of seconds, got {given!r}")
    distributed.init(env, device, backend, timeout)
    run_dir = distributed.broadcast_object(_run_dir_of(args, composed) if env.rank == 0 else None)
    if run_dir is None:
        raise ConfigError("hydra.run.dir: under torchrun or srun the run directory must resolve before Hydra runs "
                          "(every rank uses rank 0's); give hydra.run.dir=<path>")
    out = [a for a in args if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={_quote(run_dir)}"]
    if env.rank != 0:  # rank 0 alone writes the run directory
        out = [a for a in out if not a.startswith("hydra.output_subdir=")]
        out += ["hydra.output_subdir=null", "hydra/job_logging=none"]
    return out


def _print_results(results: dict) -> None:
    width = max((len(name) for per in results.values() for name in per), default=0)
    for split, per in results.items():
        for name, m in per.items():
            shown = " ".join(f"{k}={v:.4f}" for k, v in m.items() if k in METRICS and v is not None)
            flag = f"  (degenerate: {m['degenerate']})" if m.get("degenerate") else ""
            print(f"{split:5s} {name:{width}s} {shown}{flag}")


_FAILED_JOBS: list[str] = []


def _holds_a_run(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a run's results (a checkpoint or metrics.json)."""
    from mtl_train.train.checkpoint import existing_checkpoints

    return bool(existing_checkpoints(run_dir)) or os.path.exists(os.path.join(run_dir, "metrics.json"))


def _record_error(run_dir: str, err: Exception, foreign: bool = False) -> None:
    """Keep a failed run's one-line error in its directory: ``error.txt`` (``mtl-report`` shows
    it) and the log file. Not where ``foreign``: the directory held another run's results when
    this run started (it refused to start there), and stays as that run left it."""
    if foreign:
        return
    try:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "error.txt"), "w") as f:
            f.write(f"{err}\n")
    except OSError:  # the message is on the console already
        pass
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "error: %s", (err,), None)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def _run_failed(run_dir: str, err: Exception, foreign: bool, sweep: bool) -> float:
    """A run's bad input: keep the one-line error in its directory (:func:`_record_error`); a
    single run then exits 2 (:func:`_fail`). In a sweep, one job's bad input (e.g.
    ``loss=gradnorm`` with ``model=single_task``, which shares no layer) must not end the other
    jobs: print the error naming the job and return NaN, which Optuna records as a failed
    trial; :func:`main` exits 2 after the sweep when any job failed."""
    if distributed.is_main():
        _record_error(run_dir, err, foreign)
    if not sweep:
        _fail(err)
    name = os.path.basename(os.path.normpath(run_dir))
    print(f"mtl-train: error: job {name}: {err}", file=sys.stderr)
    _FAILED_JOBS.append(name)
    return math.nan


@hydra.main(version_base="1.3", config_path="pkg://mtl_train.conf", config_name="config")
def app(cfg: DictConfig) -> float | None:
    """One run (one job of a sweep): ``mode=train`` returns the sweep objective (top-level
    ``objective``: a weighted sum of tasks' val metric, default the val monitor, see
    :mod:`mtl_train.objective`); ``mode=eval`` / ``mode=predict`` score a checkpoint (see
    :mod:`mtl_train.train.infer`), ``mode=export`` writes its serving formats (see
    :mod:`mtl_train.export`), and return None. In a sweep, a job's bad input ends that job
    only (:func:`_run_failed`)."""
    from mtl_train.config import validate
    from mtl_train.objective import objective_value
    from mtl_train.system import resume_gc
    from mtl_train.train.trainer import run

    resume_gc()  # the imports are done (see main)
    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    if distributed.rank():
        distributed.rank_prefix_logging()
    overridden = [o.split("=", 1)[0] for o in hc.overrides.task]
    # a directory that already holds a run, and is not this run's own (resumed) one, gets no error.txt
    foreign = _holds_a_run(run_dir) and cfg.trainer.get("resume") in (None, "", "null")
    t0 = time.perf_counter()
    try:
        typed = validate(cfg)
        if typed.mode == "train":
            with distributed.collectives():  # a dead or hung rank: one line naming it
                results = run(typed, run_dir, overridden)
        else:
            from mtl_train import kernels
            from mtl_train.train.infer import run_eval, run_predict

            kernels.set_fused(typed.trainer.fused_kernels)
            if typed.mode == "eval":
                _print_results(run_eval(typed, run_dir))
            elif typed.mode == "export":
                from mtl_train.export import run_export

                print(f"export: {run_export(typed, run_dir)}")
            else:
                out = run_predict(typed, run_dir)
                print(f"predictions: {out}")
            return None
    except MtlError as e:
        return _run_failed(run_dir, e, foreign, hc.mode == RunMode.MULTIRUN)
    except RunInterrupted as e:
        # a graceful stop, not an error: one warning line (console and log file), exit 128 + signal
        log.warning("%s", e)
        _leave()
        sys.exit(128 + e.signum)
    log.info("run finished in %.1f s: %s", time.perf_counter() - t0, run_dir)
    if distributed.is_main():
        _print_results(results)
    try:
        return objective_value(results["val"], typed.get("objective"), typed.trainer.monitor)
    except MtlError as e:
        return _run_failed(run_dir, e, foreign, hc.mode == RunMode.MULTIRUN)


def main() -> None:
    """Console-script entry point (``mtl-train``, ``python -m mtl_train``)."""
    from mtl_train.config import set_launch_dir
    from mtl_train.system import pause_gc

    pause_gc()  # until app() has imported what a run needs (see mtl_train.system.resume_gc)
    set_launch_dir(os.getcwd())  # relative paths mean this directory, whatever hydra.job.chdir does
    try:
        sys.argv[1:] = eval_dataset_overrides(sys.argv[1:])
        composed = precheck_overrides(sys.argv[1:])
        sys.argv[1:] = absolute_path_overrides(sys.argv[1:])
        sys.argv.extend(resume_overrides(sys.argv[1:]))
        check_output_dir(sys.argv[1:], composed)
        sys.argv[1:] = distributed_overrides(sys.argv[1:], composed)
    except MtlError as e:
        _fail(e)
    app()
    _leave()
    if _FAILED_JOBS:
        print(f"mtl-train: error: {len(_FAILED_JOBS)} job(s) of the sweep failed (see error.txt in each): "
              f"{', '.join(_FAILED_JOBS)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

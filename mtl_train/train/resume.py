"""Resuming a run: which checkpoint, with which config, and whether it fits the data.

A resumed run keeps the config of the run it continues; only :data:`RESUMABLE_KEYS` may be
changed on the command line (see :func:`resume_config`). Without ``trainer.resume`` a run
directory that already holds a checkpoint is refused, so no run overwrites another.
"""
from __future__ import annotations

import logging
import os
import shutil

from omegaconf import DictConfig, OmegaConf

from mtl_train.errors import ConfigError
from mtl_train.train import checkpoint as ckpt

log = logging.getLogger(__name__)


def same_schema(a, b) -> bool:
    """True when two :class:`~mtl_train.data.schema.FeatureSchema` have the same features (names,
    vocabulary sizes), tasks and sequence features: a model of one fits the batches of the other."""
    return ([(f.name, f.vocab_size) for f in a.sparse], [f.name for f in a.dense], list(a.tasks), list(a.sequence)) == \
        ([(f.name, f.vocab_size) for f in b.sparse], [f.name for f in b.dense], list(b.tasks), list(b.sequence))


# keys a resumed run may change (they do not alter the trajectory, or extend it on purpose)
RESUMABLE_KEYS = ("trainer.resume", "trainer.progress", "trainer.device", "trainer.num_threads",
                  "trainer.tune_malloc", "trainer.log_every_steps", "trainer.checkpoint_every_steps",
                  "trainer.epochs", "trainer.max_steps", "trainer.patience", "trainer.dist_backend",
                  "trainer.dist_timeout_s", "mode", "checkpoint", "infer")


def resume_config(stored: dict, current: DictConfig, overridden: list[str]) -> DictConfig:
    """The config of a resumed run: the checkpoint's config, with the command-line overrides
    of :data:`RESUMABLE_KEYS` applied. Any other override must agree with the checkpoint.

    Args:
        stored: the checkpoint's ``config``. current: the composed config of this invocation.
        overridden: the keys set on this command line (``trainer.epochs``, ``model``, ...).

    Raises:
        ConfigError: an override that would change the run being resumed.
    """
    from mtl_train.config import validate

    out = OmegaConf.create(stored)
    for key in overridden:
        key = key.lstrip("+~")
        if key.startswith("hydra"):
            continue
        cur = OmegaConf.select(current, key, default=None)
        if any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS):
            OmegaConf.update(out, key, OmegaConf.to_container(cur) if isinstance(cur, DictConfig) else cur,
                             force_add=True)
            continue
        old = OmegaConf.select(out, key, default=None)
        as_plain = lambda v: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v  # noqa: E731
        if as_plain(cur) != as_plain(old):
            raise ConfigError(f"{key}: differs from the run being resumed ({as_plain(old)!r} there, {as_plain(cur)!r} "
                              f"here); a resumed run keeps its config (changeable: {', '.join(RESUMABLE_KEYS)})")
    return validate(out)


def starting_point(cfg: DictConfig, run_dir: str, overridden: list[str]) -> tuple[DictConfig, dict | None]:
    """The config a run trains with and the checkpoint state it continues from (None for a new run).

    With ``trainer.resume``: the checkpoint it names (a file, or a run directory's
    ``checkpoints/last.pt``), the config from :func:`resume_config`, ``dataset.mode=auto``
    pinned to how the interrupted run read the train split; the source run's best.pt is copied
    into ``run_dir`` when continuing elsewhere, and partial checkpoint files are removed.

    Raises:
        ConfigError: ``run_dir`` already holds a checkpoint and no resume was asked for; a bad
            resume target or override.
        DataError: an unreadable checkpoint.
    """
    if not cfg.trainer.resume:
        existing = ckpt.existing_checkpoints(run_dir)
        if existing:
            raise ConfigError(
                f"hydra.run.dir: {run_dir} already holds a checkpoint ({os.path.basename(existing[0])}); continue that "
                f"run with trainer.resume={run_dir}, or choose another directory"
            )
        return cfg, None
    path = ckpt.find_checkpoint(cfg.trainer.resume, "trainer.resume")
    state = ckpt.load(path)
    cfg = resume_config(state["config"], cfg, overridden)
    kind = state["data"]["kind"]
    if cfg.dataset.get("mode") == "auto":
        # the data position depends on how the train split is read: read it as the interrupted
        # run did, whatever dataset.mode=auto would choose with this machine's memory
        cfg.dataset.mode = kind
        log.info("resume: dataset.mode=%s, as the interrupted run read the train split", kind)
    log.info("resuming %s at step %d (%d epoch(s) completed)", path, state["step"], state["epoch"])
    source = ckpt.run_dir_of(path)
    if source and os.path.realpath(source) != os.path.realpath(run_dir):
        # continuing elsewhere: bring the best weights along, finish() tests with them
        best = os.path.join(source, "checkpoints", "best.pt")
        if os.path.exists(best) and not os.path.exists(os.path.join(run_dir, "checkpoints", "best.pt")):
            os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
            shutil.copy2(best, os.path.join(run_dir, "checkpoints", "best.pt"))
    stale = ckpt.remove_stale_temporaries(os.path.join(run_dir, "checkpoints"))
    if stale:
        log.info("removed %d partial checkpoint file(s) of the interrupted run", len(stale))
    return cfg, state

"""What a training checkpoint holds, declared in one place: :class:`TrainState`.

As torchtitan's checkpoint manager does with its ``states`` mapping, the checkpointed state of
a run is one structure of stateful parts, each with ``state_dict()`` and ``load_state_dict()``:

    model        the model's state dict
    optimizers   [state dict of each optimizer]          (dense, then the row-sparse one)
    schedulers   [state dict of each LR scheduler]
    balancer     the balancer's state (task weights, its own optimizer...)
    data         the train loader's position {"epoch", "batch", "kind"}
    rng          every RNG state: Python, NumPy, torch CPU and CUDA
    progress     :class:`Progress`: step, epoch, early-stopping counters, ... (one key per field)

A checkpoint file is the dict ``{"format": FORMAT_VERSION, <part>: <its state> for each part,
<Progress field>: <value> for each field, "config": <the resolved config as a plain dict>,
"schema": <the FeatureSchema>}``. The config and the schema are written for resuming and for
``mode=eval``/``predict``; a resume reads the config before the run is built
(:func:`mtl_train.train.resume.resume_config`) and compares the schema with the data's.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mtl_train.errors import DataError
from mtl_train.train.resume import same_schema

FORMAT_VERSION = 1


@dataclass
class Progress:
    """Where a run stands, beyond its tensors."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs finished
    best: float | None = None  # best value of trainer.monitor on val so far
    best_step: int = -1  # the step of that value (the weights in best.pt)
    bad_evals: int = 0  # evaluations since the best one (early stopping, trainer.patience)
    last_eval_step: int = -1  # the step of the last evaluation on val
    done: bool = False  # training ended; a resume only tests again (unless it extends the run)
    nonfinite_skipped: int = 0  # batches skipped for a non-finite loss (trainer.nonfinite=skip)
    resumes: list[dict] = field(default_factory=list)  # {"step", "epoch"} at each resume
    # the diagnostics run.json reports for the whole run (mtl_train/train/diagnostics.py):
    # {"grad_conflict": GradConflict's counters, "gates": gate use at each evaluation, "degenerate": [...]}
    diagnostics: dict = field(default_factory=dict)

    OPTIONAL = ("diagnostics",)  # fields added after checkpoint format 1: a checkpoint without them loads

    def state_dict(self) -> dict:
        """{field: value} (a copy); in a checkpoint these are top-level keys."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Set every field from ``state`` (a checkpoint dict); KeyError when one is missing (but
        for :attr:`OPTIONAL` ones, which then keep their defaults)."""
        for f in dataclasses.fields(self):
            if f.name in self.OPTIONAL and f.name not in state:
                setattr(self, f.name, f.default_factory())
                continue
            setattr(self, f.name, state[f.name])


class RNG:
    """Every RNG the training loop touches: Python, NumPy, torch CPU and CUDA."""

    def state_dict(self) -> dict:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():  # a run saved on a machine without CUDA has none
            torch.cuda.set_rng_state_all(state["cuda"])


class Each:
    """A list of stateful objects (optimizers, LR schedulers) as one part: the list of their states."""

    def __init__(self, items: list):
        self.items = items

    def state_dict(self) -> list:
        return [x.state_dict() for x in self.items]

    def load_state_dict(self, states: list) -> None:
        for x, s in zip(self.items, states):
            x.load_state_dict(s)


class DataPosition:
    """The train loader's position (see :class:`~mtl_train.data.loader.LoaderPosition`).

    A restored position takes effect when training begins its epoch (:meth:`begin_epoch`): the
    position of an epoch that has ended (a finished run resumed with more ``trainer.epochs``)
    is dropped, and the next epoch starts at its first batch."""

    def __init__(self, loader):
        self.loader = loader
        self.restored: dict | None = None

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.restored = state

    def begin_epoch(self, epoch: int) -> None:
        """Put the loader at the restored position when it lies in ``epoch``, else at the
        epoch's first batch.

        Raises:
            DataError: see :meth:`~mtl_train.data.loader.LoaderPosition.load_state_dict`."""
        if self.restored is not None and int(self.restored["epoch"]) == epoch:
            self.loader.load_state_dict(self.restored)
        else:
            self.loader.set_epoch(epoch)
        self.restored = None


@dataclass
class TrainState:
    """Everything needed to continue a run exactly (the checkpoint layout is in the module doc)."""

    model: torch.nn.Module
    optimizers: Each
    schedulers: Each
    balancer: torch.nn.Module
    data: DataPosition
    rng: RNG
    progress: Progress
    config: DictConfig  # written, never loaded (a resume reads it before the run is built)
    schema: object  # the data's FeatureSchema: written, and compared with a checkpoint's

    PARTS = ("model", "optimizers", "schedulers", "balancer", "data", "rng")  # restored in this order: RNG last

    def state_dict(self) -> dict:
        """The checkpoint dict: ``format``, each part's state, each progress field, ``config``, ``schema``."""
        return {"format": FORMAT_VERSION, **{name: getattr(self, name).state_dict() for name in self.PARTS},
                **self.progress.state_dict(), "config": OmegaConf.to_container(self.config, resolve=True),
                "schema": self.schema}

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint written by :meth:`state_dict` (RNG states last, so that nothing
        done while restoring shifts them).

        Raises:
            DataError: the checkpoint's feature schema differs from the data's.
        """
        if not same_schema(state["schema"], self.schema):
            raise DataError("trainer.resume: the data's features or tasks differ from the checkpoint's "
                            "(did the dataset or its files change?)")
        self.progress.load_state_dict(state)
        for name in self.PARTS:
            getattr(self, name).load_state_dict(state[name])

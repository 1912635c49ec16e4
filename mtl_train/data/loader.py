"""In-memory batching: a fresh permutation every epoch, batches taken by index."""
from __future__ import annotations

from typing import Iterator

import torch

from mtl_train.data.schema import Table


class LoaderPosition:
    """The data-position interface every train loader implements (exact resume).

    ``epoch`` is the current epoch and ``batch`` the number of its batches handed out so
    far (so a state taken while a batch is in use points past it). ``__iter__`` of a
    subclass starts at ``self.batch`` and advances it; an exhausted epoch yields nothing
    until :meth:`set_epoch` is called again.
    """

    epoch: int = 0
    batch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` at its first batch."""
        self.epoch, self.batch = int(epoch), 0

    def state_dict(self) -> dict:
        """``{"epoch": e, "batch": b}``: ``b`` batches of epoch ``e`` handed out so far."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        """Resume at batch ``state["batch"]`` of epoch ``state["epoch"]``: the next ``__iter__``
        regenerates that epoch's order and hands out its batches from that index on.

        Raises:
            ValueError: the batch index is outside [0, len(self)] (the data changed)."""
        epoch, batch = int(state["epoch"]), int(state["batch"])
        self.epoch = epoch  # len() may depend on the epoch (streamed shards)
        if not 0 <= batch <= len(self):
            raise ValueError(f"loader state: batch {batch} outside [0, {len(self)}] (did the data change?)")
        self.batch = batch


class InMemoryLoader(LoaderPosition):
    """Batches of a :class:`Table` held in memory; no per-row Python work.

    Each epoch draws ``torch.randperm`` from a generator seeded with (seed, epoch), so the
    order of every epoch is reproducible and independent of how many epochs ran before.
    With ``rank``/``world_size`` each rank takes every world_size-th row of the permutation.

    Data position (the interface every train loader implements, for exact resume):
    ``set_epoch(e)`` starts epoch ``e`` at its first batch; ``state_dict()`` is
    ``{"epoch": e, "batch": b}`` where ``b`` batches of epoch ``e`` have been handed out;
    after ``load_state_dict(state)`` the next ``__iter__`` yields batch ``b`` onwards of epoch
    ``e``, the very batches an uninterrupted iteration would have yielded (the permutation is
    a pure function of (seed, epoch)). An epoch once exhausted yields nothing more until the
    next ``set_epoch``.

    Yields: dicts {"sparse": int64 [B, F_s], "dense": float32 [B, F_d], "labels": float32 [B, T], ...}.
    """

    def __init__(self, table: Table, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        self.table, self.batch_size, self.shuffle, self.seed = table, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0
        self.batch = 0  # batches of self.epoch handed out so far

    def _order(self) -> torch.Tensor | None:
        n = len(self.table)
        if not self.shuffle:
            return torch.arange(self.rank, n, self.world_size) if self.world_size > 1 else None
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(n, generator=g)
        return perm[self.rank::self.world_size] if self.world_size > 1 else perm

    def __len__(self) -> int:
        n = (len(self.table) - self.rank + self.world_size - 1) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self._order()
        n = len(self.table) if order is None else len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        for s in range(self.batch * self.batch_size, stop, self.batch_size):
            e = min(s + self.batch_size, n)
            batch = self.table.slice(s, e) if order is None else self.table.take(order[s:e])
            self.batch += 1  # counted when handed out: state_dict() taken while it is used points past it
            yield batch

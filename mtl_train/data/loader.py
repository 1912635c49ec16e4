"""In-memory batching: a fresh permutation every epoch, batches taken by index."""
from __future__ import annotations

from typing import Iterator

import torch

from mtl_train.data.schema import Table
from mtl_train.errors import DataError


class LoaderPosition:
    """The data-position interface every train loader implements (exact resume).

    ``epoch`` is the current epoch and ``batch`` the number of its batches handed out so
    far (so a state taken while a batch is in use points past it). ``__iter__`` of a
    subclass starts at ``self.batch`` and advances it; an exhausted epoch yields nothing
    until :meth:`set_epoch` is called again.
    """

    epoch: int = 0
    batch: int = 0
    kind = "memory"  # how the split is read: a position means nothing to a loader of another kind

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` at its first batch."""
        self.epoch, self.batch = int(epoch), 0

    def state_dict(self) -> dict:
        """``{"epoch": e, "batch": b, "kind": k}``: ``b`` batches of epoch ``e`` handed out so
        far by a loader of kind ``k`` (``memory`` or ``stream``)."""
        return {"epoch": self.epoch, "batch": self.batch, "kind": self.kind}

    def load_state_dict(self, state: dict) -> None:
        """Resume at batch ``state["batch"]`` of epoch ``state["epoch"]``: the next ``__iter__``
        regenerates that epoch's order and hands out its batches from that index on.

        Raises:
            DataError: a position inside an epoch taken by a loader of the other kind (the same
                position would repeat some rows and skip others; a resumed run with
                ``dataset.mode=auto`` reads the split as the interrupted run did, see
                :func:`mtl_train.train.resume.starting_point`), or the batch index is outside
                [0, len(self)] (the data changed)."""
        kind = state.get("kind", self.kind)
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if kind != self.kind and batch > 0:
            raise DataError(f"dataset.mode: the checkpoint's data position was taken reading the train split "
                            f"{'in memory' if kind == 'memory' else 'streamed'}; this run reads it "
                            f"{'in memory' if self.kind == 'memory' else 'streamed'}, where that position "
                            f"means other rows")
        self.epoch = epoch  # len() may depend on the epoch (streamed shards)
        if not 0 <= batch <= len(self):
            raise DataError(f"loader state: batch {batch} outside [0, {len(self)}] (did the data change?)")
        self.batch = batch


class InMemoryLoader(LoaderPosition):
    """Batches of a :class:`Table` held in memory; no per-row Python work.

    Each epoch draws ``torch.randperm`` from a generator seeded with (seed, epoch), so the
    order of every epoch is reproducible and independent of how many epochs ran before.
    With ``rank``/``world_size`` (several processes, see :mod:`mtl_train.distributed`) every rank
    draws the same permutation and takes its slice of each *global* batch: batch i of rank r is
    rows [r*b, (r+1)*b) of the batch of ``world_size * batch_size`` rows that one process with
    that batch size draws at step i, so that N ranks with batch b see exactly the rows of one
    process with batch N*b, in the same order (gradient exactness, issue 15). The last, shorter
    global batch of m rows is cut into N contiguous parts whose sizes differ by at most one row;
    when m < N (a part would be empty) those m rows wait for a later epoch (different ones each
    epoch). Every rank thus has the same number of batches per epoch, disjoint rows, and the
    ranks together cover the epoch's rows.

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

    def _global_rows(self) -> int:
        """Rows of the epoch over all ranks: all of them, less a last global batch smaller than
        the world size (see the class docstring)."""
        n, ws = len(self.table), self.world_size
        if ws == 1:
            return n
        tail = n % (self.batch_size * ws)
        return n - tail if tail < ws else n

    def _order(self) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(len(self.table), generator=g)

    def __len__(self) -> int:
        n, gb = self._global_rows(), self.batch_size * self.world_size
        return n // gb if self.drop_last else -(-n // gb)

    def _span(self, i: int) -> tuple[int, int]:
        """Rows [start, end) of the epoch's order that batch ``i`` of this rank takes."""
        gb, ws, r = self.batch_size * self.world_size, self.world_size, self.rank
        s = i * gb
        m = min(gb, self._global_rows() - s)
        return s + r * m // ws, s + (r + 1) * m // ws

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self._order()
        if order is not None and order.device != self.table.labels.device:  # a device-resident table (a GPU)
            order = order.to(self.table.labels.device)
        for i in range(self.batch, len(self)):
            s, e = self._span(i)
            batch = self.table.slice(s, e) if order is None else self.table.take(order[s:e])
            self.batch += 1  # counted when handed out: state_dict() taken while it is used points past it
            yield batch

"""mtl_train.data.loader: the in-memory loader resumes mid-epoch."""
import pytest
import torch

from mtl_train.errors import DataError


def test_loader_state_resumes_mid_epoch_with_the_same_batches():
    from mtl_train.data.loader import InMemoryLoader
    from mtl_train.data.schema import Table

    n = 103
    table = Table(torch.arange(n).view(n, 1), torch.zeros(n, 0), torch.zeros(n, 1))
    full = InMemoryLoader(table, 10, seed=3)
    full.set_epoch(2)
    want = [b["sparse"].view(-1).tolist() for b in full]
    assert len(want) == 11 and sorted(sum(want, [])) == list(range(n))

    a = InMemoryLoader(table, 10, seed=3)
    a.set_epoch(2)
    it = iter(a)
    first = [next(it)["sparse"].view(-1).tolist() for _ in range(4)]
    state = a.state_dict()
    assert state == {"epoch": 2, "batch": 4, "kind": "memory"}
    b = InMemoryLoader(table, 10, seed=3)
    b.load_state_dict(state)
    rest = [x["sparse"].view(-1).tolist() for x in b]
    assert first + rest == want
    assert b.state_dict() == {"epoch": 2, "batch": 11, "kind": "memory"}
    assert list(b) == []  # an exhausted epoch stays exhausted until set_epoch
    with pytest.raises(DataError, match=r"batch 12 outside \[0, 11\]"):
        b.load_state_dict({"epoch": 0, "batch": 12})
    # a position taken by the streaming loader (dataset.mode=auto chose otherwise) is refused
    with pytest.raises(DataError, match="taken reading the train split streamed; this run reads it in memory, "
                                        "where that position means other rows"):
        b.load_state_dict({"epoch": 0, "batch": 3, "kind": "stream"})
    b.load_state_dict({"epoch": 1, "batch": 0, "kind": "stream"})  # an epoch's start is the same either way
    b.load_state_dict({"epoch": 0, "batch": 3})  # checkpoints of earlier versions hold no kind


def test_ranks_take_their_slice_of_the_one_process_global_batch():
    from mtl_train.data.loader import InMemoryLoader
    from mtl_train.data.schema import Table

    def rows(loader, epoch):
        loader.set_epoch(epoch)
        return [b["sparse"].view(-1).tolist() for b in loader]

    n = 103  # global batch 3 x 10 = 30: three full ones, then 13 rows cut 4 / 4 / 5
    table = Table(torch.arange(n).view(n, 1), torch.zeros(n, 0), torch.zeros(n, 1))
    one = rows(InMemoryLoader(table, 30, seed=3), 1)
    ranks = [rows(InMemoryLoader(table, 10, seed=3, rank=r, world_size=3), 1) for r in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4] and [len(b) for b in ranks[0]] == [10, 10, 10, 4]
    assert [len(r[-1]) for r in ranks] == [4, 4, 5]
    assert [sum((r[i] for r in ranks), []) for i in range(4)] == one  # the same rows, in the same order
    # a last global batch smaller than the world size waits for a later epoch: 61 = 2 x 30 + 1
    table = Table(torch.arange(61).view(61, 1), torch.zeros(61, 0), torch.zeros(61, 1))
    ranks = [InMemoryLoader(table, 10, seed=3, rank=r, world_size=3) for r in range(3)]
    assert {len(r) for r in ranks} == {2}
    epochs = [sum((sum(rows(r, e), []) for r in ranks), []) for e in (0, 1)]
    assert [len(e) for e in epochs] == [60, 60] and len(set(epochs[0])) == 60 and set(epochs[0]) != set(epochs[1])

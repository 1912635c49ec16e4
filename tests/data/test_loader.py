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

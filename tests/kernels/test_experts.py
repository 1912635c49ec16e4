"""The fast paths of issue 5 give the same numbers as the plain formulas."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score

from mtl_train.data.schema import DenseFeature, FeatureSchema, SequenceFeature, SparseFeature, Task
from mtl_train.metrics import binary_metrics, exact_auc
from mtl_train.models.embedding import FeatureEmbedding, lookup
from mtl_train.models.layers import BatchedExperts, Gate, gate_probabilities, mix_experts
from mtl_train.train.optim import RowSparseAdam


@pytest.mark.parametrize("n, decimals, dtype", [(2, 1, np.float32), (50, 1, np.float64), (5000, 2, np.float32),
                                                (20000, 6, np.float64), (3000, 20, np.float64)])
def test_exact_auc_equals_sklearn_with_and_without_ties(n, decimals, dtype):
    rng = np.random.default_rng(n)
    y = (rng.random(n) < 0.2).astype(np.float64)
    y[0], y[1] = 1, 0
    s = np.round(rng.random(n) + 0.3 * y, decimals).astype(dtype)
    assert exact_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert exact_auc(-s, y) == pytest.approx(1 - roc_auc_score(y, s), abs=1e-12)


def test_exact_auc_hand_computed_ties_signs_and_one_class():
    # pairs (pos, neg): 0.35 vs 0.1 win, 0.35 vs 0.4 lose, 0.8 wins both -> 3/4
    assert exact_auc(np.array([0.1, 0.4, 0.35, 0.8], np.float32), np.array([0, 0, 1, 1])) == 0.75
    # all tied: 1/2; -0.0 ties with +0.0; negative scores order correctly
    assert exact_auc(np.zeros(4, np.float32), np.array([0, 1, 0, 1])) == 0.5
    assert exact_auc(np.array([-0.0, 0.0, -3.0, 2.0], np.float32), np.array([1, 0, 0, 1])) == 0.875
    assert exact_auc(np.ones(3), np.ones(3)) is None
    m = binary_metrics(np.array([0.2, 0.7, 0.7, 0.9]), np.array([0, 1, 0, 1]))
    assert m["auc"] == pytest.approx(0.875)


@pytest.mark.parametrize("fused", [True, False], ids=["fused_kernel", "op_by_op"])
def test_sparse_lookup_gradient_equals_dense_and_row_sparse_adam_equals_adam_on_touched_rows(fused, monkeypatch):
    if not fused:  # the formula RowSparseAdam falls back to (CUDA, or a torch without the kernel)
        monkeypatch.setattr(torch, "_fused_adam_", None, raising=False)
    torch.manual_seed(0)
    dense, sparse = nn.Embedding(6, 3), nn.Embedding(6, 3, sparse=True)
    sparse.weight.data.copy_(dense.weight.data)
    w = torch.randn(4, 5, 3)
    opt_d = torch.optim.Adam(dense.parameters(), lr=0.05)
    opt_s = RowSparseAdam(sparse.parameters(), lr=0.05)
    for step in range(4):
        ids = torch.randint(0, 6, (4, 5))
        ids[0, :] = torch.tensor([0, 1, 2, 3, 4])
        ids[1, 0] = 5  # every row is touched every step: lazy Adam == Adam
        for emb, opt in ((dense, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            (lookup(emb, ids) * w).sum().backward()
        rows = sparse.weight.grad._indices()[0]
        assert sparse.weight.grad.is_sparse and bool((rows[1:] > rows[:-1]).all())  # unique, sorted
        torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad)
        opt_d.step()
        opt_s.step()
        torch.testing.assert_close(sparse.weight.data, dense.weight.data, rtol=1e-6, atol=1e-7)
    # a row absent from the batch keeps its weight (lazy)
    before = sparse.weight.data.clone()
    opt_s.zero_grad()
    lookup(sparse, torch.tensor([[0, 1]])).sum().backward()
    opt_s.step()
    assert torch.equal(sparse.weight.data[2:], before[2:]) and not torch.equal(sparse.weight.data[:2], before[:2])


def test_sequence_pooling_mean_and_sum_by_hand():
    schema = FeatureSchema([SparseFeature("u", 3)], [DenseFeature("x")], [Task("t", "t")],
                           sequence=[SequenceFeature("h", 5, 3, "mean"), SequenceFeature("g", 4, 2, "sum")])
    emb = FeatureEmbedding(schema, 2)
    W = emb.table.weight.detach()
    batch = {"sparse": torch.tensor([[1], [0]]), "dense": torch.tensor([[0.5], [-1.0]]),
             "seq": torch.tensor([[2, 4, 0, 3, 3], [0, 0, 0, 0, 0]])}
    out = emb(batch)
    assert out.shape == (2, 2 * 3 + 1) and emb.out_dim == 7
    h0, g0 = 3, 3 + 5  # table offsets of the two sequence features
    torch.testing.assert_close(out[0, :2], W[1])
    torch.testing.assert_close(out[0, 2:4], (W[h0 + 2] + W[h0 + 4]) / 2)  # padding id 0 left out
    torch.testing.assert_close(out[0, 4:6], 2 * W[g0 + 3])
    torch.testing.assert_close(out[1, 2:6], torch.zeros(4))  # empty lists: zero vectors
    assert out[1, 6] == -1.0


def test_batched_experts_and_gate_mix_equal_a_loop_over_experts():
    torch.manual_seed(0)
    ex = BatchedExperts(3, 5, [4, 2])
    x = torch.randn(7, 5)
    y = ex(x)
    torch.testing.assert_close(y, _loop_experts(ex, x))
    gate = Gate(5, 3)
    g = torch.softmax(gate.linear(x), -1)
    torch.testing.assert_close(gate.mix(x, y), sum(g[:, e:e + 1] * y[e] for e in range(3)))


def _loop_experts(ex: BatchedExperts, x: torch.Tensor) -> torch.Tensor:
    """Expert e as its own MLP, layer by layer (the definition the fused path must match)."""
    outs = []
    for e in range(ex.num_experts):
        h = x
        for w, b in zip(ex.weights, ex.biases):
            h = torch.relu(h @ w[e] + b[e])
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("hidden", [[6], [6, 4], [6, 5, 3]])
def test_fused_relu_experts_and_mix_match_autograd_of_the_loop(hidden):
    torch.manual_seed(1)
    ex = BatchedExperts(3, 5, hidden)
    gates = [Gate(5, 3) for _ in range(2)]
    x = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    ex.double(), [g.double() for g in gates]
    params = [x, *ex.parameters(), *[p for g in gates for p in g.parameters()]]
    d_out = [torch.randn(9, hidden[-1], dtype=torch.float64) for _ in gates]

    y = ex(x)
    assert type(y.grad_fn).__name__ == "_ReluExpertsBackward"
    fused = mix_experts(gate_probabilities(gates, x), y)
    grads = torch.autograd.grad(fused, params, d_out)

    ref_y = _loop_experts(ex, x)
    ref = [sum(torch.softmax(g.linear(x), -1)[:, e:e + 1] * ref_y[e] for e in range(3)) for g in gates]
    ref_grads = torch.autograd.grad(ref, params, d_out)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_fused_experts_gradcheck():
    torch.manual_seed(2)
    ex = BatchedExperts(2, 3, [4, 3]).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    from mtl_train.kernels.experts import _ReluExperts
    params = [p for pair in zip(ex.weights, ex.biases) for p in pair]  # W1, b1, W2, b2
    assert torch.autograd.gradcheck(lambda x, *p: _ReluExperts.apply(x, *p), (x, *params))

"""mtl_train.models.embedding: sequence pooling."""
import torch

from mtl_train.data.schema import DenseFeature, FeatureSchema, SequenceFeature, SparseFeature, Task
from mtl_train.models.embedding import FeatureEmbedding


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

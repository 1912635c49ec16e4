"""dataset=aliexpress: the sample loads."""
import pytest
import torch
from conftest import SHARED
from helpers import dataset_cfg

from mtl_train.data.datasets import load_dataset

ALIEXPRESS = SHARED / "aliexpress-sample"


@pytest.mark.skipif(not ALIEXPRESS.exists(), reason="shared aliexpress sample not present")
def test_aliexpress_sample_loads(tmp_path):
    cfg = dataset_cfg("aliexpress", train_path=str(ALIEXPRESS / "aliexpress_train_sample.csv"),
                      test_path=str(ALIEXPRESS / "aliexpress_test_sample.csv"), cache_dir=str(tmp_path))
    b = load_dataset(cfg, seed=0)
    assert [len(t) for _, t in b.splits()] == [90, 10, 20]
    assert b.train.sparse.shape[1] == 16 and b.train.dense.shape[1] == 63
    assert int(b.train.labels[:, 0].sum() + b.val.labels[:, 0].sum()) == 60  # click=1 in 60 of 100
    assert int(b.test.labels[:, 1].sum()) == 2
    # eval/predict read a file of the same format and encode it with the training encoders
    from mtl_train.data.datasets import read_file

    again, _ = b.schema.encoders.transform(read_file(cfg, str(ALIEXPRESS / "aliexpress_test_sample.csv")))
    assert torch.equal(again.sparse, b.test.sparse) and torch.equal(again.labels, b.test.labels)
    assert torch.allclose(again.dense, b.test.dense)

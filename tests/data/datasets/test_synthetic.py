"""dataset=synthetic: the click bias."""
from helpers import dataset_cfg

from mtl_train.data.datasets import load_dataset


def test_synthetic_click_bias_selects_the_clicked_population():
    def conv_rate_of_clicked(bias):
        cfg = dataset_cfg("synthetic", train_rows=20000, val_rows=10, test_rows=10, click_bias=bias)
        t = load_dataset(cfg, seed=0).train
        clicked = t.labels[:, 0] == 1
        return float(t.extra["purchase_if_click"][clicked].mean()), float(t.extra["purchase_if_click"].mean())

    clicked0, all0 = conv_rate_of_clicked(0.0)
    clicked1, all1 = conv_rate_of_clicked(1.0)
    assert all0 == all1  # the conversion ground truth does not depend on the click model
    assert clicked1 > clicked0 + 0.05  # the bias makes the clicked rows likelier converters

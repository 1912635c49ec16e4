"""graph=esmm's constructor: defaults and its one-line config errors (cases the mutation run
of docs/RESULTS.md, "Mutation testing", found untested)."""
import pytest
import torch.nn as nn

from mtl_train.data.schema import DenseFeature, FeatureSchema, SparseFeature, Task
from mtl_train.errors import ConfigError
from mtl_train.models.graphs.esmm import ESMM


def schema(*tasks):
    return FeatureSchema(sparse=[SparseFeature("u", 10)], dense=[DenseFeature("x")], tasks=list(tasks))


FUNNEL = (Task("click", "click"), Task("buy", "buy", parent="click"))


def test_defaults_are_relu_towers_without_dropout():
    g = ESMM(schema(*FUNNEL), [6, 6], [8, 4])
    layers = [m for m in g.modules() if not isinstance(m, (nn.Sequential, nn.ModuleList, ESMM))]
    assert not any(isinstance(m, nn.Dropout) for m in layers)
    assert sum(isinstance(m, nn.ReLU) for m in layers) == 4  # two hidden layers in each of two towers
    assert g.last_shared_layer() == [g.towers[0][-1].weight]  # the root task's last layer


def test_a_dataset_without_a_funnel_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        ESMM(schema(Task("click", "click"), Task("like", "like")), [6, 6], [8])
    assert str(e.value) == "graph=esmm: no task of this dataset has a parent (declare the funnel, e.g. purchase: click)"


def test_bad_tower_sizes_and_a_regression_task_in_the_funnel_name_the_key_and_the_task():
    with pytest.raises(ConfigError) as e:
        ESMM(schema(*FUNNEL), [6, 6], [8, 0])
    assert str(e.value) == "graph.tower_hidden: layer sizes must be positive, got [8, 0]"
    with pytest.raises(ConfigError) as e:
        ESMM(schema(Task("click", "click"), Task("time", "time", type="regression", parent="click")), [6, 6], [8])
    assert str(e.value) == ("graph: task 'time' is a regression task but graph=esmm (the probability product along "
                            "the funnel) needs its probability (binary tasks only)")

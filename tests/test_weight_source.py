"""weight_source=shared:N: every masked tensor's random weights come from one vector of N values (issue 25)."""

import math
from collections import Counter

import pytest
import torch
from torch import nn

import supermask
from supermask import ConfigError
from supermask.core.convert import random_weight
from supermask.core.init import draw_weight, shared_source, shared_values, source_size, weight_std
from supermask.run.config import make_config


def test_a_tensor_holds_each_source_value_as_often_as_its_size_allows():
    source = torch.tensor([0.5, -1.0, 2.0, -0.25])
    values = shared_values(source, (3, 4), seed=0, name="a")  # 12 = 3 x 4: each value exactly 3 times
    assert Counter(values.flatten().tolist()) == {0.5: 3, -1.0: 3, 2.0: 3, -0.25: 3}
    ten = Counter(shared_values(source, (10,), seed=0, name="b").tolist())  # 10 = 2 x 4 + 2: two values once more
    assert set(ten) == set(source.tolist()) and sorted(ten.values()) == [2, 2, 3, 3]
    assert not torch.equal(values.flatten()[:10], shared_values(source, (3, 4), seed=0, name="c").flatten()[:10])
    # a tensor smaller than the source takes n distinct values, its own: two such tensors do not share them all
    wide = torch.arange(100.0)
    a, b = (set(shared_values(wide, (10,), seed=0, name=k).tolist()) for k in ("a", "b"))
    assert len(a) == len(b) == 10 and a != b


@pytest.mark.parametrize("kind", ["signed-constant", "kaiming-normal", "kaiming-uniform"])
def test_weights_from_a_source_are_its_values_at_the_layers_scale(kind):
    source = torch.tensor([0.5, -1.0, 2.0, -0.25])
    w = draw_weight((3, 4), kind, seed=0, name="a", source=source)
    std = weight_std((3, 4))  # sqrt(2 / 4)
    order = shared_values(source, (3, 4), seed=0, name="a")
    if kind == "signed-constant":  # the sign of each value, at the constant
        assert torch.equal(w, order.sign() * std)
    elif kind == "kaiming-normal":  # the (standard normal) values at the layer's std
        assert torch.allclose(w, order * std)
    else:  # each value's normal CDF on (-sqrt(3) std, sqrt(3) std): 0 -> 0, 2.0 -> 0.9545 * 2 - 1 of the bound
        bound = math.sqrt(3) * std
        assert torch.allclose(w, (torch.special.ndtr(order) * 2 - 1) * bound)
        assert w.abs().max() < bound


def test_a_converted_model_draws_every_masked_tensor_from_the_same_n_values():
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 4, bias=False), nn.Linear(4, 3))
    supermask.convert(model, "biprop", 0.5, weight_seed=3, weight_source="shared:7", skip=["last"])
    source = shared_source(3, 7)
    for layer in (model[0], model[2]):
        w = random_weight(layer)
        std = weight_std(w.shape, keep_fraction=0.5)  # Biprop's scaled fan
        # Biprop's Kaiming normal: each weight is a source value at the layer's std; 30 and 20 weights use all 7
        assert sorted(set(torch.round(w.flatten() / std, decimals=5).tolist())) == \
            sorted(set(torch.round(source, decimals=5).tolist()))
    # the skipped layer is drawn as without a source
    plain = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 4, bias=False), nn.Linear(4, 3))
    supermask.convert(plain, "biprop", 0.5, weight_seed=3, skip=["last"])
    assert torch.equal(model[3].weight, plain[3].weight)
    assert not torch.equal(random_weight(model[0]), random_weight(plain[0]))


def test_weight_source_is_checked_where_it_is_given():
    assert source_size("full") is None and source_size("shared:1000") == 1000
    for bad in ("shared:0", "shared:", "shared:1.5", "half"):
        with pytest.raises(ConfigError, match="full or shared:N"):
            source_size(bad)
    assert make_config(None, {"weight_source": "shared:64"}).weight_source == "shared:64"
    with pytest.raises(ConfigError, match="method=dense draws none"):
        make_config(None, {"method": "dense", "weight_source": "shared:64"})
    with pytest.raises(ConfigError, match="weight_source"):
        supermask.convert(nn.Sequential(nn.Linear(3, 2)), "dense", weight_source="shared:4")

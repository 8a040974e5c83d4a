"""layer_streams=shared: every masked tensor draws from the start of one stream per seed, as the IWR code reseeds
before each layer (docs/fidelity.md D9)."""

import json

import pytest
import torch

from supermask import build_model, convert
from supermask.cli import main
from supermask.core.convert import masked_layers, random_weight
from supermask.errors import ConfigError
from supermask.run.config import make_config


def _layers(streams):
    model = convert(build_model("resnet18", width=0.125), "edge-popup", 0.5, layer_streams=streams)
    return {name: (random_weight(layer, p), p.scores.detach()) for name, layer, p in masked_layers(model)}


def test_same_shaped_tensors_share_their_values_only_with_shared_streams():
    a, b = "layer1.0.conv1", "layer1.1.conv2"  # two 3x3 convs of one shape in a ResNet-18 stage
    shared, own = _layers("shared"), _layers("independent")
    assert shared[a][0].shape == shared[b][0].shape
    assert torch.equal(shared[a][0], shared[b][0]) and torch.equal(shared[a][1], shared[b][1])
    assert not torch.equal(own[a][0], own[b][0]) and not torch.equal(own[a][1], own[b][1])
    # another shape starts from the same stream: its first weights are the same draws (the same signs; another
    # fan, another constant), where independent streams agree on about half
    c = "layer2.0.conv1"
    assert shared[c][0].shape != shared[a][0].shape
    assert torch.equal(shared[c][0].reshape(-1)[:200].sign(), shared[a][0].reshape(-1)[:200].sign())
    assert not torch.equal(own[c][0].reshape(-1)[:200].sign(), own[a][0].reshape(-1)[:200].sign())
    with pytest.raises(ConfigError, match="unknown layer_streams 'per-model'"):
        make_config("digits", {"layer_streams": "per-model"})


def test_a_shared_stream_run_exports_and_rebuilds_exactly(tmp_path, capsys):
    keys = ["layer_streams=shared", "epochs=1", "threads=1"]
    assert main(["train", "digits", *keys, f"out_dir={tmp_path / 'r'}", "-q"]) == 0
    acc = json.loads((tmp_path / "r" / "summary.json").read_text())["test_acc"]
    assert main(["export", str(tmp_path / "r"), "-o", str(tmp_path / "net.smask")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "net.smask")]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == acc

"""A method defined in one file, as docs/adding-a-method.md describes: it registers itself, trains through the
command line (method=NAME), exports to .smask and evaluates from it."""

import json

import pytest
import torch
from torch import nn

import supermask
from supermask.cli import main
from supermask.core.methods import REGISTRY, Method, ScoredWeight, register


class HalfPopup(ScoredWeight):
    """A toy: Edge-Popup at half the scale, W_eff = W * M / 2."""

    @staticmethod
    def values(weight, mask, members=False):
        return weight * 0.5


def note_epoch(model, cfg, *, epoch, step):
    """An end-of-epoch hook that changes nothing and logs one record."""
    return [{"kind": "toy", "epoch": epoch + 1, "step": step, "layer": "all", "changed": 0}]


HALF_POPUP = Method("half-popup", HalfPopup, weight_init="kaiming-uniform", end_of_epoch=note_epoch,
                    summary="a toy for the tests")


@pytest.fixture
def half_popup():
    register(HALF_POPUP)
    yield HALF_POPUP
    REGISTRY.pop(HALF_POPUP.name)  # the other tests see the built-in methods only


def test_the_toy_methods_weight_and_score_gradient_by_hand(half_popup):
    model = supermask.convert(nn.Sequential(nn.Linear(2, 2, bias=False)), "half-popup", 0.5)
    layer = model[0]
    p = layer.parametrizations.weight[0]
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
        p.scores.copy_(torch.tensor([[0.4, -0.1], [-0.3, 0.2]]))  # keeps (0, 0) and (1, 0)
    assert torch.equal(layer.weight, torch.tensor([[0.5, 0.0], [1.5, 0.0]]))
    layer(torch.tensor([[1.0, 2.0]])).sum().backward()
    # dL/dW_eff = [[1, 2], [1, 2]]; dL/dS = dL/dW_eff * W / 2 * sign(S)
    assert p.scores.grad.tolist() == [[0.5, 2.0], [-1.5, -4.0]]


def test_an_unregistered_method_is_refused(capsys):
    assert main(["train", "digits", "method=half-popup", "epochs=1"]) == 2
    assert "half-popup" in capsys.readouterr().err


def test_the_toy_method_trains_exports_and_evaluates_through_the_cli(half_popup, tmp_path, capsys):
    run, net = tmp_path / "run", tmp_path / "net.smask"
    assert main(["train", "digits", "method=half-popup", "epochs=2", "width=0.25", f"out_dir={run}", "-q"]) == 0
    config = (run / "config.yaml").read_text()
    assert "method: half-popup" in config and "weight_init: kaiming-uniform" in config  # the method's own default
    records = [json.loads(line) for line in (run / "schedule.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "toy"] == [1, 2]  # its hook ran at each epoch's end
    assert main(["export", str(run), "-o", str(net)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert main(["eval", str(net)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_file["test_acc"] == from_run["test_acc"] == json.loads((run / "summary.json").read_text())["test_acc"]
    rebuilt = dict(supermask.load(net).named_modules())
    trained = supermask.run.train.load_run_model(run, device="cpu")[2]
    for name, layer, p in supermask.masked_layers(trained):  # each layer: half the random weights it keeps
        expected = 0.5 * supermask.random_weight(layer, p) * p.mask()
        assert torch.equal(rebuilt[name].weight, expected)

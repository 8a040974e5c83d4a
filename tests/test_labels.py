"""Readable layer labels: recorded by a run, shown by compare's tables and plots, rebuilt for runs that lack them."""

import csv
import json
import shutil

import pytest
from torch import nn

from supermask import build_model, convert
from supermask.run.checkpoint import load_tensors, save_tensors
from supermask.cli import main
from supermask.core.labels import labels_from_shapes, layer_labels
from supermask.analysis.landscape import TOTAL, write_comparison

CONV4 = ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2", "fc3"]
CONV4_KEYS = ["0", "2", "5", "7", "11", "13", "15"]  # its Sequential indices


def _converted(model, **kw):
    convert(model, "edge-popup", 0.5, weight_seed=0, score_seed=0, **kw)
    return model


def test_labels_by_kind_and_order_inside_containers():
    model = _converted(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3), nn.Linear(3, 3)),
                                     nn.MultiheadAttention(4, 2), nn.Embedding(5, 4), nn.Linear(4, 4),
                                     nn.Embedding(5, 4)))
    assert layer_labels(model) == {"0": "conv1", "2.0": "2.conv1", "2.1": "2.fc1", "5": "fc1",
                                   "3.in_proj_weight": "3.in_proj_weight", "3.out_proj": "3.out_proj",  # named
                                   "4": "embedding1", "6": "embedding2"}
    assert list(layer_labels(_converted(build_model("conv4", width=0.0625)))) == CONV4_KEYS
    assert list(layer_labels(_converted(build_model("conv4", width=0.0625))).values()) == CONV4
    # a layer left dense still counts: the labels name the model's layers, not the n-th masked one
    skipped = _converted(build_model("conv4", width=0.0625), skip=["first"])
    assert list(layer_labels(skipped).values()) == CONV4[1:]


def test_qualified_names_are_kept():
    labels = layer_labels(_converted(build_model("resnet18", width=0.0625)))
    assert labels["layer1.0.conv1"] == "layer1.0.conv1" and labels["fc"] == "fc"
    assert labels["stem.0"] == "stem.conv1" and labels["layer2.0.shortcut.0"] == "layer2.0.shortcut.conv1"
    labels = layer_labels(_converted(build_model("vit", width=0.0625)))
    assert labels["encoder.layers.0.self_attn.in_proj_weight"] == "encoder.layers.0.self_attn.in_proj_weight"
    assert all(k == v for k, v in labels.items())  # every layer of the ViT has a name


def test_labels_from_shapes():
    shapes = {"0": (4, 1, 3, 3), "2": (4, 4, 3, 3), "5": (8, 4), "7": (2, 8), "head.0": (3, 3, 3), "head.1": (2, 2),
              "attn.in_proj_weight": (6, 2)}
    assert labels_from_shapes(shapes) == {"0": "conv1", "2": "conv2", "5": "fc1", "7": "fc2", "head.0": "head.conv1",
                                          "head.1": "head.fc1", "attn.in_proj_weight": "attn.in_proj_weight"}
    # labels that would name two layers alike keep the exact keys
    assert labels_from_shapes({"0": (2, 2), "fc1": (2, 2)}) == {"0": "0", "fc1": "fc1"}


@pytest.fixture(scope="module")
def conv4_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv4")
    for seed in (0, 1):
        assert main(["train", "digits", "model=conv4", "width=0.0625", "epochs=1", "-q", f"score_seed={seed}",
                     f"out_dir={root / f's{seed}'}"]) == 0
    return [root / "s0", root / "s1"]


def _tick_labels(monkeypatch):
    """The x tick labels of every plot drawn, by file name."""
    from supermask import plots

    seen = {}
    save = plots._save

    def spy(plt, fig, path):
        seen[path.name] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        return save(plt, fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    return seen


def test_a_conv4_comparison_shows_labels_and_keeps_the_keys(conv4_runs, tmp_path, monkeypatch):
    _, meta = load_tensors(conv4_runs[0] / "masks.safetensors")
    assert meta["layers"] == CONV4_KEYS and meta["labels"] == dict(zip(CONV4_KEYS, CONV4))
    ticks = _tick_labels(monkeypatch)
    summary = write_comparison(conv4_runs, tmp_path / "cmp")
    assert summary["layers"] == CONV4_KEYS + [TOTAL]
    assert summary["labels"] == {**dict(zip(CONV4_KEYS, CONV4)), TOTAL: TOTAL}
    assert ticks["layers.png"] == CONV4
    with open(tmp_path / "cmp" / "pairs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["layer"], r["label"]) for r in rows] == list(zip(CONV4_KEYS, CONV4)) + [(TOTAL, TOTAL)]
    on_disk = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert on_disk["labels"] == summary["labels"]
    assert list(on_disk["by_method_pair"]["edge-popup|edge-popup"]) == summary["layers"]  # keyed by the exact keys


@pytest.mark.parametrize("meta", ["without labels", "without metadata"])
def test_an_old_run_without_labels_still_compares(conv4_runs, tmp_path, meta):
    old = []
    for run in conv4_runs:
        copy = tmp_path / run.name
        shutil.copytree(run, copy)
        masks, recorded = load_tensors(copy / "masks.safetensors")
        recorded.pop("labels")
        save_tensors(copy / "masks.safetensors", masks, recorded if meta == "without labels" else None)
        old.append(copy)
    summary = write_comparison(old, tmp_path / "cmp")
    assert summary["layers"] == CONV4_KEYS + [TOTAL]  # the order from the names when nothing was recorded
    assert [summary["labels"][k] for k in CONV4_KEYS] == CONV4  # rebuilt from the mask shapes


def test_norms_rows_and_plot_carry_labels(conv4_runs, tmp_path, monkeypatch):
    from supermask.analysis.norms import layer_norms

    result = layer_norms(conv4_runs[0])
    assert [(r["layer"], r["label"]) for r in result["layers"]] == list(zip(CONV4_KEYS, CONV4))
    ticks = _tick_labels(monkeypatch)
    assert main(["norms", str(conv4_runs[0]), "--out", str(tmp_path / "n")]) == 0
    assert ticks["norms.png"] == CONV4

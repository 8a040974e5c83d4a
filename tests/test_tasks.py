"""Per-task masks over one random network (SupSup): task streams, training a stream, the multi-task .smask, and task
inference over superposed masks."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from supermask import data
from supermask.cli import main
from supermask.core.convert import masked_layers, random_weight
from supermask.core.superpose import Superposition, entropy, masked_sums, pack_tasks, unpack
from supermask.data import load_dataset
from supermask.data.task_streams import permuted, pixel_permutation, split, task_dataset
from supermask.errors import ConfigError
from supermask.export import smask
from supermask.export.multitask import evaluate_inferred, export_tasks, load_superposition
from supermask.multi.tasks import TASKS_FILE, task_runs, train_tasks
from supermask.run.checkpoint import read_json
from supermask.run.config import make_config
from supermask.run.train import evaluate, load_run_model


def _images(n: int, classes: int = 10, side: int = 4, seed: int = 0) -> data.Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % classes
    return data.Dataset(name="toy", train_x=x, train_y=y, test_x=x[: n // 2].clone(), test_y=y[: n // 2].clone(),
                        classes=tuple(f"c{i}" for i in range(classes)), mean=(0.5,), std=(0.25,), source="toy",
                        augment=True)


# ----------------------------------------------------------------------------------------------------------------- #
# Streams


def test_permuted_task_zero_is_the_identity_and_task_t_moves_pixels_by_its_seeds_permutation():
    ds = _images(20)
    assert torch.equal(permuted(ds, 0).train_x, ds.train_x)
    order = np.random.default_rng(3).permutation(16)
    np.testing.assert_array_equal(pixel_permutation(3, 16), order)
    t3 = permuted(ds, 3)
    flat, moved = ds.train_x.reshape(20, 16), t3.train_x.reshape(20, 16)
    for k in (0, 5, 15):  # pixel k of task 3 is pixel order[k] of the original image
        assert torch.equal(moved[:, k], flat[:, order[k]])
    assert torch.equal(t3.test_x.reshape(10, 16), ds.test_x.reshape(10, 16)[:, order])  # the same order for test
    assert torch.equal(t3.train_y, ds.train_y) and not t3.augment  # labels kept; no crop or flip after a shuffle
    assert not torch.equal(permuted(ds, 4).train_x, t3.train_x)
    assert t3.name == "toy-permuted-3"


def test_split_task_holds_its_two_classes_relabelled_from_zero():
    ds = _images(40)
    t2 = split(ds, 2)  # classes 4 and 5
    assert t2.classes == ("c4", "c5")
    assert len(t2.train_y) == 8 and set(t2.train_y.tolist()) == {0, 1}
    assert torch.equal(t2.train_x, ds.train_x[(ds.train_y == 4) | (ds.train_y == 5)])
    assert torch.equal(t2.train_y, ds.train_y[(ds.train_y == 4) | (ds.train_y == 5)] - 4)
    assert len(t2.test_y) == 4
    with pytest.raises(ConfigError, match="task 5 is outside task_stream=split-cifar10, whose tasks are 0 to 4"):
        task_dataset("split-cifar10", ds, 5)


@pytest.mark.parametrize("overrides, message", [
    ({"task_stream": "permuted-mnist"}, "task_stream=permuted-mnist is made of mnist, not dataset=digits"),
    ({"task_stream": "split-mnist", "dataset": "mnist"}, "unknown task_stream 'split-mnist'"),
    ({"task": 2}, "task=2 is a task of a task_stream"),
    ({"task_stream": "split-cifar10", "dataset": "cifar10", "tasks": 6}, "tasks=6 is beyond task_stream=split-cifar10"),
    ({"task_stream": "split-cifar10", "dataset": "cifar10", "task": 5}, "task=5 is beyond task_stream=split-cifar10"),
    ({"task_stream": "permuted-mnist", "dataset": "mnist", "tasks": 2, "task": 1}, "set one"),
    ({"tasks": 0}, "tasks"),
    ({"optimizer": "adagrad"}, "optimizer"),
])
def test_task_keys_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config("digits", overrides)


def test_rmsprop_takes_torchs_defaults():
    from supermask.run.train import optimizer_for

    opt = optimizer_for(make_config("digits", {"optimizer": "rmsprop", "lr": 1e-4, "weight_decay": 0.0}),
                        [nn.Parameter(torch.zeros(3))])
    assert isinstance(opt, torch.optim.RMSprop)
    group = opt.param_groups[0]
    assert (group["lr"], group["alpha"], group["momentum"], group["weight_decay"]) == (1e-4, 0.99, 0, 0.0)


# ----------------------------------------------------------------------------------------------------------------- #
# Training a stream (a user's stream of datasets: three permutations of the 8x8 digits)

BASE = {"model": "lenet300", "width": 0.5, "epochs": 4, "batch_size": 128, "eval_batch_size": 500, "threads": 1}


@pytest.fixture(scope="module")
def digits_stream():
    digits = load_dataset("digits")
    return [permuted(digits, t) for t in range(3)]


@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory, digits_stream):
    out = tmp_path_factory.mktemp("tasks") / "stream"
    cfg = make_config("digits", {**BASE, "tasks": 3, "out_dir": str(out)})
    record = train_tasks(cfg, progress=False, stream=digits_stream)
    return out, record


def test_each_task_has_its_own_mask_over_the_same_random_weights(three_tasks, digits_stream):
    out, record = three_tasks
    assert [r["task"] for r in record["per_task"]] == [0, 1, 2] and record["finished"] == 3
    assert read_json(out / TASKS_FILE) == record
    models = [load_run_model(d, device="cpu")[2] for d in task_runs(out)]
    weights = [{n: random_weight(layer, p) for n, layer, p in masked_layers(m)} for m in models]
    masks = [{n: p.mask() for n, _, p in masked_layers(m)} for m in models]
    for w, m in zip(weights[1:], masks[1:]):
        assert all(torch.equal(w[n], weights[0][n]) for n in w)  # one random network
        assert any(not torch.equal(m[n], masks[0][n]) for n in m)  # each task its own mask
    for t, r in enumerate(record["per_task"]):
        summary = read_json(out / r["run"] / "summary.json")
        assert (summary["score_seed"], summary["data_seed"], summary["weight_seed"]) == (t, t, 0)
        assert r["test_acc"] > 0.5  # a task is learned (10 classes: chance is 0.1)


def test_a_later_task_never_changes_an_earlier_tasks_network(three_tasks, digits_stream, tmp_path):
    """Task 0 trained alone equals task 0 of the stream that went on to tasks 1 and 2, mask and accuracy exactly;
    and re-evaluated after them, it gives the accuracy it recorded."""
    out, record = three_tasks
    alone = train_tasks(make_config("digits", {**BASE, "tasks": 1, "out_dir": str(tmp_path / "one")}),
                        progress=False, stream=digits_stream[:1])
    assert alone["per_task"][0]["test_acc"] == record["per_task"][0]["test_acc"]
    a = load_run_model(tmp_path / "one" / "task-000", device="cpu")[2]
    b = load_run_model(out / "task-000", device="cpu")[2]
    assert all(torch.equal(p.mask(), q.mask()) for (_, _, p), (_, _, q) in zip(masked_layers(a), masked_layers(b)))
    _, acc = evaluate(b, digits_stream[0], 500, torch.device("cpu"))
    assert acc == record["per_task"][0]["test_acc"]


def test_a_stream_cut_off_resumes_to_the_same_tasks(three_tasks, digits_stream, tmp_path):
    out, record = three_tasks
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "task-002")  # killed before task 2 wrote anything
    cfg = make_config("digits", {**BASE, "tasks": 3, "out_dir": str(copy)})
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train_tasks(cfg, progress=False, stream=digits_stream)
    resumed = train_tasks(cfg, resume=True, progress=False, stream=digits_stream)
    assert [r["test_acc"] for r in resumed["per_task"]] == [r["test_acc"] for r in record["per_task"]]
    with pytest.raises(ConfigError, match="prune_rate"):
        train_tasks(make_config("digits", {**BASE, "tasks": 3, "prune_rate": 0.3, "out_dir": str(copy)}),
                    resume=True, progress=False, stream=digits_stream)


def test_a_stream_is_refused_when_it_does_not_fit(digits_stream, tmp_path):
    cfg = make_config("digits", {**BASE, "tasks": 2, "out_dir": str(tmp_path / "x")})
    with pytest.raises(ConfigError, match="tasks=2, and the stream holds 3 datasets"):
        train_tasks(cfg, progress=False, stream=digits_stream)
    with pytest.raises(ConfigError, match="needs task_stream="):
        train_tasks(cfg, progress=False)
    with pytest.raises(ConfigError, match="different numbers of classes"):
        train_tasks(cfg, progress=False, stream=[digits_stream[0], split(digits_stream[1], 0)])


# ----------------------------------------------------------------------------------------------------------------- #
# The multi-task .smask


@pytest.fixture(scope="module")
def three_task_file(three_tasks, tmp_path_factory):
    out, _ = three_tasks
    path = tmp_path_factory.mktemp("smask") / "tasks.smask"
    report = export_tasks(out, path)
    return path, report


def test_every_tasks_network_rebuilds_exactly_from_one_file(three_tasks, three_task_file, digits_stream):
    out, record = three_tasks
    path, report = three_task_file
    header = smask.read(path)[0]
    assert header["version"] == 3 and len(header["tasks"]) == 3 and header["layers"] == []
    assert report["tasks"] == 3 and report["bytes_per_task"] * 3 == pytest.approx(report["bytes"], abs=1)
    assert report["mask_bytes_per_task"] < 1.01 * report["entropy_bytes_per_task"] + 64
    x = next(data.eval_batches(digits_stream[1], 64))[0]
    for t, run in enumerate(task_runs(out)):
        trained = load_run_model(run, device="cpu")[2].eval()
        rebuilt = smask.load(path, task=t)
        with torch.no_grad():
            assert torch.equal(rebuilt(x), trained(x))
        assert header["tasks"][t]["test_acc"] == record["per_task"][t]["test_acc"]
    # one seed: the file stores the weights of no task
    assert all("changed" not in e for task in header["tasks"] for e in task["layers"])


def _repacked(path: Path, target: Path, edit) -> Path:
    header, payload = smask.read(path)
    edit(header)
    target.write_bytes(smask.pack(header, bytearray(payload)))
    return target


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.update(version=2), "header has task fields, which need format version 3"),
    (lambda h: h["tasks"][1]["layers"][0].update(kept=h["tasks"][1]["layers"][0]["kept"] - 1), "keeps"),
    (lambda h: h["tasks"][0].update(extra=1), "unknown field 'extra'"),
    (lambda h: h.update(layers=h["tasks"][0]["layers"]), "keeps its networks under 'tasks' alone"),
])
def test_a_damaged_multi_task_file_is_refused(three_task_file, tmp_path, edit, message):
    path, _ = three_task_file
    bad = _repacked(path, tmp_path / "bad.smask", edit)
    with pytest.raises(ConfigError, match=message):
        smask.load(bad, task=1)


def test_a_multi_task_file_needs_its_task_and_checks_its_bytes(three_task_file, tmp_path):
    path, _ = three_task_file
    with pytest.raises(ConfigError, match="holds the networks of 3 tasks: choose one with task=N \\(0 to 2\\)"):
        smask.load(path)
    with pytest.raises(ConfigError, match="task=3 is outside the tasks"):
        smask.load(path, task=3)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    (tmp_path / "flip.smask").write_bytes(raw)
    with pytest.raises(ConfigError, match="corrupt"):
        smask.load(tmp_path / "flip.smask", task=0)


# ----------------------------------------------------------------------------------------------------------------- #
# Task inference


def _two_task_layer():
    """A 2 -> 2 linear layer W = [[4, 1], [1, 1]] and two tasks: A keeps only W[0, 0], B only W[1, 1]."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False)).requires_grad_(False)
    w = torch.tensor([[4.0, 1.0], [1.0, 1.0]])
    a = torch.tensor([[True, False], [False, False]])
    b = torch.tensor([[False, False], [False, True]])
    return Superposition(model, {"0.weight": w}, {"0.weight": pack_tasks([a, b])}), w, a, b


def test_the_alpha_gradient_is_the_hand_computed_one():
    sup, w, a, b = _two_task_layer()
    x = torch.tensor([[1.0, 0.0]])
    # alpha = (1/2, 1/2): logits (4 a_A, 0) = (2, 0). Two classes, z the logit gap: dH/dz = -z p (1 - p), p = sigmoid(z);
    # z = 4 a_A, so dH/da_A = 4 * (-2 p (1 - p)) at p = sigmoid(2); B's weight meets x's zero: dH/da_B = 0.
    p = 1 / (1 + math.exp(-2))
    g = sup.alpha_gradient(x, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert g.tolist() == pytest.approx([4 * (-2 * p * (1 - p)), 0.0], abs=1e-6)
    assert sup.one_shot(x) == 0 and sup.binary(x) == 0
    # the other input: x = (0, 1) meets only B's weight: its alpha lowers the entropy, A's does nothing
    x = torch.tensor([[0.0, 1.0]])
    assert sup.alpha_gradient(x, torch.tensor([0.5, 0.5], dtype=torch.float64))[0] == 0
    assert sup.one_shot(x) == 1 and sup.binary(x) == 1


def test_the_alpha_gradient_equals_autograd_through_the_superposition():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False)).requires_grad_(False)
    weights = {"0.weight": torch.randn(5, 6), "2.weight": torch.randn(3, 5)}
    masks = [{k: torch.rand(w.shape) < 0.5 for k, w in weights.items()} for _ in range(4)]
    sup = Superposition(model, weights, {k: pack_tasks([task[k] for task in masks]) for k in weights})
    x = torch.randn(7, 6)
    alphas = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    h1 = torch.relu(x @ (weights["0.weight"] * sum(alphas[i].float() * masks[i]["0.weight"] for i in range(4))).T)
    h = entropy(h1 @ (weights["2.weight"] * sum(alphas[i].float() * masks[i]["2.weight"] for i in range(4))).T)
    expected, = torch.autograd.grad(h, alphas)
    got = sup.alpha_gradient(x, alphas.detach())
    assert torch.allclose(got, expected, atol=1e-5)
    for i, task in enumerate(masks):  # a one-hot alpha is task i's own network
        assert torch.equal(unpack(sup.masks["0.weight"][i], weights["0.weight"].shape), task["0.weight"])
        own = torch.relu(x @ (weights["0.weight"] * task["0.weight"]).T) @ (weights["2.weight"] * task["2.weight"]).T
        assert torch.allclose(sup.task_logits(x, i), own)


@pytest.mark.parametrize("n", [1, 7, 8, 13, 64])
def test_masked_sums_read_each_tasks_bits(n):
    g = torch.Generator().manual_seed(n)
    values = torch.randn(n, generator=g, dtype=torch.float64)
    masks = [torch.rand(n, generator=g) < 0.5 for _ in range(20)] + [torch.ones(n, dtype=torch.bool),
                                                                     torch.zeros(n, dtype=torch.bool)]
    got = masked_sums(values, pack_tasks(masks), chunk=3)
    assert torch.allclose(got, torch.stack([values[m].sum() for m in masks]), atol=1e-12)
    assert got[-1] == 0
    # by hand: values 1, 2, 4, ..., a mask of bits 1010 0001 selects elements 0, 2 and 7
    if n == 8:
        powers = torch.tensor([2.0**k for k in range(8)], dtype=torch.float64)
        rows = torch.tensor([[0b10100001]], dtype=torch.uint8)
        assert masked_sums(powers, rows).tolist() == [1 + 4 + 128]


def test_min_entropy_picks_the_task_whose_own_network_is_surest():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 4, bias=False)).requires_grad_(False)
    w = torch.randn(4, 6)
    masks = [torch.rand(4, 6) < 0.5 for _ in range(5)]
    sup = Superposition(model, {"0.weight": w}, {"0.weight": pack_tasks(masks)})
    x = torch.randn(3, 6)
    own = [float(entropy(x @ (w * m).T)) for m in masks]
    assert sup.min_entropy(x) == min(range(5), key=own.__getitem__)
    assert sup.infer(x, "min-entropy") == sup.min_entropy(x)


def test_binary_search_halves_the_candidates_to_the_lowest_gradient():
    sup, *_ = _two_task_layer()
    calls = []

    def gradient(x, alphas, tasks=None):  # task i's gradient is i - 2.2: the lowest is task 0, whatever the alphas
        calls.append(sorted(tasks))
        return torch.tensor([i - 2.2 if i in tasks else 0.0 for i in range(5)], dtype=torch.float64)

    sup.masks = {"0.weight": sup.masks["0.weight"][[0] * 5]}  # 5 tasks (their masks are not read: the gradient is stubbed)
    sup.alpha_gradient = gradient
    assert sup.binary(torch.zeros(1, 2)) == 0
    assert calls == [[0, 1, 2, 3, 4], [0, 1, 2], [0, 1]]  # 5 -> 3 (at or below the median) -> 2 -> 1


def test_tasks_are_inferred_from_their_own_test_images(three_task_file, digits_stream):
    path, _ = three_task_file
    with pytest.raises(ConfigError, match="a stream of datasets given in Python"):
        evaluate_inferred(path, batch_size=64, images=128)
    result = evaluate_inferred(path, batch_size=64, images=128, stream=digits_stream)
    assert result["tasks"] == 3 and [r["batches"] for r in result["per_task"]] == [2, 2, 2]
    # permuted digits are told apart from a batch of 64: every batch's task is found
    assert result["task_inferred"] == 1.0
    for r in result["per_task"]:  # and then classified by its own network (within the first 128 images' share)
        assert r["test_acc"] > 0.5
        assert r["test_acc_found_only"] == r["test_acc"]  # every batch found: the published measure agrees


def test_a_batchs_task_can_be_read_off_its_first_images(three_task_file, digits_stream, monkeypatch):
    from supermask.core.superpose import Superposition

    path, _ = three_task_file
    seen = []
    real = Superposition.infer

    def infer(self, x, how):
        seen.append(len(x))
        return real(self, x, how)

    monkeypatch.setattr(Superposition, "infer", infer)
    result = evaluate_inferred(path, batch_size=64, images=128, stream=digits_stream, infer_from=1)
    assert seen == [1] * 6 and result["infer_from"] == 1  # one image a batch decides; the batch is classified whole
    for r in result["per_task"]:  # a batch whose task was missed counts wrong in the published measure
        assert r["test_acc_found_only"] <= r["test_acc"]
        if r["task_inferred"] == 0:
            assert r["test_acc_found_only"] == 0
    assert [r["images"] for r in result["per_task"]] == [128] * 3
    seen.clear()
    whole = evaluate_inferred(path, batch_size=64, images=128, stream=digits_stream)
    assert seen == [64] * 6 and "infer_from" not in whole
    with pytest.raises(ConfigError, match="infer_from \\(0\\) must be >= 1"):
        evaluate_inferred(path, batch_size=64, stream=digits_stream, infer_from=0)


def test_the_published_accuracy_counts_a_missed_batch_wrong(three_task_file, digits_stream, monkeypatch):
    from supermask.core.superpose import Superposition

    path, _ = three_task_file
    monkeypatch.setattr(Superposition, "infer", lambda self, x, how: 0)  # every batch taken for task 0's
    result = evaluate_inferred(path, batch_size=64, images=128, stream=digits_stream)
    first, *others = result["per_task"]
    assert first["task_inferred"] == 1 and first["test_acc_found_only"] == first["test_acc"] > 0.5
    for r in others:  # classified by task 0's network (some right by chance), but counted wrong by the scripts
        assert r["task_inferred"] == 0 and r["test_acc_found_only"] == 0 and r["test_acc"] > 0
    assert result["test_acc_found_only"] == first["test_acc"] / 3


def test_task_inference_is_refused_where_tasks_differ_in_more_than_masks(digits_stream, tmp_path):
    out = tmp_path / "bi"
    train_tasks(make_config("digits", {**BASE, "method": "biprop", "tasks": 2, "out_dir": str(out)}),
                progress=False, stream=digits_stream[:2])
    export_tasks(out, tmp_path / "bi.smask")
    with pytest.raises(ConfigError, match="superposes masks of the weights themselves"):
        load_superposition(tmp_path / "bi.smask")
    assert smask.load(tmp_path / "bi.smask", task=1) is not None  # each task's own network still rebuilds


# ----------------------------------------------------------------------------------------------------------------- #
# The command line, on a small MNIST copy


def _idx(a: np.ndarray) -> bytes:
    a = np.asarray(a, dtype=np.uint8)
    return bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()


@pytest.fixture
def small_mnist(tmp_path, monkeypatch):
    """400 training and 200 test images cut from the MNIST copy (when present), as IDX files with their md5s."""
    env = os.environ.get("SUPERMASK_DATA")
    shared = Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"
    try:
        full = load_dataset("mnist", shared, download=False)
    except ConfigError:
        pytest.skip("no MNIST copy")
    arrays = {"train-images-idx3-ubyte": full.train_x[:400, 0].numpy(), "train-labels-idx1-ubyte": full.train_y[:400].numpy(),
              "t10k-images-idx3-ubyte": full.test_x[:200, 0].numpy(), "t10k-labels-idx1-ubyte": full.test_y[:200].numpy()}
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for stem, a in arrays.items():
        raw = _idx(a)
        (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        monkeypatch.setitem(data.MNIST_MD5, stem, hashlib.md5(raw).hexdigest())
    return tmp_path / "data"


def test_cli_trains_a_permuted_mnist_stream_and_evaluates_a_task_and_infers_tasks(small_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "supsup-permuted-mnist", "tasks=4", "epochs=2", "width=0.125", "threads=1", "lr=0.001",
                 f"data_dir={small_mnist}", f"out_dir={out}", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "task 3: test accuracy" in printed and "4 tasks over one random network" in printed
    assert main(["export", str(out), "-o", str(tmp_path / "net.smask")]) == 0
    assert "4 tasks over one seed" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "net.smask"), "task=2", f"data_dir={small_mnist}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == 2 and result["test_acc"] == result["recorded_test_acc"] and result["same_data_as_run"]
    assert main(["eval", str(tmp_path / "net.smask"), "task=infer", "infer=binary", "batch_size=100",
                 f"data_dir={small_mnist}"]) == 0
    inferred = json.loads(capsys.readouterr().out)
    assert inferred["infer"] == "binary" and [r["batches"] for r in inferred["per_task"]] == [2, 2, 2, 2]
    assert main(["eval", str(tmp_path / "net.smask"), "task=infer", "infer_from=1", "batch_size=100",
                 f"data_dir={small_mnist}"]) == 0
    assert json.loads(capsys.readouterr().out)["infer_from"] == 1
    assert main(["eval", str(tmp_path / "net.smask"), "task=infer", "infer_from=0"]) == 2
    assert "infer_from=0 must be a whole number >= 1" in capsys.readouterr().err
    # a task's run directory evaluates alone on its own (permuted) data
    assert main(["eval", str(out / "task-001"), f"data_dir={small_mnist}"]) == 0
    assert json.loads(capsys.readouterr().out)["same_data_as_run"]
    assert main(["eval", str(tmp_path / "net.smask"), "task=two"]) == 2
    assert "task='two' must be a task's index" in capsys.readouterr().err


def test_superfluous_outputs_are_built_trained_exported_and_refused_below_the_classes(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "digits", "model=lenet300", "width=0.25", "outputs=25", "epochs=1", "threads=1",
                 f"out_dir={out}", "-q"]) == 0
    model = load_run_model(out, device="cpu")[2]
    assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features == 25
    summary = read_json(out / "summary.json")
    assert summary["num_classes"] == 10  # the data's classes; the network has 15 more outputs, never a label
    capsys.readouterr()
    assert main(["export", str(out), "-o", str(tmp_path / "net.smask")]) == 0
    header = smask.header_of(tmp_path / "net.smask")
    assert header["num_classes"] == 25 and header["preprocessing"]["classes"][10:] == [f"(unused {i})" for i in range(10, 25)]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "net.smask")]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]
    assert main(["train", "digits", "outputs=5", "epochs=1", f"out_dir={tmp_path / 'x'}", "-q"]) == 2
    assert "outputs=5 is fewer than the 10 classes of digits" in capsys.readouterr().err


def test_predict_classifies_images_with_one_tasks_network(three_task_file, tmp_path, capsys):
    from PIL import Image

    path, _ = three_task_file
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", str(path), str(tmp_path / "a.png"), "--task", "2", "--top", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'a.png'}: ")
    assert main(["predict", str(path), str(tmp_path / "a.png")]) == 2
    assert "holds the networks of 3 tasks" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # argparse refuses it
        main(["predict", str(path), str(tmp_path / "a.png"), "--task", "-1"])
    assert stop.value.code == 2 and "-1 must be >= 0" in capsys.readouterr().err

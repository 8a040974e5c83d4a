"""The training loop: exact resume, determinism, divergence, the schedule, what trains, and that it learns."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import supermask.data
import supermask.run.progress
import supermask.run.loop
import supermask.run.train
from supermask import build_model, convert
from supermask.run.checkpoint import load_tensors
from supermask.cli import main
from supermask.run.config import make_config
from supermask.run.train import TrainingError, learning_rate, run

SMALL_CONV_LAYERS = ("0", "2", "6", "8")  # Sequential indices of small-conv's Conv/Linear layers


def config(out_dir, **overrides):
    values = {"width": 0.25, "epochs": 3, "device": "cpu", "out_dir": str(out_dir)}
    values.update(overrides)
    return make_config("digits", values)


TIMINGS = ("seconds", "images_per_s", "data_wait")  # measured, so they differ between equal runs


def metrics_without_seconds(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        for key in TIMINGS:
            del line[key]
    return lines


def checkpoint_tensors(run_dir):
    return load_file(run_dir / "checkpoint.safetensors")


def assert_same_tensors(a, b):
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------------------------------------------
# resume


def kill_in_epoch_2(monkeypatch) -> None:
    """Make training raise KeyboardInterrupt 5 batches into epoch 2 (0-based epoch 1), as a kill there would stop
    it, after some optimizer steps changed the model in memory."""
    real_batches = supermask.data.train_batches

    def killed_in_epoch_2(*args, **kwargs):
        for step, batch in enumerate(real_batches(*args, **kwargs)):
            if kwargs["epoch"] == 1 and step == 5:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(supermask.data, "train_batches", killed_in_epoch_2)


@pytest.mark.parametrize("method", ["edge-popup", "biprop", "dense"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(method, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    summary_a = run(config(a, method=method), progress=False)

    kill_in_epoch_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run(config(b, method=method), progress=False)
    monkeypatch.undo()
    assert len(metrics_without_seconds(b)) == 1
    assert not (b / "summary.json").exists() and not (b / "masks.safetensors").exists()

    summary_b = run(config(b, method=method), resume=True, progress=False)

    assert summary_b["test_acc"] == summary_a["test_acc"]
    assert summary_b["best_test_acc"] == summary_a["best_test_acc"]
    assert (b / "masks.safetensors").read_bytes() == (a / "masks.safetensors").read_bytes()
    assert metrics_without_seconds(b) == metrics_without_seconds(a)
    assert [m["epoch"] for m in metrics_without_seconds(b)] == [1, 2, 3]
    ckpt_a, ckpt_b = checkpoint_tensors(a), checkpoint_tensors(b)
    assert_same_tensors(ckpt_a, ckpt_b)  # scores, random weights and optimizer momentum
    if method != "dense":
        assert any(k.endswith(".scores") for k in ckpt_a)
    assert load_tensors(b / "checkpoint.safetensors")[1]["epoch"] == 3


def test_resume_refuses_a_changed_config(tmp_path):
    run(config(tmp_path, epochs=1), progress=False)
    with pytest.raises(supermask.ConfigError, match="prune_rate"):
        run(config(tmp_path, epochs=1, prune_rate=0.8), resume=True, progress=False)


# --------------------------------------------------------------------------------------------------------------
# determinism and seeds


def test_same_config_same_masks_and_seeds_act_separately(tmp_path):
    def train(name, **kw):
        run(config(tmp_path / name, epochs=1, **kw), progress=False)
        return load_file(tmp_path / name / "masks.safetensors"), checkpoint_tensors(tmp_path / name)

    def weights(ckpt):
        return [ckpt[f"model.{n}.parametrizations.weight.original"] for n in SMALL_CONV_LAYERS]

    masks_1, ckpt_1 = train("first")
    masks_2, ckpt_2 = train("again")
    assert_same_tensors(masks_1, masks_2)
    assert_same_tensors(ckpt_1, ckpt_2)
    assert metrics_without_seconds(tmp_path / "first") == metrics_without_seconds(tmp_path / "again")

    masks_s, ckpt_s = train("score_seed", score_seed=1)
    assert set(masks_s) == set(masks_1)
    assert all(not torch.equal(masks_s[k], masks_1[k]) for k in masks_1)
    for w_s, w_1 in zip(weights(ckpt_s), weights(ckpt_1)):
        assert torch.equal(w_s, w_1)  # the random weights do not depend on score_seed

    _, ckpt_w = train("weight_seed", weight_seed=1)
    for w_w, w_1 in zip(weights(ckpt_w), weights(ckpt_1)):
        assert w_w.shape == w_1.shape and not torch.equal(w_w, w_1)


# --------------------------------------------------------------------------------------------------------------
# divergence


def test_nan_loss_stops_dense_training(tmp_path):
    with pytest.raises(TrainingError, match=r"loss.*epoch 1|epoch 1.*loss") as info:
        run(config(tmp_path, method="dense", lr=1e30), progress=False)
    assert "nan" in str(info.value).lower() or "inf" in str(info.value).lower()
    assert not (tmp_path / "checkpoint.safetensors").exists()
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("method", ["edge-popup", "biprop"])
def test_diverging_scores_stop_a_mask_search(method, tmp_path):
    # The loss of a mask search stays finite while its scores overflow to NaN (a NaN score is never kept, so
    # the masks silently become empty); this must stop the run rather than finish it at chance accuracy.
    with pytest.raises(TrainingError, match="epoch 1") as info:
        run(config(tmp_path, method=method, lr=1e30), progress=False)
    assert "loss" in str(info.value) and "scores" in str(info.value)
    assert not (tmp_path / "masks.safetensors").exists()


def test_divergence_in_a_later_epoch_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = supermask.run.loop.learning_rate
    monkeypatch.setattr(supermask.run.loop, "learning_rate", lambda cfg, epoch: 1e30 if epoch == 1 else real(cfg, epoch))
    with pytest.raises(TrainingError, match="epoch 2"):
        run(config(tmp_path, method="dense"), progress=False)
    assert load_tensors(tmp_path / "checkpoint.safetensors")[1]["epoch"] == 1
    assert [m["epoch"] for m in metrics_without_seconds(tmp_path)] == [1]


def test_nan_loss_on_the_command_line(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code = main(["train", "method=dense", "lr=1e30", "width=0.25", "epochs=2", "device=cpu", f"out_dir={out_dir}", "-q"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("supermask: error: ")
    assert "loss" in lines[0] and "epoch 1" in lines[0] and "Traceback" not in err


# --------------------------------------------------------------------------------------------------------------
# learning-rate schedule


def test_cosine_schedule_hand_values():
    cfg = make_config({"lr": 0.1, "epochs": 10})
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 5) == pytest.approx(0.05)
    assert learning_rate(cfg, 2) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.2)))  # 0.0904508...
    assert learning_rate(cfg, 2) == pytest.approx(0.0904508497)
    assert learning_rate(cfg, 9) == pytest.approx(0.0024471742)
    values = [learning_rate(cfg, e) for e in range(10)]
    assert all(x > y > 0 for x, y in zip(values, values[1:]))


def test_constant_schedule_and_linear_warmup():
    constant = make_config({"lr": 0.2, "epochs": 7, "lr_schedule": "constant"})
    assert [learning_rate(constant, e) for e in range(7)] == [0.2] * 7

    warm = make_config({"lr": 0.3, "epochs": 11, "warmup_epochs": 3})
    assert [learning_rate(warm, e) for e in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert learning_rate(warm, 7) == pytest.approx(0.15)  # cosine over the 8 epochs after the warm-up, midway

    warm_constant = make_config({"lr": 0.4, "epochs": 6, "warmup_epochs": 2, "lr_schedule": "constant"})
    assert [learning_rate(warm_constant, e) for e in range(6)] == pytest.approx([0.2, 0.4, 0.4, 0.4, 0.4, 0.4])


def test_a_run_records_the_schedule(tmp_path):
    run(config(tmp_path, epochs=4), progress=False)
    lrs = [m["lr"] for m in metrics_without_seconds(tmp_path)]
    assert lrs == pytest.approx([0.1, 0.0853553391, 0.05, 0.0146446609])


# --------------------------------------------------------------------------------------------------------------
# what trains


@pytest.mark.parametrize("method", ["edge-popup", "biprop"])
def test_mask_search_trains_only_scores(method, tmp_path):
    cfg = config(tmp_path, method=method, epochs=2, weight_seed=3, score_seed=4)
    run(cfg, progress=False)
    ckpt = checkpoint_tensors(tmp_path)
    fresh = convert(build_model("small-conv", num_classes=10, in_channels=1, image_size=8, width=0.25), method,
                    cfg.prune_rate, weight_init=cfg.weight_init, scale_fan=cfg.scale_fan, weight_seed=3, score_seed=4)
    initial = fresh.state_dict()
    assert {f"model.{k}" for k in initial} == {k for k in ckpt if k.startswith("model.")}
    for n in SMALL_CONV_LAYERS:
        assert torch.equal(ckpt[f"model.{n}.parametrizations.weight.original"],
                           initial[f"{n}.parametrizations.weight.original"]), n
        assert not torch.equal(ckpt[f"model.{n}.parametrizations.weight.0.scores"],
                               initial[f"{n}.parametrizations.weight.0.scores"]), n
    # the optimizer holds state for the four score tensors only
    momenta = {k: v for k, v in ckpt.items() if k.startswith("optimizer.")}
    assert len(momenta) == len(SMALL_CONV_LAYERS)
    assert sorted(tuple(v.shape) for v in momenta.values()) == sorted(
        tuple(initial[f"{n}.parametrizations.weight.original"].shape) for n in SMALL_CONV_LAYERS)


def test_dense_training_changes_the_weights(tmp_path):
    cfg = config(tmp_path, method="dense", epochs=1)
    run(cfg, progress=False)
    ckpt = checkpoint_tensors(tmp_path)
    fresh = convert(build_model("small-conv", num_classes=10, in_channels=1, image_size=8, width=0.25), "dense",
                    0.0, weight_init=cfg.weight_init, weight_seed=0).state_dict()
    assert {f"model.{k}" for k in fresh} == {k for k in ckpt if k.startswith("model.")}
    for n in SMALL_CONV_LAYERS:
        assert ckpt[f"model.{n}.weight"].shape == fresh[f"{n}.weight"].shape
        assert not torch.equal(ckpt[f"model.{n}.weight"], fresh[f"{n}.weight"]), n
    assert not any(k.endswith("scores") for k in ckpt)
    assert load_file(tmp_path / "masks.safetensors") == {}


# --------------------------------------------------------------------------------------------------------------
# it learns


@pytest.mark.parametrize("method,lr", [("edge-popup", 0.1), ("dense", 0.01)])
def test_digits_reaches_high_accuracy(method, lr, tmp_path):
    # lr given explicitly: the digits config pins lr=0.1 (the mask-search value), too high for dense training
    summary = run(config(tmp_path, method=method, lr=lr, width=1.0, prune_rate=0.5, epochs=5), progress=False)
    assert summary["test_acc"] > 0.85, summary
    if method == "edge-popup":
        assert summary["params_kept"] == summary["params_total"] // 2  # every layer has an even size


def test_an_epochs_accuracy_measures_the_network_saved_after_its_recycling(tmp_path, monkeypatch):
    """With iwr_rate above the prune rate, the IWR step at the end of epoch 2 rewrites kept weights: the test loss
    and accuracy recorded for epoch 2 are those of the network that epoch's checkpoint holds (after recycling)."""
    import shutil

    real_save = supermask.run.train.save_checkpoint

    def keep_each_epoch(path, model, optimizer, state):
        real_save(path, model, optimizer, state)
        copy = tmp_path / f"epoch{state['epoch']}"
        copy.mkdir(exist_ok=True)
        shutil.copy(path, copy / path.name)
        shutil.copy(path.parent / "config.yaml", copy / "config.yaml")

    monkeypatch.setattr(supermask.run.train, "save_checkpoint", keep_each_epoch)
    out = tmp_path / "run"
    run(config(out, prune_rate=0.1, iwr_every=1, iwr_rate=0.4), progress=False)
    schedule = [json.loads(line) for line in (out / "schedule.jsonl").read_text().splitlines()]
    assert {e["epoch"] for e in schedule} == {2} and all(e["changed"] > 0 for e in schedule)
    rows = metrics_without_seconds(out)
    for epoch in (1, 2, 3):
        again = supermask.run.train.evaluate_run(tmp_path / f"epoch{epoch}", device="cpu")
        assert (again["test_loss"], again["test_acc"]) == (rows[epoch - 1]["test_loss"], rows[epoch - 1]["test_acc"])


def test_eval_of_a_run_killed_inside_an_epoch_states_where_and_compares_nothing(tmp_path, monkeypatch):
    """A checkpoint 5 batches into epoch 2 holds a network no evaluation measured: eval says where it is and gives no
    recorded accuracy to compare with (epoch 1's measured another network); at an epoch's end it gives that epoch's."""
    kill_in_epoch_2(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # 23 steps an epoch: steps 24, 26, 28 checkpoint, the last after 5 batches
        run(config(out, checkpoint_every_steps=2), progress=False)
    monkeypatch.undo()
    result = supermask.run.train.evaluate_run(out, device="cpu")
    assert (result["epoch"], result["batch"], result["position"]) == (1, 5, "5 batches into epoch 2")
    assert result["recorded_test_acc"] is None
    assert result["note"].startswith("the checkpoint is 5 batches into epoch 2: no test accuracy was recorded")
    run(config(out, checkpoint_every_steps=2), resume=True, progress=False)
    result = supermask.run.train.evaluate_run(out, device="cpu")
    assert (result["epoch"], result["batch"], result["position"]) == (3, 0, "end of epoch 3")
    assert result["recorded_test_acc"] == result["test_acc"] and "note" not in result


# --------------------------------------------------------------------------------------------------------------
# progress in a log


def test_a_log_gets_progress_lines_inside_an_epoch(tmp_path, monkeypatch, capsys):
    import re

    monkeypatch.setattr(supermask.run.progress, "LOG_EVERY_SECONDS", 0.0, raising=False)  # a line after every step
    run(config(tmp_path, epochs=2, batch_size=64), progress=True)  # stderr is not a terminal here
    lines = capsys.readouterr().err.splitlines()
    steps = 23  # 1438 digits in batches of 64
    shape = re.compile(r"epoch (\d)/2: step (\d+)/46, \d+ img/s, \d\d:\d\d left$")
    seen = [(int(m[1]), int(m[2])) for m in map(shape.match, lines) if m]
    assert seen == [(1 + (k - 1) // steps, k) for k in range(1, 2 * steps + 1)]
    epoch_lines = [i for i, line in enumerate(lines) if line.startswith("epoch ") and "train loss" in line]
    assert epoch_lines == [steps, 2 * steps + 1]  # each epoch's line after its steps


def test_progress_lines_come_by_the_clock_with_the_pace_since_the_start(monkeypatch, capsys):
    from supermask.run.progress import StepLines, duration

    times = iter([0.0, 20.0, 40.0, 60.0, 80.0, 125.0])
    lines = StepLines(100, 40, batch_size=100, clock=lambda: next(times))  # resumed at step 40 of 100
    lines.set_description("epoch 2/5")
    for _ in range(5):
        lines.update(1)
    # at 60 s: 3 steps of 100 images in 60 s, 57 steps left at 20 s each; at 125 s (65 s after the last line):
    # 5 steps in 125 s, 55 steps left at 25 s each
    assert capsys.readouterr().err.splitlines() == ["epoch 2/5: step 43/100, 5 img/s, 19:00 left",
                                                    "epoch 2/5: step 45/100, 4 img/s, 22:55 left"]
    quiet = StepLines(10, batch_size=1, enabled=False, clock=iter([0.0, 100.0]).__next__)
    quiet.update(1)
    assert capsys.readouterr().err == "" and duration(3725) == "1:02:05"


def test_max_steps_ends_the_epoch_that_reaches_it_and_runs_no_later_one(tmp_path):
    from supermask.run.train import run

    # digits: 1,437 training images, 23 batches of 64 an epoch; 30 steps end epoch 2 after 7 of its batches
    cfg = make_config("digits", {"epochs": 4, "max_steps": 30, "threads": 1, "out_dir": str(tmp_path / "r")})
    summary = run(cfg, progress=False)
    assert (summary["train_steps"], summary["epochs_run"]) == (30, 2)
    history = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and "test_acc" in history[-1]
    again = run(make_config("digits", {"epochs": 4, "max_steps": 30, "threads": 1, "out_dir": str(tmp_path / "r")}),
                resume=True, progress=False)
    assert (again["train_steps"], again["epochs_run"], again["test_acc"]) == (30, 2, summary["test_acc"])
    exact = run(make_config("digits", {"epochs": 4, "max_steps": 46, "threads": 1, "out_dir": str(tmp_path / "e")}),
                progress=False)
    assert (exact["train_steps"], exact["epochs_run"]) == (46, 2)  # reached at epoch 2's end: epoch 3 never starts

"""Many runs at once: stacked masks, the group's forward and optimizer step, and whole runs against runs alone."""

import dataclasses
import itertools
import json
import re
import sys

import pytest
import torch
from torch import nn

import supermask.data
from supermask import build_model, convert, masks
from supermask.run.checkpoint import load_tensors
from supermask.run.config import make_config
from supermask.errors import ConfigError
from supermask.core.mask import topk_mask, topk_masks
from supermask.core.methods import Biprop, biprop_alpha
from supermask.multi.study import run_study
from supermask.multi.together import Together, check_group, per_run_losses, train_together
from supermask.run.train import make_optimizer, optimizer_for, run


def test_stacked_masks_equal_each_row_alone_ties_included():
    rows = torch.tensor([[0.3, 0.1, 0.1, 0.1, 0.5, 0.0],   # prune 3: 0.0, then two of the three tied 0.1s (lowest index kept)
                         [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                         [0.2, 0.2, 0.2, 0.2, 0.2, 0.2]])
    got = topk_masks(rows, 0.5)
    assert got.tolist()[0] == [True, True, False, False, True, False]
    assert got.tolist()[2] == [True, True, True, False, False, False]
    for row, mask in zip(rows, got):
        assert torch.equal(mask, topk_mask(row, 0.5))
    big = torch.randn(3, 70_000).abs()  # large enough for the bracketed selection
    big[1, :5000] = big[1, 0]  # a tie block straddling nothing in particular
    for row, mask in zip(big, topk_masks(big, 0.9)):
        assert torch.equal(mask, topk_mask(row, 0.9))
        assert int(mask.sum()) == 70_000 - 63_000


def test_biprop_alpha_per_run_equals_alone():
    w = torch.randn(4, 3, 5)
    m = torch.rand(4, 3, 5) < 0.5
    for grad in ("weight", "alpha"):
        method = Biprop(torch.zeros(3, 5), 0.5, grad=grad)
        soft = m.float().requires_grad_()  # a mask carrying a gradient, as the straight-through one does
        stacked = method.combine(w, soft, members=True)
        g = torch.randn_like(w)
        (stacked * g).sum().backward()
        for i in range(4):
            alone = m[i].float().requires_grad_()
            own = method.combine(w[i], alone)
            assert torch.allclose(stacked[i], biprop_alpha(w[i], m[i]) * w[i].sign() * m[i].float(), atol=1e-7)
            assert torch.equal(own, stacked[i])
            (own * g[i]).sum().backward()
            assert torch.allclose(soft.grad[i], alone.grad, atol=1e-6)  # each run's gradient is its own


def _models(method, n):
    return [convert(build_model("conv4", width=0.25), method, 0.5, weight_seed=i % 2, score_seed=i)
            .to(memory_format=torch.channels_last) for i in range(n)]


@pytest.mark.parametrize("forward", ["loop", "vmap"])
@pytest.mark.parametrize("method", ["edge-popup", "biprop"])
def test_group_steps_match_runs_alone(method, forward):
    cfg = make_config("digits", {"method": method})
    alone, members = _models(method, 3), _models(method, 3)
    optimizers = [make_optimizer(cfg, m) for m in alone]
    group = Together(members, build_model("conv4", width=0.25), method, forward)
    group_opt = optimizer_for(cfg, group.scores)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        x = torch.randn(16, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (16,), generator=gen)
        expected = []
        for model, opt in zip(alone, optimizers):
            logits = model(x)
            expected.append(logits.detach())
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        logits = group(x)
        group_opt.zero_grad()
        per_run_losses(logits, y).sum().backward()
        group_opt.step()
        if forward == "loop":  # each run computes exactly as alone
            assert torch.equal(logits.detach(), torch.stack(expected))
        else:
            assert torch.allclose(logits.detach(), torch.stack(expected), atol=1e-5)
        for a, b in zip(alone, members):  # the runs' own models see the group's updates through their views
            ma, mb = masks(a), masks(b)
            assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_per_run_losses_are_each_runs_mean():
    logits = torch.randn(2, 4, 3)
    y = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
    got = per_run_losses(logits, y)
    for i in range(2):
        assert torch.allclose(got[i], nn.functional.cross_entropy(logits[i], y[i]))


def _configs(tmp_path, n=3, **overrides):
    base = make_config("digits", {"width": 0.25, "epochs": 2, "device": "cpu", **overrides})
    return [dataclasses.replace(base, score_seed=i, data_seed=i % 2, out_dir=str(tmp_path / f"r{i}")) for i in range(n)]


@pytest.mark.parametrize("overrides", [{}, {"method": "biprop"}], ids=["digits-default", "biprop"])
def test_runs_trained_together_equal_runs_alone(tmp_path, overrides):
    # The default digits config (small-conv, channels-last, one input channel) with IWR firing after epochs 2 and 3:
    # a run trained together must find exactly the masks it finds alone, IWR steps included.
    overrides = {"epochs": 4, "batch_size": 128, "iwr_every": 1, "iwr_rate": 0.2, **overrides}
    together = train_together(_configs(tmp_path / "t", n=2, **overrides), tmp_path / "group", progress=False)
    assert not (tmp_path / "group" / "together.safetensors").exists()
    for i, cfg in enumerate(_configs(tmp_path / "a", n=2, **overrides)):
        alone = run(cfg, progress=False)
        assert together[i]["together"] == 2
        assert together[i]["test_acc"] == alone["test_acc"]
        ma, _ = load_tensors(tmp_path / "t" / f"r{i}" / "masks.safetensors")
        mb, _ = load_tensors(tmp_path / "a" / f"r{i}" / "masks.safetensors")
        assert set(ma) == set(mb) and all(torch.equal(ma[k], mb[k]) for k in ma)
        ta, _ = load_tensors(tmp_path / "t" / f"r{i}" / "checkpoint.safetensors")
        tb, _ = load_tensors(tmp_path / "a" / f"r{i}" / "checkpoint.safetensors")
        assert set(ta) == set(tb)  # the same files: a run trained together reads like one trained alone
        assert all(torch.equal(ta[k], tb[k]) for k in ta)  # scores, weights and momentum, bit for bit
        steps_t = [json.loads(x) for x in (tmp_path / "t" / f"r{i}" / "schedule.jsonl").read_text().splitlines()]
        steps_a = [json.loads(x) for x in (tmp_path / "a" / f"r{i}" / "schedule.jsonl").read_text().splitlines()]
        assert sorted({s["epoch"] for s in steps_t}) == [2, 3]  # IWR fired twice (epochs logged 1-based)
        assert steps_t == steps_a
    # and the run directory works with the rest of the tools
    from supermask.run.train import evaluate_run
    again = evaluate_run(tmp_path / "t" / "r0", device="cpu")
    assert again["test_acc"] == together[0]["test_acc"]


def test_a_killed_group_resumes_to_the_same_result(tmp_path, monkeypatch):
    whole = train_together(_configs(tmp_path / "a"), tmp_path / "ga", progress=False)
    real = supermask.data.train_batches

    def killed(*args, **kwargs):
        for step, batch in enumerate(real(*args, **kwargs)):
            if kwargs["epoch"] == 1 and step == 3:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(supermask.data, "train_batches", killed)
    with pytest.raises(KeyboardInterrupt):
        train_together(_configs(tmp_path / "b"), tmp_path / "gb", progress=False)
    monkeypatch.setattr(supermask.data, "train_batches", real)
    assert (tmp_path / "gb" / "together.safetensors").exists()
    resumed = train_together(_configs(tmp_path / "b"), tmp_path / "gb", progress=False)
    for a, b in zip(whole, resumed):
        assert a["test_acc"] == b["test_acc"]
    for i in range(3):
        ma, _ = load_tensors(tmp_path / "a" / f"r{i}" / "masks.safetensors")
        mb, _ = load_tensors(tmp_path / "b" / f"r{i}" / "masks.safetensors")
        assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_groups_refuse_runs_that_differ_in_more_than_seeds(tmp_path):
    cfgs = _configs(tmp_path)
    cfgs[1] = dataclasses.replace(cfgs[1], prune_rate=0.7)
    with pytest.raises(ConfigError, match="prune_rate"):
        check_group(cfgs)
    with pytest.raises(ConfigError, match="mask method"):
        check_group(_configs(tmp_path, method="dense"))
    with pytest.raises(ConfigError, match="score_rank=signed ranks the signed scores"):
        check_group(_configs(tmp_path, score_rank="signed"))
    same_dir = _configs(tmp_path)
    same_dir[1] = dataclasses.replace(same_dir[1], out_dir=same_dir[0].out_dir)
    with pytest.raises(ConfigError, match="own out_dir"):
        check_group(same_dir)
    for streamed in ({"data_mode": "stream"}, {"dataset": "imagenet"}):  # refused before any data is read
        with pytest.raises(ConfigError, match="is streamed"):
            check_group([dataclasses.replace(c, **streamed) for c in _configs(tmp_path)])


def test_a_study_trains_together_and_reuses(tmp_path):
    logs = []
    overrides = {"width": 0.25, "epochs": 1, "device": "cpu", "out_dir": str(tmp_path / "s")}
    run_study("digits", overrides, score_seeds=3, progress=False, together=True, log=logs.append)
    assert any("trained 3 runs together" in line for line in logs)
    logs.clear()
    run_study("digits", overrides, score_seeds=3, progress=False, together=True, log=logs.append)
    assert not any("runs together" in line for line in logs) and sum("reused" in line for line in logs) == 3


def test_the_cli_trains_a_study_together(tmp_path, capsys):
    from supermask.cli import main

    code = main(["study", "digits", "width=0.25", "epochs=1", f"out_dir={tmp_path / 's'}", "--score-seeds", "2",
                 "--together", "--forward", "vmap", "-q"])
    assert code == 0
    out = capsys.readouterr().out
    assert "trained 2 runs together" in out and "Jaccard" in out
    summary = json.loads((tmp_path / "s" / "runs" / "edge-popup-w0-s1" / "summary.json").read_text())
    assert summary["together"] == 2 and summary["score_seed"] == 1


class TinyAttention(nn.Module):
    """An 8x8 image as 8 row tokens: a linear embedding plus an embedding of each row's level, self-attention,
    cross-attention with other key/value widths (q/k/v_proj_weight), a linear head: masked parameters that are
    not a layer's `weight`."""

    def __init__(self):
        super().__init__()
        self.rows = nn.Linear(8, 8)
        self.level = nn.Embedding(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(8, 2, kdim=4, vdim=6, batch_first=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        seq = x.flatten(1, 2)
        z = self.rows(seq) + self.level((seq.mean(2).abs() * 2).long().clamp(0, 3))
        z = z + self.attn(z, z, z, need_weights=False)[0]
        z = z + self.cross(z, seq[..., :4], seq[..., 2:], need_weights=False)[0]
        return self.head(z.mean(1))


@pytest.mark.parametrize("forward", ["loop", "vmap"])
def test_a_group_of_attention_models_matches_runs_alone(forward):
    method = "biprop"
    cfg = make_config("digits", {"method": method})

    def models():
        return [convert(TinyAttention(), method, 0.5, weight_seed=i % 2, score_seed=i) for i in range(3)]

    alone, members = models(), models()
    assert "attn.in_proj_weight" in masks(alone[0]) and "cross.k_proj_weight" in masks(alone[0])
    optimizers = [make_optimizer(cfg, m) for m in alone]
    group = Together(members, TinyAttention(), method, forward)
    group_opt = optimizer_for(cfg, group.scores)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(6, 1, 8, 8, generator=gen), torch.randint(0, 10, (6,), generator=gen)
        expected = []
        for model, opt in zip(alone, optimizers):
            logits = model(x)
            expected.append(logits.detach())
            opt.zero_grad()
            nn.functional.cross_entropy(logits, y).backward()
            opt.step()
        logits = group(x)
        group_opt.zero_grad()
        per_run_losses(logits, y).sum().backward()
        group_opt.step()
        torch.testing.assert_close(logits.detach(), torch.stack(expected), rtol=1e-5, atol=1e-5)
        for a, b in zip(alone, members):
            ma, mb = masks(a), masks(b)
            assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    group.train(False)  # evaluation: no autograd, attention's fused path where it applies
    with torch.no_grad():
        torch.testing.assert_close(group(x), torch.stack([m.eval()(x) for m in alone]), rtol=1e-5, atol=1e-5)


class TiedTokens(nn.Module):
    """Tokens read off an image, an embedding whose table is also the output layer's weight (a tied LM head)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        tokens = (x.flatten(1)[:, :6].abs() * 3).long().clamp(0, 9)
        return self.head(torch.relu(self.mid(self.embed(tokens)))).mean(1)


def test_a_group_keeps_a_tied_tensor_shared_in_each_run():
    from supermask import recycle_

    members = [convert(TiedTokens(), "edge-popup", 0.5, weight_init="kaiming-normal", weight_seed=i, score_seed=i)
               for i in range(2)]
    group = Together(members, TiedTokens(), "edge-popup", "loop")
    assert group.params == ["embed.weight", "mid.weight"]
    assert recycle_(members[1], 0.3)["embed"] > 0  # IWR edits run 1's weights through its views of the stack
    with torch.no_grad():  # ... at pruned positions; invert the ranking so the recycled weights are kept
        group.scores[0][1].copy_(1 / (group.scores[0][1].abs() + 1e-3))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i, m in enumerate(members):
            assert torch.equal(m.head.weight, m.embed.weight)  # both owners see the stack's storage
            torch.testing.assert_close(group(x)[i], m(x), rtol=0, atol=1e-6)


def test_progress_is_a_plain_line_per_epoch_when_stderr_is_not_a_terminal(tmp_path, capsys):
    train_together(_configs(tmp_path, n=2), tmp_path / "g")  # progress on; capsys's stderr is no terminal
    err = capsys.readouterr().err
    assert "\r" not in err and "step/s" not in err
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["2 runs, epoch 1/2", "2 runs, epoch 2/2"]
    metrics = [[json.loads(x) for x in (tmp_path / f"r{i}" / "metrics.jsonl").read_text().splitlines()] for i in (0, 1)]
    for epoch, line in enumerate(lines):
        assert f"test acc {metrics[0][epoch]['test_acc']:.4f} {metrics[1][epoch]['test_acc']:.4f}, " in line
        assert re.search(r", \d+\.\d s, \d+ img/s, data wait \d+%$", line), line
        # each run records the group's pace, as a run alone records its own
        first, second = metrics[0][epoch], metrics[1][epoch]
        assert f", {first['images_per_s']:.0f} img/s, data wait {first['data_wait']:.0%}" in line
        assert first["images_per_s"] > 0
        assert (first["images_per_s"], first["data_wait"]) == (second["images_per_s"], second["data_wait"])
        assert 0 <= first["data_wait"] <= 1


def test_progress_is_a_bar_on_a_terminal_and_nothing_when_quiet(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    train_together(_configs(tmp_path / "a", n=2, epochs=1), tmp_path / "ga")
    err = capsys.readouterr().err
    assert "\r" in err and "2 runs, epoch 1/1" in err and "test acc " not in err  # the bar, no plain line
    train_together(_configs(tmp_path / "b", n=2, epochs=1), tmp_path / "gb", progress=False)
    assert capsys.readouterr().err == ""


def test_a_group_takes_amp_and_trackers_as_runs_alone_do(tmp_path):
    # One loop trains a group and a lone run: mixed precision (bfloat16 on a CPU, no loss scaling) gives each run
    # of a group the masks it finds alone with amp, and each run logs to its own tracker.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = {"epochs": 2, "amp": True, "iwr_every": 1, "logger": "tensorboard"}
    together = train_together(_configs(tmp_path / "t", n=2, **overrides), tmp_path / "g", progress=False)
    for i, cfg in enumerate(_configs(tmp_path / "a", n=2, **{**overrides, "logger": []})):
        alone = run(cfg, progress=False)
        assert together[i]["test_acc"] == alone["test_acc"]
        ma, _ = load_tensors(tmp_path / "t" / f"r{i}" / "masks.safetensors")
        mb, _ = load_tensors(tmp_path / "a" / f"r{i}" / "masks.safetensors")
        assert all(torch.equal(ma[k], mb[k]) for k in ma)
        events = EventAccumulator(str(tmp_path / "t" / f"r{i}" / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        summary = json.loads((tmp_path / "t" / f"r{i}" / "summary.json").read_text())
        acc = [e.value for e in events.Scalars("epoch/test_acc")]
        assert acc[-1] == pytest.approx(summary["test_acc"])  # its own run's accuracy, not another's
        assert len(events.Scalars("train/loss")) == 2 * 23  # every step of the run (digits: 23 batches of 64)


def test_a_compiled_group_learns_as_the_group_does(tmp_path, monkeypatch):
    import functools

    import torch._dynamo

    # dynamo traces the group's forward and AOT autograd its backward, as with the default backend; inductor's code
    # generation, torch's own and half a minute of C++ compiles on a cold cache, is left out
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    real = supermask.data.train_batches  # 8 full batches an epoch: no short last batch to trace again
    monkeypatch.setattr(supermask.data, "train_batches", lambda *a, **k: itertools.islice(real(*a, **k), 8))
    torch._dynamo.reset()
    compiled = train_together(_configs(tmp_path / "c", n=2, epochs=1, compile=True), tmp_path / "gc", progress=False)
    eager = train_together(_configs(tmp_path / "e", n=2, epochs=1), tmp_path / "ge", progress=False)
    for i in range(2):
        assert compiled[i]["test_acc"] > 0.3  # 10 classes: chance is 0.1
        assert abs(compiled[i]["test_acc"] - eager[i]["test_acc"]) <= 0.03
        ma, _ = load_tensors(tmp_path / "c" / f"r{i}" / "masks.safetensors")
        mb, _ = load_tensors(tmp_path / "e" / f"r{i}" / "masks.safetensors")
        differ = sum(int((ma[k] != mb[k]).sum()) for k in ma) / sum(m.numel() for m in ma.values())
        assert differ <= 0.05  # compiled kernels round differently: a few scores cross the threshold

"""The transformers of the registry (vit, text-transformer) and the generated ListOps data they train on."""

import dataclasses
import statistics

import pytest
import torch
from torch import nn

import supermask
from supermask import ConfigError, build_model
from supermask import data as data_lib
from supermask import train as train_lib
from supermask.run.config import make_config
from supermask.data import LISTOPS_TOKENS, eval_batches, generate_listops, listops_value, load_dataset, train_batches
from supermask.models import vit_patch_size


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------- #
# vit


def vit_count(d, classes=10, channels=3, patch=4, patches=64, depth=7):
    # per block: in_proj 3d^2, out_proj d^2, MLP d*2d + 2d*d = 8 d^2; patch conv, position table, head
    return depth * 8 * d * d + channels * patch * patch * d + patches * d + d * classes


@pytest.mark.parametrize("width, d", [(1.0, 256), (0.25, 64), (0.1, 24)])  # 0.1: int(25.6) = 25 -> 6 heads' worth of 4
def test_vit_parameter_count_by_hand(width, d):
    model = build_model("vit", width=width)
    assert model.patch_embed.out_channels == d
    assert n_params(model) == vit_count(d)
    assert vit_count(256) == 3_701_248  # ViT-Lite-7/4's 3.72 M less its biases, LayerNorm affines and class token
    # no biases and non-affine LayerNorm: every parameter is a weight of 2+ dims (a mask search has nothing else)
    assert all(p.dim() >= 2 for p in model.parameters())
    assert all(not m.elementwise_affine for m in model.modules() if isinstance(m, nn.LayerNorm))
    assert all(isinstance(layer.self_attn, nn.MultiheadAttention) for layer in model.encoder.layers)


def test_vit_shapes_cifar_and_digits():
    assert build_model("vit", width=0.25)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    digits = build_model("vit", in_channels=1, image_size=8, width=0.25)
    assert digits.patch_embed.kernel_size == (2, 2)  # small images: patch 2, a 4x4 grid
    assert n_params(digits) == vit_count(64, channels=1, patch=2, patches=16)
    assert digits(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert [vit_patch_size(s) for s in (32, 28, 16, 8, 10)] == [4, 4, 4, 2, 2]


@pytest.mark.parametrize("size", [30, 9])
def test_vit_refuses_sides_the_patch_does_not_divide(size):
    with pytest.raises(ConfigError, match=f"divisible.*got {size}"):
        build_model("vit", image_size=size)


def test_vit_is_pre_norm_with_a_residual_path():
    """Zeroing every block's output projections leaves only the residual path: the encoder is then the final
    LayerNorm of the embedded patches (pre-norm: nothing else touches the residual stream)."""
    model = build_model("vit", width=0.0625).eval()
    for layer in model.encoder.layers:
        nn.init.zeros_(layer.self_attn.out_proj.weight)
        nn.init.zeros_(layer.linear2.weight)
    x = torch.randn(2, 3, 32, 32)
    tokens = model.patch_embed(x).flatten(2).transpose(1, 2) + model.pos_embed.weight
    expected = model.head(nn.functional.layer_norm(tokens, (tokens.shape[-1],)).mean(1))
    torch.testing.assert_close(model(x), expected)


# --------------------------------------------------------------------------------------------- #
# text-transformer


def test_text_transformer_parameter_count_by_hand():
    model = build_model("text-transformer", vocab_size=16, seq_len=64)
    d = 64
    assert n_params(model) == 16 * d + 64 * d + 2 * 8 * d * d + d * 10
    assert all(p.dim() >= 2 for p in model.parameters())
    half = build_model("text-transformer", vocab_size=16, seq_len=64, width=0.5)
    assert half.embed.embedding_dim == 32


def test_text_transformer_ignores_padding():
    """Attention and pooling skip the padding, so padding a sequence further changes nothing."""
    model = build_model("text-transformer", vocab_size=16, seq_len=64).eval()
    seq = torch.tensor([11, 3, 5, 12, 2, 9, 15, 15])
    short = torch.zeros(1, 20, dtype=torch.long)
    long = torch.zeros(1, 50, dtype=torch.long)
    short[0, :8] = long[0, :8] = seq
    with torch.no_grad():
        torch.testing.assert_close(model(short), model(long))
        assert model(short).shape == (1, 10)
        other = short.clone()
        other[0, 3] = 13
        assert not torch.equal(model(other), model(short))  # the real tokens do matter


def test_builds_and_conversions_are_determined_by_the_seeds():
    torch.manual_seed(1)
    a = build_model("vit", width=0.0625)
    torch.manual_seed(2)  # the global generator's state does not leak into a build
    b = build_model("vit", width=0.0625)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    supermask.convert(a, "edge-popup", 0.5, weight_seed=3, score_seed=4)
    supermask.convert(b, "edge-popup", 0.5, weight_seed=3, score_seed=4)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    c = supermask.convert(build_model("vit", width=0.0625), "edge-popup", 0.5, weight_seed=5, score_seed=4)
    assert not torch.equal(a.head.weight, c.head.weight)


# --------------------------------------------------------------------------------------------- #
# ListOps


def evaluate_listops(text: str) -> int:
    """An evaluator written apart from supermask's: a stack of (operator, arguments) over whitespace tokens."""
    ops = {"[MAX": max, "[MIN": min, "[MED": lambda v: int(statistics.median(v)), "[SM": lambda v: sum(v) % 10}
    stack: list[tuple[str, list[int]]] = [("", [])]
    for tok in text.split():
        if tok in ops:
            stack.append((tok, []))
        elif tok == "]":
            op, args = stack.pop()
            stack[-1][1].append(ops[op](args))
        else:
            stack[-1][1].append(int(tok))
    (_, (value,)), = stack
    return value


HAND = [  # expression, value worked out by hand
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MIN [MAX 1 2 ] [SM 5 6 ] ]", 1),  # min(2, 11 % 10 = 1)
    ("[MED 3 1 4 1 ]", 2),  # 1 1 3 4: the median 2 (rounded down)
    ("[MED 3 8 ]", 5),  # 5.5 rounded down
    ("[MED [SM 8 8 ] 5 7 ]", 6),  # 6 5 7
    ("[SM 9 9 9 ]", 7),
    ("[MAX [MED [MIN 9 8 ] 2 6 ] [SM 1 [MAX 0 0 ] ] ]", 6),  # max(med(8, 2, 6) = 6, 1)
]


@pytest.mark.parametrize("text, value", HAND)
def test_the_test_evaluator_on_hand_worked_expressions(text, value):
    assert evaluate_listops(text) == value


def test_listops_value():
    assert listops_value("[MAX", [2, 9, 4, 0]) == 9
    assert listops_value("[MIN", [2, 9, 4, 0]) == 0
    assert listops_value("[MED", [3, 1, 4, 1]) == 2
    assert listops_value("[MED", [3, 8, 5]) == 5
    assert listops_value("[SM", [9, 9, 9]) == 7
    with pytest.raises(ValueError):
        listops_value("[FIRST", [1, 2])


def decode(row: torch.Tensor) -> str:
    return " ".join(LISTOPS_TOKENS[i] for i in row.tolist() if i)


def test_listops_labels_match_the_independent_evaluator():
    ds = load_dataset("listops")
    for xs, ys in ((ds.train_x[:1500], ds.train_y[:1500]), (ds.test_x[:500], ds.test_y[:500])):
        for row, label in zip(xs, ys):
            assert evaluate_listops(decode(row)) == int(label), decode(row)


def test_listops_split_is_fixed_distinct_and_well_formed():
    ds = load_dataset("listops")
    assert (ds.train_x.shape, ds.test_x.shape) == ((20_000, 64), (2_000, 64))
    assert ds.train_x.dtype == ds.train_y.dtype == torch.int64 and ds.tokens
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (10, len(LISTOPS_TOKENS), 64)
    x = torch.cat([ds.train_x, ds.test_x])
    assert len({tuple(r) for r in x.tolist()}) == len(x)  # no sequence twice, so none in both splits
    ops = [LISTOPS_TOKENS.index(t) for t in ("[MAX", "[MIN", "[MED", "[SM")]
    assert torch.isin(x[:, 0], torch.tensor(ops)).all()  # the root is an operation
    real = x != 0
    assert (real.cumsum(1) == real.sum(1, keepdim=True)).logical_or(real).all()  # padding only at the end
    opens, closes = torch.isin(x, torch.tensor(ops)).sum(1), (x == LISTOPS_TOKENS.index("]")).sum(1)
    assert torch.equal(opens, closes)
    assert torch.bincount(ds.train_y, minlength=10).min() > 1500  # every value occurs (about 10% each)
    # the first rows, pinned: the split is the same on every machine and Python version
    assert decode(ds.train_x[0]) == "[SM 2 4 3 5 5 ]" and int(ds.train_y[0]) == 9


def test_generate_listops_is_determined_by_its_seed():
    a, ya = generate_listops(50, seed=3, max_len=32)
    b, yb = generate_listops(50, seed=3, max_len=32)
    c, _ = generate_listops(50, seed=4, max_len=32)
    assert (a == b).all() and (ya == yb).all() and not (a == c).all()
    assert ((a != 0).sum(1) <= 32).all()


def test_token_batches_skip_the_image_steps():
    ds = load_dataset("listops")
    x, y = next(train_batches(ds, 16, seed=0, epoch=0, augment=False))
    assert x.dtype == torch.int64  # ids as they are: no normalization
    assert any(torch.equal(x[0], row) for row in ds.train_x)
    ex, ey = next(eval_batches(ds, 8))
    assert torch.equal(ex, ds.test_x[:8]) and torch.equal(ey, ds.test_y[:8])
    with pytest.raises(ConfigError, match="augment.*token"):
        next(train_batches(ds, 16, seed=0, epoch=0, augment=True))


def test_augmenting_tokens_is_refused_before_a_run_starts(tmp_path):
    cfg = make_config("listops", {"augment": True, "epochs": 1, "device": "cpu", "out_dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match="augment=true.*listops"):
        train_lib.run(cfg, progress=False)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------- #
# The built-in configs, one short epoch each


def _small(ds: data_lib.Dataset, n: int) -> data_lib.Dataset:
    return dataclasses.replace(ds, train_x=ds.train_x[:n], train_y=ds.train_y[:n], test_x=ds.test_x[:200],
                               test_y=ds.test_y[:200])


@pytest.mark.parametrize("method", ["edge-popup", "dense"])
def test_vit_config_learns_in_one_epoch(tmp_path, method):
    cfg = make_config("vit", {"dataset": "digits", "width": 0.125, "epochs": 1, "batch_size": 32, "method": method,
                              "device": "cpu", "out_dir": str(tmp_path / "run")})
    summary = train_lib.run(cfg, progress=False)
    assert summary["model"] == "vit" and summary["image_size"] == 8
    assert summary["train_acc"] > 0.2  # chance is 0.1; measured 0.26 for Edge-Popup


@pytest.mark.parametrize("method", ["edge-popup", "dense"])
def test_listops_config_learns_in_one_epoch(tmp_path, monkeypatch, method):
    small = _small(load_dataset("listops"), 4000)  # 125 steps: seconds
    monkeypatch.setattr(train_lib.data_lib, "load_dataset", lambda *a, **k: small)
    cfg = make_config("listops", {"width": 0.5, "epochs": 1, "batch_size": 32, "method": method, "device": "cpu",
                                  "out_dir": str(tmp_path / "run")})
    summary = train_lib.run(cfg, progress=False)
    assert (summary["in_channels"], summary["image_size"]) == (len(LISTOPS_TOKENS), 64)
    majority = torch.bincount(small.train_y).max().item() / len(small.train_y)
    assert summary["train_acc"] > majority + 0.05  # measured: 0.24 for both methods, majority 0.12


def test_a_token_model_is_built_from_its_vocabulary_and_length_by_name():
    with pytest.raises(ConfigError, match="vocab_size= and seq_len="):
        build_model("text-transformer", in_channels=16, image_size=64)  # image fields do not stand in for tokens
    model = build_model("text-transformer", vocab_size=20, seq_len=48)
    assert model.embed.num_embeddings == 20 and model.pos_embed.num_embeddings == 48

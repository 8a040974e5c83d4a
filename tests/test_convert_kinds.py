"""convert() on every kind of weight: attention, embeddings, recurrent layers, transposed convs, Hugging Face's
Conv1D; the report, include/skip over parameter names, biases from the seed, shared tensors, and everything that
follows the masks (recycling, IteRand, bake, checkpoints, resume, export)."""

import json
import math

import pytest
import torch
from torch import nn

import supermask
from supermask import ConfigError
from supermask.core.convert import random_weight
from supermask.core.mask import num_pruned


class Conv1D(nn.Module):
    """A stand-in for transformers.pytorch_utils.Conv1D (GPT-2's projections): weight stored (in, out)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)


class Kinds(nn.Module):
    """Every kind of weight in one small classifier of images read as sequences of rows."""

    def __init__(self, *, num_classes=10, in_channels=1, image_size=8, width=1.0, d=8):
        super().__init__()
        self.embed = nn.Embedding(16, d, padding_idx=0)
        self.bag = nn.EmbeddingBag(16, d, mode="mean")
        self.rows = nn.Linear(in_channels * image_size, d)
        self.conv = nn.Conv1d(d, d, 3, padding=1)
        self.up = nn.ConvTranspose1d(d, d, 4, stride=2, padding=1)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(d, 2, kdim=4, vdim=6, batch_first=True)  # q/k/v_proj_weight
        self.lstm = nn.LSTM(d, d, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(2 * d, d, batch_first=True)
        self.proj = Conv1D(d, 2 * d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x):
        n, c, h, w = x.shape
        seq = x.permute(0, 2, 1, 3).reshape(n, h, c * w)
        tokens = (seq.abs().mean(2) * 8).long().clamp(0, 15)
        z = self.rows(seq) + self.embed(tokens) + self.bag(tokens).unsqueeze(1)
        z = z + self.up(torch.relu(self.conv(z.transpose(1, 2))))[..., ::2].transpose(1, 2)
        z = z + self.attn(z, z, z, need_weights=False)[0]
        z = z + self.cross(z, z[..., :4], z[..., :6], need_weights=False)[0]
        g = self.gru(self.lstm(z)[0])[0]
        return self.head(self.norm(self.proj(torch.cat([g, z], -1))).mean(1))


def lstm_keys(layers=2):
    return [f"lstm.weight_{k}_l{i}{s}" for i in range(layers) for s in ("", "_reverse") for k in ("ih", "hh")]


KEYS = (["embed", "bag", "rows", "conv", "up", "attn.in_proj_weight", "attn.out_proj", "cross.q_proj_weight",
         "cross.k_proj_weight", "cross.v_proj_weight", "cross.out_proj"] + lstm_keys()
        + ["gru.weight_ih_l0", "gru.weight_hh_l0", "proj", "head"])
X = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["edge-popup", "biprop"])
def test_every_weight_is_masked_with_exact_counts(method):
    model = supermask.convert(Kinds(), method, 0.7, weight_seed=1, score_seed=2)
    masks = supermask.masks(model)
    assert list(masks) == KEYS
    for key, m in masks.items():
        assert int((~m).sum()) == math.floor(0.7 * m.numel()), key
    rep = supermask.report(model).to_dict()
    masked = {k for k, r in rep["parameters"].items() if r["status"] == "masked"}
    assert len(masked) == len(KEYS) and rep["unsupported"] == []
    assert rep["parameters"]["attn.in_proj_weight"]["kept"] == 24 * 8 - num_pruned(24 * 8, 0.7)
    frozen = {k for k, r in rep["parameters"].items() if r["status"] == "frozen"}
    assert {"attn.in_proj_bias", "lstm.bias_ih_l0", "norm.weight", "proj.bias", "head.bias"} <= frozen
    assert rep["totals"]["kept"] == sum(int(m.sum()) for m in masks.values())
    assert "attn.in_proj_weight" in str(supermask.report(model))


def test_a_hand_checked_in_proj_mask_and_recycle_step():
    model = nn.Module()
    model.attn = nn.MultiheadAttention(2, 1, bias=False)
    supermask.convert(model, "edge-popup", 0.25)
    (key, layer, p), (out_key, _, _) = supermask.masked_layers(model)
    assert (key, out_key, p.param_name) == ("attn.in_proj_weight", "attn.out_proj", "in_proj_weight")
    with torch.no_grad():
        p.scores.copy_(torch.tensor([[0.5, -0.1], [0.3, 0.9], [-0.2, 0.05], [0.7, -0.6], [0.01, 0.4], [-0.8, 0.25]]))
        random_weight(layer, p).copy_(torch.arange(1.0, 13.0).view(6, 2))
    # 12 weights, floor(0.25 * 12) = 3 pruned: the smallest |score|s, 0.01, 0.05 and 0.1, at flat 8, 5 and 1
    expected = torch.ones(12, dtype=torch.bool)
    expected[[8, 5, 1]] = False
    assert torch.equal(supermask.masks(model)[key], expected.view(6, 2))
    assert torch.equal(model.attn.in_proj_weight, torch.arange(1.0, 13.0).view(6, 2) * expected.view(6, 2))
    # IWR at r = 0.25: the 3 lowest (8, 5, 1) take the values of the 3rd highest, 2nd highest, highest (6, 10, 3)
    changed = supermask.recycle_(model, 0.25)
    assert changed[key] == 3
    assert random_weight(layer, p).flatten().tolist() == [1, 4, 3, 4, 5, 11, 7, 8, 7, 10, 11, 12]


def test_fan_in_follows_each_layers_meaning():
    def magnitude(model, key):
        layer, p = {k: (m, p) for k, m, p in supermask.masked_layers(model)}[key]
        w = random_weight(layer, p)
        assert torch.allclose(w.abs(), torch.full_like(w, w.abs().max()))  # signed constant: one magnitude
        return w.abs().max().item()

    model = nn.Module()
    model.up = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)  # weight (4, 3, 3, 3): in/g * k*k / s*s = 4.5
    model.proj = Conv1D(20, 30)  # weight (30, 20): 30 inputs per output, not 20
    model.lin = nn.Linear(30, 20)
    model.attn = nn.MultiheadAttention(12, 3)
    supermask.convert(model, "edge-popup", 0.5)
    assert magnitude(model, "up") == pytest.approx(math.sqrt(2 / 4.5))
    assert magnitude(model, "proj") == pytest.approx(math.sqrt(2 / 30)) == magnitude(model, "lin")
    assert magnitude(model, "attn.in_proj_weight") == pytest.approx(math.sqrt(2 / 12))


def test_embedding_and_rnn_inits():
    model = nn.Module()
    model.embed = nn.Embedding(400, 500, padding_idx=3)
    model.lstm = nn.LSTM(300, 200)
    supermask.convert(model, "biprop", 0.75, scale_fan=False)
    layers = {k: (m, p) for k, m, p in supermask.masked_layers(model)}
    emb = random_weight(*layers["embed"])
    assert torch.equal(emb[3], torch.zeros(500))  # the padding vector, as nn.Embedding's
    assert abs(emb.std().item() - 1) < 0.01  # a lookup, not a sum: std 1, PyTorch's N(0, 1)
    ih, hh = random_weight(*layers["lstm.weight_ih_l0"]), random_weight(*layers["lstm.weight_hh_l0"])
    assert abs(ih.std().item() * math.sqrt(300) - 1) < 0.02  # tanh/sigmoid gates: gain 1
    assert abs(hh.std().item() * math.sqrt(200) - 1) < 0.02
    bias = model.lstm.bias_ih_l0
    assert bias.abs().max().item() <= 1 / math.sqrt(200) and bias.std().item() > 0.5 / math.sqrt(3 * 200)
    scaled = supermask.convert(nn.Sequential(nn.Embedding(400, 500)), "biprop", 0.75)  # scale_fan: 1/sqrt(k)
    assert abs(random_weight(scaled[0]).std().item() - 2) < 0.02


def _frozen(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(".scores")}


@pytest.mark.parametrize("method", ["edge-popup", "biprop"])
def test_a_few_steps_change_only_the_scores(method):
    model = supermask.convert(Kinds(), method, 0.5, weight_seed=3, score_seed=4)
    assert list(supermask.masks(model)) == KEYS
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n in dict(model.named_parameters()) if n.endswith(".scores")}
    before, scores = _frozen(model), [s.detach().clone() for s in supermask.score_parameters(model)]
    opt = torch.optim.SGD(supermask.score_parameters(model), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), torch.arange(5)).backward()
        assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in supermask.score_parameters(model))
        opt.step()
    after = _frozen(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not torch.equal(a, b) for a, b in zip(scores, supermask.score_parameters(model)))


def test_bake_keeps_outputs_and_iterand_redraws_only_pruned_weights():
    model = supermask.convert(Kinds(), "biprop", 0.6, weight_seed=1).eval()
    kept = {k: random_weight(m, p)[p.mask()].clone() for k, m, p in supermask.masked_layers(model)}
    changed = supermask.rerandomize_(model, 0.5, seed=9)
    assert set(changed) == set(KEYS) and all(v > 0 for v in changed.values())
    assert all(torch.equal(random_weight(m, p)[p.mask()], kept[k]) for k, m, p in supermask.masked_layers(model))
    with torch.no_grad():
        expected = model(X)
        supermask.bake(model)
        assert not list(supermask.masked_layers(model))
        assert all("parametrizations" not in k for k in model.state_dict())
        assert type(model.lstm) is nn.LSTM and type(model.attn) is nn.MultiheadAttention
        assert torch.equal(model(X), expected)


def test_attention_fast_path_equals_the_plain_path():
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    model = supermask.convert(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), "edge-popup", 0.5).eval()
    assert "layers.0.self_attn.in_proj_weight" in supermask.masks(model)
    x = torch.randn(3, 7, 16)
    attn = model.layers[0].self_attn
    with torch.no_grad():
        fast = attn(x, x, x, need_weights=False)[0]  # eval, batch_first, no weights: the fused kernel
        plain = attn(x, x, x, need_weights=True)[0]
        layers_fast = model(x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    with torch.enable_grad():
        layers_plain = model(x)  # autograd on: the plain path
    torch.testing.assert_close(layers_fast, layers_plain.detach(), rtol=1e-5, atol=1e-6)


def test_compiled_attention_equals_eager():
    model = nn.Sequential(nn.Linear(8, 8))
    model.append(nn.MultiheadAttention(8, 2, batch_first=True))
    mha = supermask.convert(nn.ModuleDict({"inp": model[0], "attn": model[1]}), "edge-popup", 0.5)
    f = lambda x: mha["attn"](mha["inp"](x), mha["inp"](x), mha["inp"](x), need_weights=False)[0]  # noqa: E731
    x = torch.randn(2, 5, 8)
    try:
        compiled = torch.compile(f, backend="eager")
        out = compiled(x)
    except Exception as e:  # noqa: BLE001 - a platform without a working compiler is not this test's subject
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}")
    torch.testing.assert_close(out, f(x))
    out.sum().backward()
    assert all(s.grad is not None for s in supermask.score_parameters(mha))


def test_include_and_skip_by_parameter_name():
    model = supermask.convert(Kinds(), include=["lstm.*", "*in_proj*"], skip=["*_reverse"])
    assert list(supermask.masks(model)) == ["attn.in_proj_weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0",
                                            "lstm.weight_ih_l1", "lstm.weight_hh_l1"]
    model = supermask.convert(Kinds(), skip="first")  # one pattern, not its characters
    assert list(supermask.masks(model)) == KEYS[1:]
    model = supermask.convert(Kinds(), skip=["embed", "bag", "last", "cross"])  # layer names still work
    assert list(supermask.masks(model)) == [k for k in KEYS[2:-1] if not k.startswith("cross.q") and
                                            not k.startswith("cross.k") and not k.startswith("cross.v")]
    with pytest.raises(ConfigError, match="'nope'"):
        supermask.convert(Kinds(), include=["nope"])


class Positional(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 4, 6))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x + self.pos)


def test_an_unknown_weight_is_named_and_strict_refuses_it():
    with pytest.warns(UserWarning, match="cannot mask pos"):
        model = supermask.convert(Positional())
    rep = supermask.report(model)
    assert rep.unsupported == ["pos"]
    assert rep.parameters["pos"]["status"] == "frozen" and rep.parameters["pos"]["source"] == "kept"
    assert rep.totals()["not_from_seed"] == 24
    with pytest.raises(ConfigError, match=r"^strict: supermask cannot mask pos \("):
        supermask.convert(Positional(), strict=True)


class Biased(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc(self.ln(x.mean((2, 3))))


def test_every_frozen_parameter_comes_from_the_seeds():
    torch.manual_seed(0)
    a = Biased()
    torch.manual_seed(1)
    b = Biased()
    with torch.no_grad():
        b.bn.weight.fill_(3.0)
        b.bn(torch.randn(8, 4, 3, 3))  # running statistics of earlier batches
    for m in (a, b):
        supermask.convert(m, "edge-popup", 0.5, weight_seed=7, score_seed=8)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(a(x), b(x))
    assert torch.equal(a.eval()(x), b.eval()(x))
    assert a.fc.bias.abs().max().item() <= 1 / math.sqrt(4) and a.conv2.bias.abs().max().item() <= 1 / math.sqrt(36)
    assert torch.equal(a.bn.weight, torch.ones(4)) and torch.equal(a.ln.bias, torch.zeros(4))
    assert supermask.report(a).totals()["not_from_seed"] == 0
    # weight_init=keep keeps everything the model had
    c, d = Biased(), Biased()
    for m in (c, d):
        supermask.convert(m, weight_init="keep")
    assert not torch.equal(c.fc.bias, d.fc.bias)


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(10, 6)
        self.mid = nn.Linear(6, 6)
        self.lm_head = nn.Linear(6, 10, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, tokens):
        return self.lm_head(torch.relu(self.mid(self.wte(tokens))))


def test_a_shared_tensor_gets_one_mask():
    model = supermask.convert(TiedLM(), "biprop", 0.5)
    assert list(supermask.masks(model)) == ["wte", "mid"]
    assert supermask.report(model).parameters["wte.weight"]["tied"] == ["lm_head.weight"]
    assert torch.equal(model.lm_head.weight, model.wte.weight)
    opt = torch.optim.SGD(supermask.score_parameters(model), lr=1.0)
    tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
        opt.step()
    assert torch.equal(model.lm_head.weight, model.wte.weight)
    assert supermask.recycle_(model, 0.1).keys() == {"wte", "mid"}
    with torch.no_grad():
        expected = model(tokens)
    supermask.bake(model)
    assert model.lm_head.weight is model.wte.weight
    assert torch.equal(model(tokens), expected)


def test_checkpoint_round_trip_keeps_every_mask(tmp_path):
    from supermask.run.checkpoint import load_checkpoint, save_checkpoint

    model = supermask.convert(Kinds(), "edge-popup", 0.5, score_seed=1)
    opt = torch.optim.SGD(supermask.score_parameters(model), lr=0.5, momentum=0.9)
    nn.functional.cross_entropy(model(X), torch.arange(5)).backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", model, opt, {"epoch": 1})
    fresh = supermask.convert(Kinds(), "edge-popup", 0.5, score_seed=2)
    load_checkpoint(tmp_path / "c.safetensors", fresh)
    a, b = supermask.masks(model), supermask.masks(fresh)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(model.eval()(X), fresh.eval()(X))


def test_a_run_reports_and_exports_every_kind(tmp_path, monkeypatch):
    """A digits run of a model with every kind of weight: IteRand, summary report, masks file, exact .smask rebuild."""
    from safetensors.torch import load_file

    from supermask import models
    from supermask.run.config import make_config
    from supermask.export.smask import export_run, load
    from supermask.run.train import build, load_checkpoint, run

    monkeypatch.setitem(models.MODELS, "kinds", Kinds)
    values = {"model": "kinds", "dataset": "digits", "epochs": 1, "method": "biprop", "prune_rate": 0.5,
              "iterand_every_steps": 4, "iterand_rate": 0.5, "device": "cpu", "out_dir": str(tmp_path / "r")}
    summary = run(make_config(None, values), progress=False)
    rep = summary["convert"]["parameters"]
    n = 24 * 8
    assert rep["attn.in_proj_weight"] == {"shape": [24, 8], "numel": n, "status": "masked", "source": "seed",
                                          "kept": n - num_pruned(n, 0.5)}
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["convert"]["totals"] == summary["convert"]["totals"]
    assert set(load_file(tmp_path / "r" / "masks.safetensors")) == set(KEYS)
    export_run(tmp_path / "r", tmp_path / "net.smask")
    from supermask.export.smask import read

    assert any("changed" in e for e in read(tmp_path / "net.smask")[0]["layers"])  # IteRand's redrawn weights
    rebuilt = load(tmp_path / "net.smask")
    cfg = make_config(str(tmp_path / "r" / "config.yaml"))
    from supermask import data

    trained = build(cfg, data.load_dataset("digits"))
    load_checkpoint(tmp_path / "r" / "checkpoint.safetensors", trained)
    with torch.no_grad():
        assert torch.equal(rebuilt(X), trained.eval()(X))

"""convert() on Hugging Face `transformers` models built from tiny configs with random weights (no download):
a BERT-style encoder (nn.Linear projections) and GPT-2 (transformers' Conv1D projections, lm_head tied to wte)."""

import math

import pytest
import torch

import supermask
from supermask import ConfigError
from supermask.core.convert import random_weight, weight_tensors

transformers = pytest.importorskip("transformers")

P = 0.9  # floor(P n) is n * 9 // 10, in exact integers
TOKENS = torch.tensor([[5, 17, 3, 99, 42, 8, 1, 60], [7, 7, 23, 0, 11, 88, 2, 31]])
ATTENTION = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])  # the second sequence is padded


def gpt2(**kw):
    torch.manual_seed(0)  # HF's own init; convert redraws every weight from its seeds anyway
    cfg = transformers.GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)
    return transformers.GPT2LMHeadModel(cfg)


def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16, num_labels=3,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(cfg)


def loss_of(model):
    if isinstance(model, transformers.GPT2LMHeadModel):
        return model(input_ids=TOKENS, attention_mask=ATTENTION, labels=TOKENS).loss
    return model(input_ids=TOKENS, attention_mask=ATTENTION, labels=torch.tensor([0, 2])).loss


def logits_of(model):
    with torch.no_grad():
        return model(input_ids=TOKENS, attention_mask=ATTENTION).logits


BUILDERS = {"bert": bert, "gpt2": gpt2}


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("method", ["edge-popup", "biprop"])
def test_every_projection_and_embedding_weight_is_masked(arch, method):
    # Every parameter of two or more dimensions, read off an untouched model (HF lists a tied tensor once).
    expected = {n: p.numel() for n, p in BUILDERS[arch]().named_parameters() if p.dim() >= 2}
    assert any(".c_attn." in n for n in expected) == (arch == "gpt2")
    model = supermask.convert(BUILDERS[arch](), method, P, weight_seed=1, score_seed=2)
    rep = supermask.report(model)
    rows = {n: r for n, r in rep.parameters.items() if r["status"] == "masked"}
    assert {n: r["numel"] for n, r in rows.items()} == expected
    masks = supermask.masks(model)
    assert len(masks) == len(expected)
    for name, n in expected.items():
        key = name.removesuffix(".weight")  # a layer's `weight` is keyed by the layer
        assert rows[name]["kept"] == int(masks[key].sum()) == n - n * 9 // 10, name
    assert rep.unsupported == []
    assert rep.totals()["not_from_seed"] == 0  # every bias and LayerNorm too, Conv1D's included
    assert rep.totals()["kept"] == sum(n - n * 9 // 10 for n in expected.values())
    if arch == "gpt2":
        assert rows["transformer.wte.weight"]["tied"] == ["lm_head.weight"]
        assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
        # the printed table: one aligned row per parameter, counts with thousands separators, then the totals
        lines = str(rep).splitlines()
        row = next(x for x in lines if x.startswith("transformer.h.0.attn.c_attn.weight "))
        assert row.split()[-5:] == ["masked", "seed", "3,072", "308", "2,764"]  # floor(0.9 * 3072) = 2764
        assert len({len(x) for x in lines if " masked " in x and "shared" not in x}) == 1
        total = next(x for x in lines if x.startswith("masked "))
        assert total.split()[1:] == [str(len(expected)), "tensors", f"{sum(expected.values()):,}",
                                     f"{rep.totals()['kept']:,}", f"{sum(n * 9 // 10 for n in expected.values()):,}",
                                     "10.02%", "kept"]


def test_gpt2_conv1d_fan_in_is_its_input_width():
    model = supermask.convert(gpt2(), "edge-popup", 0.5)
    assert "transformer.h.0.attn.c_attn" in weight_tensors(model)  # still known once parametrized
    layers = {k: (m, p) for k, m, p in supermask.masked_layers(model)}
    for key, fan_in in [("transformer.h.0.attn.c_attn", 32), ("transformer.h.0.mlp.c_fc", 32),
                        ("transformer.h.0.mlp.c_proj", 128)]:  # weights (32, 96), (32, 128), (128, 32): (in, out)
        w = random_weight(*layers[key])
        assert torch.allclose(w.abs(), torch.full_like(w, math.sqrt(2 / fan_in))), key
    bias = model.transformer.h[0].mlp.c_proj.bias  # U(+-1/sqrt(fan_in)) from the seed, like a Linear's
    assert bias.abs().max().item() <= 1 / math.sqrt(128) and bias.abs().max().item() > 0.5 / math.sqrt(128)


def _frozen(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(".scores")}


@pytest.mark.parametrize("arch,method", [("bert", "edge-popup"), ("gpt2", "edge-popup"), ("gpt2", "biprop")])
def test_a_few_steps_change_only_the_scores_and_bake_keeps_outputs(arch, method):
    model = supermask.convert(BUILDERS[arch](), method, P, weight_seed=3, score_seed=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".scores") for n in trainable)
    before, masks = _frozen(model), supermask.masks(model)
    scores = [s.detach().clone() for s in supermask.score_parameters(model)]
    opt = torch.optim.Adam(supermask.score_parameters(model), lr=0.05)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert all(math.isfinite(x) for x in losses)
    after = _frozen(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    assert all(not torch.equal(a, b) for a, b in zip(scores, supermask.score_parameters(model)))
    assert any(not torch.equal(m, supermask.masks(model)[k]) for k, m in masks.items())  # the search moved

    model.eval()
    expected = logits_of(model)
    supermask.bake(model)
    assert not list(supermask.masked_layers(model))
    assert torch.equal(logits_of(model), expected)  # exactly: the same weights through the same kernels
    # A baked model is a plain HF model again: its state dict loads into a fresh one with the same outputs.
    fresh = BUILDERS[arch]().eval()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(logits_of(fresh), expected)


def test_biprop_gpt2_effective_weight_is_alpha_sign_mask():
    model = supermask.convert(gpt2(), "biprop", P, weight_seed=5)
    layer = model.transformer.h[1].attn.c_attn
    w = layer.parametrizations.weight.original
    m = supermask.masks(model)["transformer.h.1.attn.c_attn"]
    alpha = w.abs()[m].sum() / m.sum()
    assert torch.allclose(layer.weight, alpha * w.sign() * m, atol=1e-7)
    # Biprop draws Kaiming normal with the fan scaled by the keep fraction: std sqrt(2 / (32 * 0.1))
    assert abs(w.std().item() / math.sqrt(2 / (32 * (1 - P))) - 1) < 0.05


def test_gpt2_eager_and_sdpa_attention_agree_after_convert():
    eager = supermask.convert(gpt2(attn_implementation="eager"), "edge-popup", P, weight_seed=6, score_seed=7).eval()
    sdpa = supermask.convert(gpt2(), "edge-popup", P, weight_seed=6, score_seed=7).eval()
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ("eager", "sdpa")
    ma, mb = supermask.masks(eager), supermask.masks(sdpa)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    # Different kernels sum in a different order: equal to float32 rounding, not bit for bit.
    valid = ATTENTION.bool()  # padded positions' outputs are not defined the same way by both kernels
    torch.testing.assert_close(logits_of(eager)[valid], logits_of(sdpa)[valid], rtol=0, atol=1e-5)


def test_a_weight_it_cannot_mask_is_named():
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=8, patch_size=4, num_labels=3)
    # ViT's class token and position embeddings are bare nn.Parameters of its embeddings module.
    with pytest.warns(UserWarning, match="cannot mask vit.embeddings.cls_token, vit.embeddings.position_embeddings"):
        model = supermask.convert(transformers.ViTForImageClassification(cfg), "edge-popup", P)
    rep = supermask.report(model)
    assert rep.unsupported == ["vit.embeddings.cls_token", "vit.embeddings.position_embeddings"]
    assert rep.parameters["vit.embeddings.cls_token"]["source"] == "kept"
    assert "unsupported" in str(rep)
    assert "vit.embeddings.patch_embeddings.projection" in supermask.masks(model)  # the rest is masked
    with pytest.raises(ConfigError, match=r"^strict: supermask cannot mask vit\.embeddings\.cls_token, "):
        supermask.convert(transformers.ViTForImageClassification(cfg), strict=True)


def test_smask_export_is_for_registry_models_only():
    """A .smask rebuilds a network from the model registry and its seeds; a Hugging Face model is not in it, so
    a run (and so an export) of one is refused up front. Its deployable form is the baked model (above)."""
    from supermask.run.config import make_config
    from supermask.models import MODELS

    assert "gpt2" not in MODELS
    with pytest.raises(ConfigError, match="gpt2"):
        make_config(None, {"model": "gpt2"})


def test_a_tied_model_checkpoints_once_and_loads_tied(tmp_path):
    from safetensors import safe_open

    from supermask.run.checkpoint import load_checkpoint, load_tensors, save_checkpoint

    def searched(score_seed):
        model = supermask.convert(gpt2(), "edge-popup", 0.5, weight_seed=1, score_seed=score_seed)
        return model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)

    def step(model, optimizer):
        optimizer.zero_grad()
        loss_of(model).backward()
        optimizer.step()

    model, optimizer = searched(2)
    step(model, optimizer)  # scores and momentum that a fresh model does not have
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, model, optimizer, {"epoch": 1})
    with safe_open(str(path), "pt") as f:  # the tied weight and its one set of scores, each stored once
        stored = set(f.keys())
    wte, head = "model.transformer.wte.parametrizations.weight.", "model.lm_head.parametrizations.weight."
    assert {f"{wte}original", f"{wte}0.scores"} <= stored and not any(k.startswith(head) for k in stored)
    tensors, _ = load_tensors(path)
    assert tensors[f"{head}original"].data_ptr() == tensors[f"{wte}original"].data_ptr()  # shared again

    restored, restored_optimizer = searched(3)
    assert load_checkpoint(path, restored, restored_optimizer) == {"epoch": 1}
    assert restored.lm_head.parametrizations.weight.original is restored.transformer.wte.parametrizations.weight.original
    assert torch.equal(logits_of(restored), logits_of(model))
    step(model, optimizer)
    step(restored, restored_optimizer)  # the optimizer state came back too: the search goes on identically
    assert torch.equal(logits_of(restored), logits_of(model))
    assert torch.equal(restored.lm_head.weight, restored.transformer.wte.weight)
    from safetensors.torch import save

    from supermask.run.checkpoint import ALIASES_KEY

    for aliases in ('{"b": "missing"}', '{"a": "a"}', '["a"]', '{"b": ["a"]}'):  # a damaged shared-tensor list
        (tmp_path / "bad.safetensors").write_bytes(save({"a": torch.zeros(2)}, metadata={ALIASES_KEY: aliases}))
        with pytest.raises(ConfigError, match="shared-tensor list"):
            load_tensors(tmp_path / "bad.safetensors")

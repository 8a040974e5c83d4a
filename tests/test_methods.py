"""Edge-Popup and Biprop effective weights and gradients on hand-computed layers."""

import math

import pytest
import torch
from torch import nn

import supermask
from supermask import mask as mask_lib
from supermask.core.convert import random_weight
from supermask.core.methods import Biprop, EdgePopup, biprop_alpha


def _linear_with(method_cls, weight, scores, prune_rate):
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", method_cls(scores.clone(), prune_rate))
    layer.parametrizations.weight.original.requires_grad_(False)
    return layer


W = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
S = torch.tensor([[0.4, -0.1], [-0.3, 0.2]])  # |S| ranks: 0.4 > 0.3 > 0.2 > 0.1


def test_edge_popup_weight_and_score_gradient():
    layer = _linear_with(EdgePopup, W, S, 0.5)  # keeps |S| 0.4 and 0.3: positions (0,0), (1,0)
    assert torch.equal(layer.weight, torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
    x = torch.tensor([[1.0, 2.0]])
    y = layer(x)  # W_eff @ x = [1, 3]
    assert y.tolist() == [[1.0, 3.0]]
    y.sum().backward()
    # dL/dW_eff[i, j] = x[j]; dL/d|S| = dL/dW_eff * W; dL/dS = that * sign(S)
    g_eff = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    expected = g_eff * W * S.sign()
    scores = layer.parametrizations.weight[0].scores
    assert torch.allclose(scores.grad, expected)
    assert layer.parametrizations.weight.original.grad is None


def test_signed_score_rank_keeps_the_largest_signed_scores_with_an_identity_gradient():
    # IteRand's GetSubnet: S ranks 0.4 > 0.2 > -0.1 > -0.3, so half keeps (0,0) and (1,1), where |S| keeps (0,0), (1,0)
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(W)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", EdgePopup(S.clone(), 0.5, rank="signed"))
    layer.parametrizations.weight.original.requires_grad_(False)
    assert torch.equal(layer.weight, torch.tensor([[1.0, 0.0], [0.0, -4.0]]))
    layer(torch.tensor([[1.0, 2.0]])).sum().backward()
    # dL/dS = dL/dM = dL/dW_eff * W: no sign(S) (the published backward returns g)
    expected = torch.tensor([[1.0, 2.0], [1.0, 2.0]]) * W
    assert torch.allclose(layer.parametrizations.weight[0].scores.grad, expected)
    with torch.no_grad():  # evaluation computes the same mask
        assert torch.equal(layer.parametrizations.weight[0].mask(), torch.tensor([[True, False], [False, True]]))
    with pytest.raises(supermask.ConfigError, match="unknown score_rank 'abs'"):
        EdgePopup(S.clone(), 0.5, rank="abs")


def test_kaiming_uniform_scores_are_bounded_by_sqrt_6_over_fan_in():
    model = supermask.convert(nn.Sequential(nn.Linear(150, 400, bias=False)), "edge-popup", 0.5,
                              score_init="kaiming-uniform")
    scores = supermask.score_parameters(model)[0].detach()
    bound = math.sqrt(6 / 150)
    assert scores.abs().max() <= bound and scores.abs().max() > 0.99 * bound  # 60,000 draws reach the edge
    assert abs(scores.abs().mean().item() - bound / 2) < 0.01 * bound  # uniform: mean |s| is half the bound
    default = supermask.score_parameters(supermask.convert(nn.Sequential(nn.Linear(150, 400, bias=False)),
                                                           "edge-popup", 0.5))[0].detach()
    assert default.abs().max() <= 1 / math.sqrt(150)
    with pytest.raises(supermask.ConfigError, match="unknown score_init 'xavier'"):
        supermask.convert(nn.Sequential(nn.Linear(4, 4)), "edge-popup", 0.5, score_init="xavier")


def _biprop_with(grad):
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(W)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", Biprop(S.clone(), 0.5, grad=grad))
    layer.parametrizations.weight.original.requires_grad_(False)
    return layer


def test_biprop_alpha_and_weight():
    layer = _linear_with(Biprop, W, S, 0.5)
    kept = torch.tensor([[True, False], [True, False]])
    alpha = (1.0 + 3.0) / 2  # mean |w| over the kept weights
    assert biprop_alpha(W, kept).item() == alpha
    assert torch.equal(layer.weight, torch.tensor([[alpha, 0.0], [alpha, 0.0]]))


# W = [[1, -2], [3, -4]], S = [[0.4, -0.1], [-0.3, 0.2]]: kept (0,0) and (1,0), alpha = (1 + 3) / 2 = 2.
# x = [1, 2] and L = sum(W_eff @ x), so dL/dW_eff[i, j] = x[j] = [[1, 2], [1, 2]] and sign(S) = [[1, -1], [-1, 1]].
def test_biprop_score_gradient_is_the_published_one_by_default():
    layer = _biprop_with("weight")
    assert torch.equal(layer.weight, torch.tensor([[2.0, 0.0], [2.0, 0.0]]))  # the value is the same either way
    layer(torch.tensor([[1.0, 2.0]])).sum().backward()
    # GetQuantnet_binary's backward sends g * |W| to |S|; the layer's sign(W) makes it g * W: dL/dS = g * W * sign(S)
    # = [[1*1*1, 2*-2*-1], [1*3*-1, 2*-4*1]]
    assert layer.parametrizations.weight[0].scores.grad.tolist() == [[1.0, 4.0], [-3.0, -8.0]]
    assert Biprop(S.clone(), 0.5).grad == "weight"


def test_biprop_alpha_gradient_is_kept_as_an_option():
    layer = _biprop_with("alpha")
    assert torch.equal(layer.weight, torch.tensor([[2.0, 0.0], [2.0, 0.0]]))
    layer(torch.tensor([[1.0, 2.0]])).sum().backward()
    # alpha * sign(W) * M differentiated with alpha constant: dL/dS = g * alpha * sign(W) * sign(S)
    # = [[1*2*1*1, 2*2*-1*-1], [1*2*1*-1, 2*2*-1*1]]
    assert layer.parametrizations.weight[0].scores.grad.tolist() == [[2.0, 4.0], [-2.0, -4.0]]


def test_biprop_grad_is_checked():
    with pytest.raises(supermask.ConfigError, match="biprop_grad 'sign'"):
        Biprop(S.clone(), 0.5, grad="sign")
    model = supermask.convert(nn.Sequential(nn.Linear(4, 3)), "biprop", 0.5, options={"grad": "alpha"})
    assert model[0].parametrizations.weight[0].grad == "alpha"


def test_mask_is_computed_once_in_evaluation(monkeypatch):
    calls = []
    real = mask_lib.topk_mask

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mask_lib, "topk_mask", counting)
    model = supermask.convert(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), "edge-popup", 0.5)
    model.eval()
    with torch.no_grad():
        for scores in supermask.score_parameters(model):
            scores.mul_(1.5)  # a score update invalidates the cached masks
        calls.clear()
        outs = [model(torch.randn(5, 8)) for _ in range(10)]
    assert len(calls) == 2  # once per layer, not per batch
    assert all(o.shape == (5, 4) for o in outs)


def test_mask_follows_score_updates():
    model = supermask.convert(nn.Sequential(nn.Linear(6, 6, bias=False)), "edge-popup", 0.5, score_seed=1)
    layer = model[0]
    before = supermask.masks(model)["0"].clone()
    scores = layer.parametrizations.weight[0].scores
    with torch.no_grad():
        scores.copy_(-scores)  # same magnitudes: same mask
        assert torch.equal(supermask.masks(model)["0"], before)
        scores.copy_(1.0 / scores)  # reversed magnitude order: the complementary mask
    assert torch.equal(supermask.masks(model)["0"], ~before)
    model.eval()
    with torch.no_grad():
        assert torch.equal(layer.weight, random_weight(layer) * (~before))


def test_training_step_changes_only_scores():
    torch.manual_seed(0)
    model = supermask.convert(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), "biprop", 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".scores") for n in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,))).backward()
    opt.step()
    after = model.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]) != k.endswith(".scores"), k


def test_biprop_alpha_does_not_depend_on_the_thread_count():
    # A float32 sum's value depends on how torch splits it across threads: 5 of these 12 layers gave different
    # alphas on 1 and 2 threads, so a .smask exported on one thread count failed to load on another.
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    try:
        for _ in range(12):
            w = torch.randn(256, 128, 3, 3, generator=g)
            m = torch.rand(w.shape, generator=g) < 0.5
            alphas = []
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                alphas.append(biprop_alpha(w, m).item())
                alphas.append(biprop_alpha(torch.stack([w, w.flip(0)]), torch.stack([m, m.flip(0)]), True)[0].item())
            alphas.append(biprop_alpha(w.flip(0), m.flip(0)).item())  # the same kept weights in another order
            assert len(set(alphas)) == 1, alphas
    finally:
        torch.set_num_threads(threads)


def test_biprop_alpha_is_the_exact_mean_rounded():
    g = torch.Generator().manual_seed(1)
    for scale in (1.0, 1e-30, 1e30):  # the fixed point follows the weights' magnitude
        w = torch.randn(64, 3, 3, 3, generator=g) * scale
        m = mask_lib.topk_mask(torch.rand(w.shape, generator=g), 0.7)
        kept = w[m].abs().double().tolist()
        exact = math.fsum(kept) / len(kept)
        assert biprop_alpha(w, m).item() == pytest.approx(exact, rel=2 ** -23)
    assert biprop_alpha(W, torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0  # nothing kept: no division by 0


def test_mask_follows_writes_through_data():
    # `.data` writes do not bump the version counter the cache was keyed on: masks() and the forward pass kept the
    # old mask silently.
    model = supermask.convert(nn.Sequential(nn.Linear(6, 6, bias=False)), "edge-popup", 0.5, score_seed=1)
    layer = model[0]
    p = layer.parametrizations.weight[0]
    before = supermask.masks(model)["0"].clone()
    model.eval()
    with torch.no_grad():
        layer(torch.ones(1, 6))  # fills the evaluation cache
    p.scores.data.copy_(1.0 / p.scores.detach())  # reversed magnitude order: the complementary mask
    assert torch.equal(supermask.masks(model)["0"], ~before)
    with torch.no_grad():
        assert torch.equal(layer.weight, random_weight(layer) * (~before))
        layer.parametrizations.weight.original.data.mul_(2)  # the frozen weight, edited the same way
        assert torch.equal(layer.weight, random_weight(layer) * (~before))
    model.train()
    p.scores.data.copy_(1.0 / p.scores.detach())  # back to the first mask, in a training forward
    x = torch.eye(6)
    assert torch.equal(layer(x).detach(), x @ (random_weight(layer) * before).T)


def test_biprop_published_alpha_count_divides_by_int_k_n_by_hand():
    from supermask.core.methods import Biprop

    w = torch.tensor([1.0, -2.0, 3.0, -4.0, 0.5, 0.25, -0.125, 6.0, 0.1, 0.2])
    scores = w.abs().clone()
    mask = mask_lib.topk_mask(scores, 0.75)  # 10 - floor(7.5) = 3 kept: |6|, |-4|, |3|
    exact, published = Biprop(scores, 0.75), Biprop(scores, 0.75, alpha_count="published")
    assert exact.alpha(w, mask).item() == pytest.approx(13 / 3)
    assert published.alpha(w, mask).item() == pytest.approx(13 / 2)  # int(0.25 * 10) = 2
    half = mask_lib.topk_mask(scores, 0.5)  # k n = 5, an integer: the two agree
    assert Biprop(scores, 0.5, alpha_count="published").alpha(w, half).item() == Biprop(scores, 0.5).alpha(w, half).item()
    from supermask.errors import ConfigError
    from supermask.run.config import make_config

    with pytest.raises(ConfigError, match="biprop_alpha_count='published' applies only to method=biprop"):
        make_config("digits", {"biprop_alpha_count": "published"})

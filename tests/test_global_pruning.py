"""prune_scope=global: the top (1 - p) of |S| over all masked weights together (issue 24)."""

import pytest
import torch
from torch import nn

import supermask
from supermask import ConfigError
from supermask.core.mask import global_topk_masks


def _two_layers(scope="global", p=0.5, method="edge-popup"):
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    supermask.convert(model, method, p, prune_scope=scope)
    first, second = (layer.parametrizations.weight[0] for layer in model)
    with torch.no_grad():  # |S| of the first layer all above the second's
        first.scores.copy_(torch.tensor([[0.9, -0.8], [0.7, 0.6]]))
        second.scores.copy_(torch.tensor([[0.1, -0.4], [0.3, 0.2]]))
    return model


def test_global_masks_keep_the_largest_scores_of_all_layers_by_hand():
    model = _two_layers()
    masks = supermask.masks(model)  # 8 weights, floor(0.5 * 8) = 4 pruned: the first layer's four kept
    assert masks["0"].all() and not masks["1"].any()
    layer = _two_layers("layer")  # per layer: two of each
    assert [int(m.sum()) for m in supermask.masks(layer).values()] == [2, 2]


def test_the_total_kept_is_exact_and_ties_go_to_the_earlier_tensor():
    mags = [torch.ones(3), torch.ones(4)]  # 7 equal magnitudes, p 0.5: floor(3.5) = 3 pruned, 4 kept
    a, b = global_topk_masks(mags, 0.5)
    assert a.tolist() == [True, True, True] and b.tolist() == [True, False, False, False]
    for p in (0.1, 0.33, 0.9):
        mags = [torch.rand(5, 7), torch.rand(13), torch.rand(2, 2, 3)]
        n = sum(m.numel() for m in mags)
        assert sum(int(m.sum()) for m in global_topk_masks(mags, p)) == n - int(p * n)


def test_global_scores_train_and_the_masks_follow_them():
    torch.manual_seed(0)
    model = _two_layers()
    opt = torch.optim.SGD(supermask.score_parameters(model), lr=1.0)
    x = torch.randn(4, 2)
    model(x).sum().backward()  # the gradient reaches every layer's scores through the global mask
    grads = [layer.parametrizations.weight[0].scores.grad for layer in model]
    assert all(g is not None for g in grads) and grads[1].abs().sum() > 0
    opt.step()
    with torch.no_grad():
        model[1].parametrizations.weight[0].scores.mul_(100.0)  # the second layer's |S| now far above the first's
    model.eval()
    with torch.no_grad():
        masks = supermask.masks(model)
    assert int(masks["1"].sum()) == 4 and int(masks["0"].sum()) == 0


def test_prune_scope_is_checked():
    with pytest.raises(ConfigError, match="prune_scope 'net'"):
        supermask.convert(nn.Sequential(nn.Linear(2, 2)), "edge-popup", 0.5, prune_scope="net")


def test_a_global_run_trains_exports_and_evaluates_through_the_cli(tmp_path, capsys):
    import json

    from supermask.cli import main

    run, net = tmp_path / "run", tmp_path / "net.smask"
    args = ["train", "digits", "prune_scope=global", "prune_rate=0.8", "epochs=2", "width=0.25", "method=biprop"]
    assert main([*args, f"out_dir={run}", "-q"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    total = summary["params_total"]
    assert summary["prune_scope"] == "global" and summary["params_kept"] == total - int(0.8 * total)
    densities = summary["layer_density"].values()
    assert len(set(densities)) > 1  # each layer's share follows its scores
    assert main(["export", str(run), "-o", str(net)]) == 0
    capsys.readouterr()
    assert main(["eval", str(net)]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]
    with pytest.raises(ConfigError, match="train these runs alone"):
        from supermask.multi.together import check_group
        from supermask.run.config import make_config

        check_group([make_config("digits", {"prune_scope": "global", "out_dir": str(tmp_path / f"r{i}"),
                                            "score_seed": i}) for i in range(2)])

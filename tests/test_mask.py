"""The top-k mask: exact counts, tie-breaking, no full sort, and the straight-through gradient."""

import math

import pytest
import torch

from supermask.core.mask import num_pruned, straight_through, topk_mask


@pytest.mark.parametrize("n", [1, 2, 7, 10, 99, 1000, 4321])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.2, 0.5, 0.75, 0.9, 0.98, 0.999])
def test_prunes_exactly_floor_p_n(n, p):
    scores = torch.randn(n, generator=torch.Generator().manual_seed(n))
    mask = topk_mask(scores.abs(), p)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert int((~mask).sum()) == math.floor(p * n + 1e-9)


def test_num_pruned_uses_the_written_decimal():
    assert 0.29 * 100 < 29  # the float product would floor to 28
    assert num_pruned(100, 0.29) == 29
    assert num_pruned(10, 0.9) == 9
    assert num_pruned(3, 0.5) == 1
    assert num_pruned(5, 0.0) == 0


def test_the_published_count_is_the_float_arithmetic_of_the_published_command_line():
    # The published GetSubnet prunes int((1 - k) n) with k the kept fraction: in floats 1 - 0.8 is
    # 0.19999999999999996, so at 20% pruned a layer whose 0.2 n is an integer prunes one fewer.
    assert num_pruned(2560, 0.2, "published") == 511 and num_pruned(2560, 0.2) == 512
    assert num_pruned(10, 0.2, "published") == 1 and num_pruned(10, 0.2) == 2
    # at 70% (k = 0.3): 0.7 * 90 is 62.99999999999999 in floats
    assert num_pruned(90, 0.7, "published") == 62 and num_pruned(90, 0.7) == 63
    # where the float product is exact the two agree: 50% and 90% of 2560, 0.5 * 9 = 4.5
    for n, p in ((2560, 0.5), (2560, 0.9), (9, 0.5), (100, 0.99)):
        assert num_pruned(n, p, "published") == num_pruned(n, p)
    # IteRand's percentile: k = 1 + round(0.01 * 100p * (n - 1)), the scores below the k-th pruned
    assert num_pruned(10, 0.5, "percentile") == 4  # round(4.5) is 4 (halves to even); floor(5) prunes 5
    assert num_pruned(12, 0.5, "percentile") == 6  # round(5.5) = 6
    assert num_pruned(2560, 0.9, "percentile") == 2303  # round(0.9 * 2559 = 2303.1)
    assert num_pruned(101, 0.5, "percentile") == 50 == num_pruned(101, 0.5)
    mask = topk_mask(torch.arange(10.0), 0.2, count="published")
    assert mask.tolist() == [False] + [True] * 9  # prunes 1, the smallest
    with pytest.raises(ValueError, match="unknown pruned count 'float'"):
        num_pruned(10, 0.2, "float")


def test_keeps_the_largest_magnitudes_hand_case():
    mags = torch.tensor([[0.3, 0.1, 0.9], [0.5, 0.2, 0.7]])
    # p = 0.5 of 6 prunes 3: the three smallest are 0.1, 0.2, 0.3
    expected = torch.tensor([[False, False, True], [True, False, True]])
    assert torch.equal(topk_mask(mags, 0.5), expected)


def test_ties_keep_the_lowest_flat_indices():
    mags = torch.tensor([1.0, 2.0, 2.0, 2.0, 2.0, 3.0])
    # prune 3 (p = 0.5): 1.0 goes, and two of the four 2.0s go; the first two 2.0s (indices 1, 2) are kept
    assert topk_mask(mags, 0.5).tolist() == [False, True, True, False, False, True]
    # all equal: the first n - floor(p n) are kept
    assert topk_mask(torch.ones(10), 0.7).tolist() == [True] * 3 + [False] * 7


def test_matches_a_full_sort_on_random_scores():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 3, 3, 3, generator=g)
    mask = topk_mask(scores.abs(), 0.8)
    keep = scores.numel() - math.floor(0.8 * scores.numel())
    reference = torch.zeros(scores.numel(), dtype=torch.bool)
    reference[scores.abs().flatten().argsort(descending=True)[:keep]] = True
    assert torch.equal(mask.flatten(), reference)


def test_does_not_sort(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("topk_mask must not sort")

    for name in ("sort", "argsort"):
        monkeypatch.setattr(torch, name, forbidden)
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    assert int(topk_mask(torch.rand(1000), 0.9).sum()) == 100


def test_straight_through_gradient_is_identity():
    mags = torch.tensor([0.5, 0.1, 0.9], requires_grad=True)
    mask = topk_mask(mags, 0.34)  # prunes floor(1.02) = 1: the 0.1
    out = straight_through(mags, mask)
    assert out.tolist() == [1.0, 0.0, 1.0]
    (out * torch.tensor([2.0, 3.0, 4.0])).sum().backward()
    assert mags.grad.tolist() == [2.0, 3.0, 4.0]  # the pruned entry gets its gradient too


@pytest.mark.parametrize("p", [0.01, 0.5, 0.9, 0.99])
def test_bracketed_selection_is_exact_on_large_and_adversarial_tensors(p):
    from supermask.core.mask import kth_smallest

    g = torch.Generator().manual_seed(1)
    n = 300_000
    random = torch.rand(n, generator=g)
    ordered = torch.arange(n, dtype=torch.float32)  # the strided sample is then perfectly regular
    clustered = torch.cat([torch.zeros(n // 2), torch.rand(n // 2, generator=g)])  # a huge tie at zero
    for flat in (random, ordered, clustered, ordered.flip(0)):
        k = math.floor(p * n)
        assert kth_smallest(flat, k).item() == flat.kthvalue(k).values.item()
        assert int((~topk_mask(flat, p)).sum()) == k

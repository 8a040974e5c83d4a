"""Seed statistics against hand-computed values and published t tables."""

import math

import pytest

from supermask.multi.stats import estimate, paired_difference, t_quantile, verdict


@pytest.mark.parametrize("df, q", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantiles_match_the_table(df, q):
    assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)  # two-sided 95%, from any t table


def test_two_values():
    e = estimate([60.0, 62.0])  # s = sqrt(2), s / sqrt(2) = 1, so the half-width is t(0.975, 1) itself
    assert (e.n, e.mean) == (2, 61.0)
    assert e.std == pytest.approx(math.sqrt(2))
    assert e.half_width == pytest.approx(12.7062, abs=1e-4)
    assert e.text() == "61.00 ± 12.71 (n=2)"


def test_five_values():
    e = estimate([1.0, 2.0, 3.0, 4.0, 5.0])  # s^2 = 10 / 4 = 2.5, se = sqrt(0.5)
    assert e.mean == 3.0 and e.std == pytest.approx(1.58114, abs=1e-5)
    assert e.half_width == pytest.approx(2.77645 * math.sqrt(0.5), abs=1e-5)  # 1.96324
    assert (e.low, e.high) == (pytest.approx(3 - 1.96324, abs=1e-5), pytest.approx(3 + 1.96324, abs=1e-5))


def test_one_value_has_no_interval():
    e = estimate([50.0])
    assert (e.n, e.mean, e.std, e.half_width, e.low, e.high) == (1, 50.0, None, None, None, None)
    assert e.text() == "50.00 (1 seed)"
    assert verdict(e) == "one seed"
    with pytest.raises(ValueError):
        estimate([])


def test_identical_values_have_a_zero_interval():
    e = estimate([0.5, 0.5, 0.5])
    assert e.std == 0 and e.half_width == 0


def test_paired_difference_uses_common_seeds_only():
    a = {0: 62.0, 1: 65.0, 2: 63.0, 3: 99.0}  # seed 3 has no partner in b and must not count
    b = {0: 60.0, 1: 61.0, 2: 62.0, 4: 0.0}
    d = paired_difference(a, b)  # differences 2, 4, 1: mean 7/3, s^2 = (1/9 + 25/9 + 16/9) / 2 = 7/3
    assert d.n == 3 and d.mean == pytest.approx(7 / 3)
    assert d.std == pytest.approx(math.sqrt(7 / 3))
    assert d.half_width == pytest.approx(4.30265 * math.sqrt(7 / 3) / math.sqrt(3), abs=1e-4)  # 3.7944
    assert verdict(d) == "within noise"  # [-1.46, 6.13] holds 0
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


@pytest.mark.parametrize("diffs, expected", [([2.0, 3.0, 4.0], "ahead"),       # 3 ± 2.484: [0.52, 5.48]
                                             ([-2.0, -3.0, -4.0], "behind"),
                                             ([1.0, -1.0, 0.5], "within noise"),
                                             ([0.0, 0.0], "within noise")])
def test_verdicts(diffs, expected):
    d = paired_difference(dict(enumerate(diffs)), dict.fromkeys(range(len(diffs)), 0.0))
    assert verdict(d) == expected


def test_pairing_removes_shared_seed_noise():
    # Seeds move both methods alike: unpaired the intervals overlap, paired the difference is clearly ahead.
    base = {0: 50.0, 1: 60.0, 2: 70.0}
    better = {s: v + 1.0 + 0.1 * s for s, v in base.items()}
    assert estimate(list(better.values())).low < estimate(list(base.values())).high
    assert verdict(paired_difference(better, base)) == "ahead"
    assert estimate([1.0]).text(sign=True) == "+1.00 (1 seed)"

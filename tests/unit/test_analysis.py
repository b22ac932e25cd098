"""Tests for remote_introspect.stats.analysis: each asserts a definition against known values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from remote_introspect.stats.analysis import (
    KappaCI,
    RateCI,
    cohen_kappa,
    format_null,
    kappa_bootstrap_ci,
    net_detection,
    null_upper_bound,
    preregistered_test,
    rate_ci,
    raw_agreement,
    refusal_excluded,
    trials_needed,
    upper_bound,
)

# ----------------------------------------------------------------------------- rate_ci


def test_clopper_pearson_3_of_20_matches_beta_quantiles_and_format() -> None:
    ci = rate_ci(3, 20)
    # Independent computation: CP bounds are Beta quantiles.
    assert ci.lo == pytest.approx(stats.beta.ppf(0.025, 3, 18), abs=1e-10)
    assert ci.hi == pytest.approx(stats.beta.ppf(0.975, 4, 17), abs=1e-10)
    assert ci.lo == pytest.approx(0.032071, abs=1e-6)
    assert ci.hi == pytest.approx(0.378927, abs=1e-6)
    assert ci.rate == 0.15 and ci.n == 20 and ci.k == 3
    assert ci.format() == "3/20 15.0% [3.2%, 37.9%]"


def test_rate_ci_edges_and_confidence() -> None:
    zero = rate_ci(0, 10)
    assert zero.lo == 0.0 and zero.hi == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-10)
    full = rate_ci(10, 10)
    assert full.hi == 1.0 and full.lo == pytest.approx(0.025 ** (1 / 10), abs=1e-10)
    narrower = rate_ci(3, 20, confidence=0.8)
    assert narrower.lo > rate_ci(3, 20).lo and narrower.hi < rate_ci(3, 20).hi
    assert narrower.confidence == 0.8


def test_rate_ci_n_zero_is_undefined_not_zero() -> None:
    ci = rate_ci(0, 0)
    assert ci.rate is None and ci.lo is None and ci.hi is None
    assert ci.format() == "0/0 —"


def test_rate_ci_is_frozen() -> None:
    ci = rate_ci(1, 2)
    with pytest.raises(AttributeError):
        ci.k = 2  # type: ignore[misc]


@pytest.mark.parametrize("k,n", [(5, 4), (-1, 3), (1.5, 3), (1, -2)])
def test_rate_ci_rejects_bad_counts(k: float, n: float) -> None:
    with pytest.raises(ValueError):
        rate_ci(k, n)  # type: ignore[arg-type]


def test_rate_ci_rejects_bad_confidence() -> None:
    with pytest.raises(ValueError):
        rate_ci(1, 2, confidence=1.0)


def test_rate_ci_accepts_numpy_integers() -> None:
    assert rate_ci(np.int64(3), np.int64(20)).format() == "3/20 15.0% [3.2%, 37.9%]"


# ----------------------------------------------------------------------------- upper bounds


def test_null_upper_bound_0_of_400() -> None:
    assert null_upper_bound(400) == pytest.approx(0.007461, abs=1e-6)
    assert null_upper_bound(400) == pytest.approx(1 - 0.05 ** (1 / 400), rel=1e-10)
    assert format_null(400) == "0/400: true rate < 0.75% (one-sided 95%)"


def test_null_upper_bound_other_levels_and_format_rounds_up() -> None:
    # 0/1200 (Merrill's injected total): 1 - 0.05^(1/1200) = 0.2493%
    assert null_upper_bound(1200) == pytest.approx(0.0024934, abs=1e-7)
    assert format_null(1200) == "0/1200: true rate < 0.25% (one-sided 95%)"
    # 0/20 -> 13.91%, printed rounded up to 2 significant figures
    assert format_null(20) == "0/20: true rate < 14% (one-sided 95%)"
    assert null_upper_bound(100, confidence=0.99) == pytest.approx(1 - 0.01 ** (1 / 100), rel=1e-10)
    assert format_null(100, confidence=0.99) == "0/100: true rate < 4.6% (one-sided 99%)"


def test_upper_bound_general_k_is_beta_quantile() -> None:
    assert upper_bound(3, 20) == pytest.approx(stats.beta.ppf(0.95, 4, 17), abs=1e-10)
    # One-sided bound is below the two-sided 95% upper limit.
    assert upper_bound(3, 20) < rate_ci(3, 20).hi  # type: ignore[operator]
    assert upper_bound(5, 5) == 1.0
    with pytest.raises(ValueError):
        upper_bound(0, 0)


# ----------------------------------------------------------------------------- power


def test_trials_needed_one_percent_zero_control() -> None:
    # smallest n with 1 - 0.99^n >= 0.8: 0.99^160 = 0.2003 (> 0.2), 0.99^161 = 0.1983
    assert 1 - 0.99**160 < 0.8 <= 1 - 0.99**161
    assert trials_needed(0.01) == 161


def test_trials_needed_zero_control_closed_form() -> None:
    assert trials_needed(0.2, power=0.8) == 8  # 0.8^7 = 0.2097, 0.8^8 = 0.1678
    assert trials_needed(0.05, power=0.95) == 59  # ln 0.05 / ln 0.95 = 58.4
    assert trials_needed(1.0) == 1
    # alpha is irrelevant when the control rate is 0 (any hit rejects)
    assert trials_needed(0.01, alpha=0.001) == 161


def _brute_force_trials(true_rate: float, control: float, power: float, alpha: float) -> int:
    """Independent check: per n, the critical count from scipy's one-sided binomtest p-values."""
    for n in range(1, 5000):
        crit = next(
            (
                c
                for c in range(n + 1)
                if stats.binomtest(c, n, control, alternative="greater").pvalue <= alpha
            ),
            None,
        )
        if crit is not None and stats.binom.sf(crit - 1, n, true_rate) >= power:
            return n
    raise AssertionError("not found")


@pytest.mark.parametrize("true_rate,control", [(0.3, 0.05), (0.2, 0.02), (0.5, 0.2)])
def test_trials_needed_nonzero_control_matches_exact_test(true_rate: float, control: float) -> None:
    n = trials_needed(true_rate, power=0.8, alpha=0.05, control_rate=control)
    assert n == _brute_force_trials(true_rate, control, 0.8, 0.05)


def _exact_power(n: int, true_rate: float, control: float, alpha: float) -> float:
    c = int(stats.binom.ppf(1 - alpha, n, control))  # start near the critical count
    c = max(c - 3, 0)
    while stats.binomtest(c, n, control, alternative="greater").pvalue > alpha:
        c += 1
    return float(stats.binom.sf(c - 1, n, true_rate))


def test_trials_needed_large_n_beyond_first_search_chunk() -> None:
    # 2% vs a 1% control at power 0.9: the answer lies past the first 1,024-trial block
    n = trials_needed(0.02, power=0.9, control_rate=0.01)
    assert n == 1235
    assert _exact_power(n, 0.02, 0.01, 0.05) >= 0.9
    assert all(_exact_power(m, 0.02, 0.01, 0.05) < 0.9 for m in range(n - 40, n))


def test_trials_needed_more_with_control_than_without() -> None:
    assert trials_needed(0.2, control_rate=0.05) > trials_needed(0.2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"true_rate": 0.0},
        {"true_rate": 0.05, "control_rate": 0.05},
        {"true_rate": 0.05, "control_rate": 0.1},
        {"true_rate": 0.1, "power": 1.0},
        {"true_rate": 1e-6, "max_n": 1000},
    ],
)
def test_trials_needed_rejects_undetectable(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        trials_needed(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- net detection

# Newcombe (1998), Stat Med 17:873, Table II, method 10 (hybrid score, no continuity correction).
NEWCOMBE = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0000)),
    ((10, 10, 0, 10), (0.6075, 1.0000)),
]


@pytest.mark.parametrize("counts,expected", NEWCOMBE)
def test_net_detection_matches_newcombe_published(
    counts: tuple[int, int, int, int], expected: tuple[float, float]
) -> None:
    nd = net_detection(*counts)
    assert nd.net == pytest.approx(counts[0] / counts[1] - counts[2] / counts[3])
    assert nd.lo == pytest.approx(expected[0], abs=6e-5)
    assert nd.hi == pytest.approx(expected[1], abs=6e-5)


def test_net_detection_carries_arm_rates_and_formats() -> None:
    nd = net_detection(3, 20, 0, 40)
    assert nd.hit == rate_ci(3, 20) and nd.fp == rate_ci(0, 40)
    # Wilson 3/20 = [0.0524, 0.3604], Wilson 0/40 = [0, 0.0876]:
    # lo = 0.15 - sqrt(0.0976^2 + 0.0876^2) = 0.0188, hi = 0.15 + sqrt(0.2104^2 + 0) = 0.3604
    assert nd.lo == pytest.approx(0.0188, abs=1e-4) and nd.hi == pytest.approx(0.3604, abs=1e-4)
    assert nd.format().startswith("net +15.0% [")
    assert "hits 3/20 15.0% [3.2%, 37.9%]" in nd.format()


def test_net_detection_negative_and_requires_both_arms() -> None:
    nd = net_detection(1, 20, 5, 20)
    assert nd.net == pytest.approx(-0.2) and nd.lo < nd.net < nd.hi
    with pytest.raises(ValueError):
        net_detection(0, 0, 0, 10)
    with pytest.raises(ValueError):
        net_detection(1, 10, 0, 0)


# ----------------------------------------------------------------------------- refusals


def test_refusal_excluded_removes_refusals_from_denominator() -> None:
    ci = refusal_excluded(5, 20, refusals=10)
    assert ci == rate_ci(5, 10)
    assert ci.rate == 0.5
    assert refusal_excluded(0, 10, 10).format() == "0/0 —"


def test_refusal_excluded_rejects_overlapping_counts() -> None:
    with pytest.raises(ValueError):
        refusal_excluded(6, 10, refusals=5)
    with pytest.raises(ValueError):
        refusal_excluded(1, 10, refusals=-1)


# ----------------------------------------------------------------------------- agreement


def test_kappa_hand_computed_small() -> None:
    a = [True, True, True, True, False, False, False, False, False, False]
    b = [True, True, True, False, False, False, False, False, False, True]
    # p_o = 0.8; p_a = p_b = 0.4; p_e = 0.16 + 0.36 = 0.52; kappa = 0.28/0.48 = 7/12
    assert raw_agreement(a, b) == pytest.approx(0.8)
    assert cohen_kappa(a, b) == pytest.approx(7 / 12)


def test_kappa_wikipedia_example() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o 0.7, p_e 0.5, kappa 0.4
    a = [True] * 25 + [False] * 25
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(np.array(a, dtype=int), np.array(b, dtype=int)) == pytest.approx(0.4)


def test_kappa_perfect_and_opposite() -> None:
    assert cohen_kappa([True, False, True], [True, False, True]) == pytest.approx(1.0)
    assert cohen_kappa([True, False], [False, True]) == pytest.approx(-1.0)


def test_kappa_one_rater_constant_is_zero() -> None:
    # a always no, b mixed: p_o = p_e = 0.75 -> kappa 0 (defined)
    assert cohen_kappa([False] * 4, [False, False, False, True]) == pytest.approx(0.0)


def test_kappa_both_constant_same_is_nan_with_warning() -> None:
    with pytest.warns(RuntimeWarning, match="undefined"):
        k = cohen_kappa([False] * 5, [False] * 5)
    assert math.isnan(k)
    assert raw_agreement([False] * 5, [False] * 5) == 1.0


def test_kappa_input_validation() -> None:
    with pytest.raises(ValueError):
        cohen_kappa([True], [True, False])
    with pytest.raises(ValueError):
        cohen_kappa([], [])
    with pytest.raises(ValueError):
        cohen_kappa([0, 2], [0, 1])


def test_kappa_bootstrap_deterministic_and_brackets_point() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(200) < 0.4
    b = np.where(rng.random(200) < 0.85, a, ~a)
    ci = kappa_bootstrap_ci(a, b, n_boot=1000, seed=3)
    assert isinstance(ci, KappaCI)
    assert ci.kappa == pytest.approx(cohen_kappa(a, b))
    assert ci.lo < ci.kappa < ci.hi
    assert ci == kappa_bootstrap_ci(a, b, n_boot=1000, seed=3)
    assert ci != kappa_bootstrap_ci(a, b, n_boot=1000, seed=4)
    # percentile interval recomputed by hand from the same resamples
    idx = np.random.default_rng(3).integers(0, 200, size=(1000, 200))
    boots = np.array([cohen_kappa(a[i], b[i]) for i in idx])
    assert ci.lo == pytest.approx(np.quantile(boots, 0.025))
    assert ci.hi == pytest.approx(np.quantile(boots, 0.975))


def test_kappa_bootstrap_counts_undefined_resamples() -> None:
    # 19 agreeing "no" + 1 disagreement: some resamples miss the disagreement -> both constant
    a = [False] * 20
    b = [False] * 19 + [True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no per-resample warnings leak out
        ci = kappa_bootstrap_ci(a, b, n_boot=500, seed=0)
    assert ci.kappa == pytest.approx(0.0)
    assert 0 < ci.n_undefined < 500  # P(miss) = 0.95^20 = 0.36
    # the interval comes from the defined resamples only (kappa is 0 or negative on them)
    assert math.isfinite(ci.lo) and math.isfinite(ci.hi) and ci.lo <= 0.0 <= ci.hi


def test_kappa_bootstrap_undefined_point() -> None:
    with pytest.warns(RuntimeWarning):
        ci = kappa_bootstrap_ci([True] * 4, [True] * 4)
    assert math.isnan(ci.kappa) and math.isnan(ci.lo) and math.isnan(ci.hi)
    assert "undefined" in ci.format()


# ----------------------------------------------------------------------------- pre-registration


def test_preregistered_threshold_inclusive_boundaries() -> None:
    assert preregistered_test(0.5, 0.5, 0.2)
    assert preregistered_test(10 / 20, 10 / 20, 4 / 20)
    assert not preregistered_test(0.49, 0.9, 0.9)
    assert not preregistered_test(0.9, 0.49, 0.9)
    assert not preregistered_test(0.9, 0.9, 0.19)
    assert not preregistered_test(math.nan, 0.9, 0.9)


def test_preregistered_merrill_cells_fail() -> None:
    # Layer 84 all_caps: 0.25/0.65 at 10 and 0.75/0.25 at 12 — neither cell passes.
    assert not preregistered_test(0.25, 0.65, 0.0)
    assert not preregistered_test(0.75, 0.25, 0.2)


def test_rate_ci_returns_rateci() -> None:
    assert isinstance(rate_ci(1, 3), RateCI)

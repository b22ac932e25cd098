"""Self-prediction scoring (stats/self_prediction.py): exact CIs, exact McNemar, mode baseline."""

from __future__ import annotations

import math

from scipy import stats

from remote_introspect.stats.self_prediction import mode_values, paired_difference, score_target


def test_paired_difference_is_exact_mcnemar_with_its_conditional_interval() -> None:
    s = [True] * 12 + [False] * 3 + [True] * 5 + [False] * 10
    o = [False] * 12 + [True] * 3 + [True] * 5 + [False] * 10
    d = paired_difference(s, o)
    assert (d.n, d.b, d.c) == (30, 12, 3)
    assert math.isclose(d.diff, 9 / 30)
    assert math.isclose(d.p_value, stats.binomtest(12, 15, 0.5).pvalue)
    ci = stats.binomtest(12, 15).proportion_ci(method="exact")
    assert math.isclose(d.lo, 15 / 30 * (2 * ci.low - 1)) and math.isclose(d.hi, 15 / 30 * (2 * ci.high - 1))
    # The interval excludes 0 exactly when the exact test rejects at 5% (here both do).
    assert d.excludes_zero() and d.p_value < 0.05


def test_no_discordant_pairs_is_zero_with_p_one() -> None:
    d = paired_difference([True, False], [True, False])
    assert (d.diff, d.lo, d.hi, d.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not d.excludes_zero()


def test_mode_ties_break_alphabetically() -> None:
    truth = {("t", "p", "1"): "no", ("t", "p", "2"): "yes", ("t", "q", "1"): "b", ("t", "q", "2"): "b"}
    assert mode_values(truth) == {("t", "p"): "no", ("t", "q"): "b"}


def test_missing_predictions_are_left_out_never_counted_wrong() -> None:
    truth = {("t", "p", str(i)): "yes" for i in range(10)}
    truth[("t", "p", "x")] = None  # an answer without a value for the property: left out
    a = {u: "yes" for u in truth}
    b = {("t", "p", str(i)): "yes" for i in range(4)}  # B's other six trials failed: absent
    b[("t", "p", "9")] = None  # present but unparseable: wrong
    s = score_target("A", truth, {"A": a, "B": b})
    assert (s.units, s.undefined) == (10, 1)
    assert (s.accuracy["A"].k, s.accuracy["A"].n) == (10, 10)
    assert (s.accuracy["B"].k, s.accuracy["B"].n) == (4, 5) and s.unparsed["B"] == 1
    assert s.best_cross == "B" and s.self_minus_best_cross is not None
    assert s.self_minus_best_cross.n == 5  # paired on the units both answered
    assert (s.mode.k, s.mode.n) == (10, 10) and s.self_minus_mode.diff == 0.0

"""Tests for remote_introspect.stats.crossover on synthetic curves with hand-computed answers."""

from __future__ import annotations

import polars as pl
import pytest

from remote_introspect.stats.crossover import (
    CurvePoint,
    aggregate_points,
    dense_grid,
    find_crossover,
    geometric_grid,
)

MERRILL = [(10.0, 0.25, 0.65), (12.0, 0.75, 0.25)]


def _trials(strength: float, n: int, n_ident: int, n_coh: int) -> list[dict[str, object]]:
    return [{"strength": strength, "identifies": i < n_ident, "coherent": i < n_coh} for i in range(n)]


# ----------------------------------------------------------------------------- rise-through


def test_merrill_layer84_all_caps() -> None:
    # d(10) = 0.25 - 0.65 = -0.40, d(12) = 0.75 - 0.25 = +0.50
    # s* = 10 + 2 * 0.40 / (0.50 + 0.40) = 10 + 0.8/0.9 = 10.888...
    r = find_crossover(MERRILL)
    assert r.found
    assert r.strength == pytest.approx(10 + 0.8 / 0.9)
    assert r.bracket == (10.0, 12.0)
    assert r.closest_strength == 10.0 and r.closest_gap == pytest.approx(0.4)
    assert r.description == "identification rises through coherence at s≈10.89 (between 10 and 12)"


def test_merrill_from_per_trial_dataframe() -> None:
    # 20 trials per strength: 5/20 identify & 13/20 coherent at 10; 15/20 & 5/20 at 12.
    # Rows shuffled (12 first) to check sorting of a DataFrame too.
    df = pl.DataFrame(_trials(12.0, 20, 15, 5) + _trials(10.0, 20, 5, 13))
    pts = aggregate_points(df)
    assert pts == [CurvePoint(10.0, 0.25, 0.65, 20), CurvePoint(12.0, 0.75, 0.25, 20)]
    assert find_crossover(df).strength == pytest.approx(10 + 0.8 / 0.9)


def test_dataframe_nulls_ignored_and_missing_column_rejected() -> None:
    df = pl.DataFrame(
        {"strength": [1.0, 1.0, 1.0], "identifies": [True, None, False], "coherent": [True, True, None]},
        schema={"strength": pl.Float64, "identifies": pl.Boolean, "coherent": pl.Boolean},
    )
    (p,) = aggregate_points(df)
    assert (p.identifies, p.coherent, p.n) == (0.5, 1.0, 3)
    with pytest.raises(ValueError, match="coherent"):
        aggregate_points(pl.DataFrame({"strength": [1.0], "identifies": [True]}))


def test_monotone_crossing_in_the_middle() -> None:
    pts = [(0, 0.0, 1.0), (2, 0.2, 0.8), (4, 0.6, 0.4), (6, 0.9, 0.1)]
    # d = -1, -0.6, +0.2, +0.8: rises between 2 and 4 at 2 + 2 * 0.6/0.8 = 3.5
    r = find_crossover(pts)
    assert r.found and r.strength == pytest.approx(3.5) and r.bracket == (2.0, 4.0)
    assert r.n_rise_throughs == 1
    assert r.closest_strength == 4.0 and r.closest_gap == pytest.approx(0.2)


def test_noisy_takes_first_rise_through() -> None:
    pts = [(1, 0.2, 0.7), (2, 0.6, 0.5), (3, 0.4, 0.6), (4, 0.8, 0.4)]
    # d = -0.5, +0.1, -0.2, +0.4: first rise 1->2 at 1 + 0.5/0.6; second 3->4 ignored
    r = find_crossover(pts)
    assert r.strength == pytest.approx(1 + 0.5 / 0.6)
    assert r.bracket == (1.0, 2.0)
    assert r.n_rise_throughs == 2
    assert "first of 2 rise-throughs" in r.description


def test_never_crossing_reports_closest() -> None:
    pts = [(5, 0.0, 0.9), (10, 0.1, 0.8), (12, 0.3, 0.4), (15, 0.2, 0.5)]
    r = find_crossover(pts)
    assert not r.found and r.strength is None and r.bracket is None
    assert r.closest_strength == 12.0 and r.closest_gap == pytest.approx(0.1)
    assert r.description.endswith("closest at s=12 (|Δ|=0.10)")
    assert r.description.startswith("no crossover (identification < coherence up to the highest")


def test_closest_tie_goes_to_lower_strength() -> None:
    r = find_crossover([(2, 0.5, 0.75), (1, 0.25, 0.5)])  # |d| = 0.25 at both
    assert not r.found and r.closest_strength == 1.0


def test_already_above_at_lowest_strength_is_not_a_rise_through() -> None:
    r = find_crossover([(1, 0.6, 0.5), (2, 0.8, 0.3)])
    assert not r.found and "already at the lowest strength s=1" in r.description
    # curves meeting exactly at the lowest point: no rise observed either
    assert not find_crossover([(1, 0.5, 0.5), (2, 0.8, 0.3)]).found


def test_only_falling_through_is_not_found() -> None:
    r = find_crossover([(1, 0.6, 0.4), (2, 0.2, 0.8)])
    assert not r.found and "only falls through" in r.description
    assert r.n_rise_throughs == 0


def test_identification_zero_everywhere_is_not_a_crossing() -> None:
    """A merrill cache: identification 0 at every strength, coherence falling to 0 at s=18; d
    reaches 0 there only because both curves are at 0."""
    pts = [(2, 0.0, 1.0), (6, 0.0, 0.8), (12, 0.0, 0.3), (18, 0.0, 0.0), (24, 0.0, 0.0)]
    r = find_crossover(pts)
    assert not r.found and r.strength is None and r.n_rise_throughs == 0
    assert "rises through" not in r.description and "both curves at 0" in r.description
    # identification > 0 where the curves meet: a crossing
    r = find_crossover([(12, 0.0, 0.3), (18, 0.2, 0.1)])
    assert r.found and r.strength == pytest.approx(12 + 6 * 0.3 / 0.4)
    # meeting at a grid point where identification is 0 and coherence 0, then identification rises
    r = find_crossover([(12, 0.0, 0.3), (18, 0.0, 0.0), (24, 0.4, 0.0)])
    assert not r.found or r.strength != 18.0


def test_crossing_exactly_at_grid_point() -> None:
    pts = [(10, 0.2, 0.6), (12, 0.5, 0.5), (14, 0.9, 0.2)]
    # d = -0.4, 0, +0.7: d reaches >= 0 at 12 exactly
    r = find_crossover(pts)
    assert r.found and r.strength == 12.0 and r.bracket == (10.0, 12.0)
    assert r.closest_strength == 12.0 and r.closest_gap == 0.0
    assert "meet at the grid point" in r.description


def test_crossing_between_first_two_points() -> None:
    r = find_crossover([(1, 0.1, 0.5), (3, 0.7, 0.3), (5, 0.9, 0.1)])
    # d = -0.4, +0.4 -> midpoint 2.0
    assert r.strength == pytest.approx(2.0) and r.bracket == (1.0, 3.0)


def test_crossing_between_last_two_points() -> None:
    r = find_crossover([(1, 0.0, 0.9), (2, 0.1, 0.8), (4, 0.3, 0.6), (8, 0.9, 0.5)])
    # d(4) = -0.3, d(8) = +0.4 -> 4 + 4 * 0.3/0.7
    assert r.strength == pytest.approx(4 + 1.2 / 0.7) and r.bracket == (4.0, 8.0)


def test_single_point() -> None:
    r = find_crossover([(7, 0.3, 0.6)])
    assert not r.found and r.closest_strength == 7.0 and r.closest_gap == pytest.approx(0.3)
    assert "only one strength" in r.description


def test_unsorted_input_same_as_sorted() -> None:
    pts = [(6, 0.9, 0.1), (0, 0.0, 1.0), (4, 0.6, 0.4), (2, 0.2, 0.8)]
    r = find_crossover(pts)
    assert r.strength == pytest.approx(3.5)
    assert [p.strength for p in r.points] == [0.0, 2.0, 4.0, 6.0]


def test_duplicate_strengths_aggregated() -> None:
    # Without counts: unweighted mean. At 12: ident (0.7 + 0.8)/2 = 0.75, coh (0.2 + 0.3)/2 = 0.25
    pts = [(10, 0.25, 0.65), (12, 0.7, 0.2), (12, 0.8, 0.3)]
    r = find_crossover(pts)
    assert len(r.points) == 2 and r.points[1].identifies == pytest.approx(0.75)
    assert r.strength == pytest.approx(10 + 0.8 / 0.9)
    # With counts: n-weighted. At 12: ident (10*0.9 + 30*0.5)/40 = 0.6, coh (10*0.1 + 30*0.3)/40 = 0.25
    weighted = aggregate_points([(12, 0.9, 0.1, 10), (12, 0.5, 0.3, 30)])
    assert weighted == [CurvePoint(12.0, pytest.approx(0.6), pytest.approx(0.25), 40)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [(1, 1.2, 0.5)],
        [(1, 0.5, float("nan"))],
        [(float("inf"), 0.5, 0.5)],
        [(1, 0.5)],
        [(1, 0.5, 0.5, 0)],
    ],
)
def test_bad_input_rejected(bad: list[tuple[float, ...]]) -> None:
    with pytest.raises(ValueError):
        find_crossover(bad)  # type: ignore[arg-type]


def test_bad_mode_rejected() -> None:
    with pytest.raises(ValueError):
        find_crossover(MERRILL, mode="sideways")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- threshold mode


def test_threshold_mode_first_joint_pass() -> None:
    pts = [(1, 0.1, 0.9), (2, 0.4, 0.8), (3, 0.5, 0.5), (4, 0.7, 0.6), (5, 0.9, 0.1)]
    r = find_crossover(pts, mode="threshold")
    assert r.found and r.strength == 3.0 and r.bracket == (2.0, 3.0)  # inclusive >= 0.5
    r2 = find_crossover(pts, mode="threshold", threshold=0.6)
    assert r2.strength == 4.0 and r2.bracket == (3.0, 4.0)


def test_threshold_mode_merrill_never_passes() -> None:
    r = find_crossover(MERRILL, mode="threshold")
    assert not r.found and r.strength is None
    assert r.closest_strength == 10.0


def test_threshold_mode_passing_at_lowest_strength() -> None:
    r = find_crossover([(2, 0.6, 0.9), (4, 0.9, 0.2)], mode="threshold")
    assert r.found and r.strength == 2.0 and r.bracket == (2.0, 2.0)
    assert dense_grid(r, [2, 4], n_points=5) == [2.0, 2.5, 3.0, 3.5, 4.0]


# ----------------------------------------------------------------------------- grids


def test_dense_grid_merrill_follow_up() -> None:
    r = find_crossover(MERRILL)
    assert dense_grid(r, [5, 10, 12, 15, 18], n_points=5) == [10.0, 10.5, 11.0, 11.5, 12.0]


def test_dense_grid_default_ten_points() -> None:
    g = dense_grid(find_crossover(MERRILL), [5, 10, 12, 15, 18])
    assert len(g) == 10 and g == sorted(g)
    assert g[0] == 10.0 and g[-1] == 12.0
    assert g[1] == 10.22 and g[4] == 10.89  # step 2/9 rounded to 2 decimals


def test_dense_grid_not_found_spans_neighbours_of_closest() -> None:
    pts = [(5, 0.0, 0.9), (10, 0.1, 0.8), (12, 0.3, 0.4), (15, 0.2, 0.5), (18, 0.2, 0.6)]
    r = find_crossover(pts)
    assert r.closest_strength == 12.0
    assert dense_grid(r, [5, 10, 12, 15, 18], n_points=11) == [
        10.0, 10.5, 11.0, 11.5, 12.0, 12.5, 13.0, 13.5, 14.0, 14.5, 15.0
    ]  # fmt: skip


def test_dense_grid_not_found_at_grid_end_spans_one_side() -> None:
    r = find_crossover([(1, 0.0, 0.9), (2, 0.1, 0.8), (4, 0.3, 0.35)])
    assert r.closest_strength == 4.0
    assert dense_grid(r, [1, 2, 4], n_points=5) == [2.0, 2.5, 3.0, 3.5, 4.0]


def test_dense_grid_validation() -> None:
    single = find_crossover([(7, 0.3, 0.6)])
    with pytest.raises(ValueError):
        dense_grid(single, [7])
    with pytest.raises(ValueError):
        dense_grid(find_crossover(MERRILL), [10, 12], n_points=1)


def test_geometric_grid() -> None:
    assert geometric_grid(1, 16, 5) == [1.0, 2.0, 4.0, 8.0, 16.0]
    g = geometric_grid(0.5, 16, 6)  # ratio 2: 0.5, 1, 2, 4, 8, 16
    assert g == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    g3 = geometric_grid(1, 10, 4)  # 1, 2.154, 4.642, 10 -> 3 significant figures
    assert g3 == [1.0, 2.15, 4.64, 10.0]
    assert geometric_grid(3, 3, 5) == [3.0] and geometric_grid(2, 8, 1) == [2.0]
    with pytest.raises(ValueError):
        geometric_grid(0, 8, 4)
    with pytest.raises(ValueError):
        geometric_grid(8, 2, 4)

"""Where identification rises through coherence as injection strength grows, and the grids to
probe it (PROTOCOLS.md §2: Merrill's curves cross between 10 and 12; follow-up grid 10..12 by 0.5).

Pure functions of graded trials; no I/O. Input is either

- a polars DataFrame with one row per graded trial and columns `strength` (number),
  `identifies` and `coherent` (booleans; nulls are ignored in the rates) — rows are aggregated
  per strength here; filter to one (model, layer, concept, prompt) cell before calling; or
- a sequence of per-strength summaries `(strength, identifies_rate, coherent_rate)` or
  `(strength, identifies_rate, coherent_rate, n_trials)`.

Order does not matter (points are sorted by strength); duplicate strengths are merged into one
point whose rates are the trial-weighted mean (weight 1 per summary without `n_trials`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

__all__ = [
    "CrossoverResult",
    "CurvePoint",
    "aggregate_points",
    "dense_grid",
    "find_crossover",
    "geometric_grid",
]

Mode = Literal["rise-through", "threshold"]
Summary = tuple[float, float, float] | tuple[float, float, float, int]
PointsInput = pl.DataFrame | Sequence[Summary]


@dataclass(frozen=True)
class CurvePoint:
    """One strength's aggregated rates. `n` = trials behind it (None for rates given without counts)."""

    strength: float
    identifies: float
    coherent: float
    n: int | None = None

    @property
    def gap(self) -> float:
        """d = identifies − coherent (negative below the crossover, >= 0 at or above it)."""
        return self.identifies - self.coherent


@dataclass(frozen=True)
class CrossoverResult:
    """Outcome of `find_crossover`.

    - `found`: the criterion of `mode` was met.
    - `strength`: the crossover strength (rise-through: interpolated; threshold: a grid strength);
      None when not found.
    - `bracket`: the two grid strengths around the crossover (lo, hi); for "threshold" mode,
      (previous grid strength, passing strength), or (s, s) when the lowest strength already passes;
      None when not found.
    - `closest_strength`, `closest_gap`: the grid strength where |identifies − coherent| is smallest
      (ties → the lower strength) and that |Δ|; always filled, used to aim a grid when not found.
    - `n_rise_throughs`: how many times d = identifies − coherent goes from < 0 to >= 0 between
      adjacent strengths with identification > 0 there (more than one = noisy curves; the first
      is reported).
    - `description`: one line for reports.
    - `points`: the sorted, aggregated curve the result was computed from.
    """

    found: bool
    strength: float | None
    bracket: tuple[float, float] | None
    closest_strength: float
    closest_gap: float
    description: str
    mode: Mode
    threshold: float
    n_rise_throughs: int
    points: tuple[CurvePoint, ...]


def _fmt(x: float) -> str:
    """A strength for humans: at most two decimals, no trailing zeros (11.0 -> "11", 10.5 -> "10.5")."""
    return f"{round(x, 2):g}"


def _check_rate(value: float, what: str, strength: float) -> float:
    v = float(value)
    if not (0.0 <= v <= 1.0):  # also rejects nan
        raise ValueError(f"{what} rate at strength {strength:g} must be in [0, 1], got {value!r}")
    return v


def aggregate_points(points: PointsInput) -> list[CurvePoint]:
    """Sort by strength and merge duplicates (see the module docstring for accepted inputs).

    DataFrame: per strength, identifies/coherent rates = mean of the booleans (nulls ignored) and
    n = number of rows. Summaries: duplicates merged by an n-weighted mean of the rates.
    Raises `ValueError` on empty input, non-finite strengths, rates outside [0, 1] or a strength
    whose rate cannot be computed (all nulls).
    """
    rows: list[tuple[float, float, float, int | None]] = []
    if isinstance(points, pl.DataFrame):
        missing = {"strength", "identifies", "coherent"} - set(points.columns)
        if missing:
            raise ValueError(f"trial DataFrame lacks column(s) {sorted(missing)}")
        agg = (
            points.group_by("strength")
            .agg(
                pl.col("identifies").cast(pl.Float64).mean().alias("identifies"),
                pl.col("coherent").cast(pl.Float64).mean().alias("coherent"),
                pl.len().alias("n"),
            )
            .sort("strength")
        )
        for s, ident, coh, n in agg.select("strength", "identifies", "coherent", "n").iter_rows():
            if s is None:
                raise ValueError("trial DataFrame has rows with a null strength")
            if ident is None or coh is None:
                raise ValueError(f"no graded identifies/coherent values at strength {s:g}")
            rows.append((float(s), float(ident), float(coh), int(n)))
    else:
        for item in points:
            if len(item) not in (3, 4):
                raise ValueError(f"summary must be (strength, identifies, coherent[, n]), got {item!r}")
            n = int(item[3]) if len(item) == 4 else None  # type: ignore[misc]
            if n is not None and n <= 0:
                raise ValueError(f"summary at strength {item[0]} has n={n}; need n >= 1")
            rows.append((float(item[0]), float(item[1]), float(item[2]), n))
    if not rows:
        raise ValueError("no points: need at least one strength")

    merged: dict[float, list[tuple[float, float, float, int | None]]] = {}
    for row in rows:
        s = row[0]
        if not math.isfinite(s):
            raise ValueError(f"strength must be finite, got {s}")
        _check_rate(row[1], "identifies", s)
        _check_rate(row[2], "coherent", s)
        merged.setdefault(s, []).append(row)

    out: list[CurvePoint] = []
    for s in sorted(merged):
        group = merged[s]
        weights = [r[3] if r[3] is not None else 1 for r in group]
        total = sum(weights)
        ident = sum(w * r[1] for w, r in zip(weights, group, strict=True)) / total
        coh = sum(w * r[2] for w, r in zip(weights, group, strict=True)) / total
        has_n = all(r[3] is not None for r in group)
        out.append(CurvePoint(s, ident, coh, total if has_n else None))
    return out


def _closest(curve: Sequence[CurvePoint]) -> tuple[float, float]:
    best = min(curve, key=lambda p: (abs(p.gap), p.strength))
    return best.strength, abs(best.gap)


def find_crossover(
    points: PointsInput, mode: Mode = "rise-through", threshold: float = 0.5
) -> CrossoverResult:
    """Find where identification overtakes coherence as strength increases.

    mode "rise-through" (default): with d(s) = identifies(s) − coherent(s) on the sorted grid, the
    crossover is the first adjacent pair (s_i, s_i+1) with d_i < 0 and d_i+1 >= 0, located by linear
    interpolation of d: s* = s_i + (s_i+1 − s_i) · (−d_i) / (d_i+1 − d_i). If d_i+1 = 0 that is
    s_i+1 itself (the curves meet at a grid point). With several rise-throughs (noisy curves) the
    first, lowest-strength one is taken and `n_rise_throughs` records how many there were. A curve
    that already has d >= 0 at its lowest strength, or never reaches d >= 0, has no crossover; nor
    has a pair where the interpolated identification at s* is 0 (d reaches 0 only because
    coherence falls to 0: both curves at 0 is not a crossing).

    mode "threshold": the lowest grid strength where identifies >= threshold AND
    coherent >= threshold (both inclusive; no interpolation). `threshold` is unused in
    "rise-through" mode.

    When not found, `closest_strength` (smallest |d|) says where to look.
    """
    if mode not in ("rise-through", "threshold"):
        raise ValueError(f"mode must be 'rise-through' or 'threshold', got {mode!r}")
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    curve = aggregate_points(points)
    closest_s, closest_gap = _closest(curve)
    sign_changes = [i for i in range(len(curve) - 1) if curve[i].gap < 0.0 <= curve[i + 1].gap]
    # A crossing needs identification > 0 where d reaches 0: d rising to 0 only because coherence
    # falls to 0 while identification stays 0 (both curves at 0) crosses nothing.
    rises = [i for i in sign_changes if _identifies_at_crossing(curve[i], curve[i + 1]) > 0.0]

    def result(
        found: bool, strength: float | None, bracket: tuple[float, float] | None, text: str
    ) -> CrossoverResult:
        return CrossoverResult(
            found=found,
            strength=strength,
            bracket=bracket,
            closest_strength=closest_s,
            closest_gap=closest_gap,
            description=text,
            mode=mode,
            threshold=threshold,
            n_rise_throughs=len(rises),
            points=tuple(curve),
        )

    not_found = f"closest at s={_fmt(closest_s)} (|Δ|={closest_gap:.2f})"

    if mode == "threshold":
        for i, p in enumerate(curve):
            if p.identifies >= threshold and p.coherent >= threshold:
                lo = curve[i - 1].strength if i > 0 else p.strength
                where = f"(between {_fmt(lo)} and {_fmt(p.strength)})" if i > 0 else "(the lowest strength)"
                text = (
                    f"identification and coherence both >= {threshold:g} first at s={_fmt(p.strength)} "
                    f"{where}: identifies {p.identifies:.2f}, coherent {p.coherent:.2f}"
                )
                return result(True, p.strength, (lo, p.strength), text)
        return result(
            False,
            None,
            None,
            f"no strength with identification and coherence both >= {threshold:g}; {not_found}",
        )

    if rises:
        i = rises[0]
        a, b = curve[i], curve[i + 1]
        if b.gap == 0.0:
            s_star = b.strength
        else:
            s_star = a.strength + (b.strength - a.strength) * (-a.gap) / (b.gap - a.gap)
        at_grid = " (curves meet at the grid point)" if b.gap == 0.0 else ""
        noisy = f"; first of {len(rises)} rise-throughs" if len(rises) > 1 else ""
        text = (
            f"identification rises through coherence at s≈{_fmt(s_star)} "
            f"(between {_fmt(a.strength)} and {_fmt(b.strength)}){at_grid}{noisy}"
        )
        return result(True, s_star, (a.strength, b.strength), text)

    if len(curve) == 1:
        why = "only one strength"
    elif all(p.gap >= 0.0 for p in curve):
        why = f"identification >= coherence already at the lowest strength s={_fmt(curve[0].strength)}"
    elif all(p.gap < 0.0 for p in curve):
        why = f"identification < coherence up to the highest strength s={_fmt(curve[-1].strength)}"
    elif sign_changes:
        why = "identification is 0 where it reaches coherence: both curves at 0 is not a crossing"
    else:
        why = "identification only falls through coherence"
    return result(False, None, None, f"no crossover ({why}); {not_found}")


def _identifies_at_crossing(a: CurvePoint, b: CurvePoint) -> float:
    """Identification rate (linearly interpolated) where d = identifies − coherent reaches 0
    between a (d < 0) and b (d >= 0)."""
    t = 1.0 if b.gap == 0.0 else (-a.gap) / (b.gap - a.gap)
    return a.identifies + t * (b.identifies - a.identifies)


def _round_for_step(x: float, step: float) -> float:
    """Round x to two significant figures of the grid step (step 0.5 -> 0.01; step 2 -> 0.1)."""
    if step <= 0.0:
        return x
    decimals = max(0, 1 - math.floor(math.log10(step)))
    return round(x, decimals)


def _linspace(lo: float, hi: float, n_points: int) -> list[float]:
    if hi == lo:
        return [float(lo)]
    step = (hi - lo) / (n_points - 1)
    grid = [float(v) for v in np.linspace(lo, hi, n_points)]
    inner = [_round_for_step(v, step) for v in grid[1:-1]]
    values = [float(lo), *inner, float(hi)]
    return sorted(set(values))


def dense_grid(result: CrossoverResult, coarse_strengths: Sequence[float], n_points: int = 10) -> list[float]:
    """An evenly spaced follow-up grid of `n_points` strengths around the crossover.

    - Found with bracket lo < hi: from lo to hi inclusive (the bracketing coarse strengths).
      Merrill's bracket (10, 12) with n_points=5 gives [10, 10.5, 11, 11.5, 12].
    - Otherwise (not found, or a degenerate threshold bracket): centred on the crossover strength
      or else `closest_strength`, spanning from its lower to its upper neighbour in
      `coarse_strengths` (only one side at either end of the coarse grid).
    Interior points are rounded to two significant figures of the step; the coarse endpoints are
    kept exactly. The result is sorted and deduplicated. Needs >= 2 distinct coarse strengths
    unless the bracket is already non-degenerate.
    """
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    if result.found and result.bracket is not None and result.bracket[0] < result.bracket[1]:
        return _linspace(result.bracket[0], result.bracket[1], n_points)

    coarse = sorted({float(s) for s in coarse_strengths})
    if len(coarse) < 2:
        raise ValueError("need at least two distinct coarse strengths to span a dense grid")
    center = result.strength if (result.found and result.strength is not None) else result.closest_strength
    below = [s for s in coarse if s < center]
    above = [s for s in coarse if s > center]
    lo = below[-1] if below else center
    hi = above[0] if above else center
    if lo == hi:  # center outside/at an isolated point of the coarse grid: cannot happen with >= 2 points
        raise ValueError(f"cannot span a grid around s={center:g} with coarse strengths {coarse}")
    return _linspace(lo, hi, n_points)


def geometric_grid(lo: float, hi: float, n: int) -> list[float]:
    """n strengths spaced geometrically from lo to hi inclusive: lo · (hi/lo)^(i/(n−1)).

    For `--strengths auto`. Interior values are rounded to three significant figures (endpoints
    exact), then sorted and deduplicated. geometric_grid(1, 16, 5) == [1, 2, 4, 8, 16].
    Needs 0 < lo <= hi and n >= 1 (n = 1 or lo = hi gives [lo]).
    """
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0.0 or hi < lo:
        raise ValueError(f"need 0 < lo <= hi, got lo={lo}, hi={hi}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1 or lo == hi:
        return [lo]
    grid = [float(v) for v in np.geomspace(lo, hi, n)]
    inner = [float(f"{v:.3g}") for v in grid[1:-1]]
    return sorted({lo, *inner, hi})

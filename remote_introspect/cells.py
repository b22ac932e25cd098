"""The one definition of an experiment's cells and what is computed per cell.

A cell is a group of injected (`concept`) trials on one prompt: layer × strength pooled over
concepts (`cells = "pooled"`, Lindsey), or layer × concept × strength (`cells = "concept"`,
Merrill's pre-registered test is per vector × magnitude). Per cell: n and the count of every
criterion over the usable rows of the results frame (`results_frame.load_frame`), Merrill's
pre-registered test, and the identification/coherence crossover over strength (with the
experiment's `crossover_mode`). The run's stdout summary, `report` and the dense grid all use these
functions, so they cannot disagree.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from .analysis import preregistered_test
from .crossover import CrossoverResult, find_crossover
from .results_frame import CRITERIA

POOLED = ["layer", "strength"]
PER_CONCEPT = ["layer", "concept", "strength"]


def cell_keys(spec: dict[str, Any] | None) -> list[str]:
    """How the experiment's cells are keyed: per concept when its spec says `cells = "concept"`
    (the merrill-405b protocol; experiments stored before the field existed: by their protocol),
    else pooled over concepts."""
    spec = spec or {}
    cells = spec.get("cells") or ("concept" if spec.get("protocol") == "merrill-405b" else "pooled")
    return PER_CONCEPT if cells == "concept" else POOLED


def crossover_mode(spec: dict[str, Any] | None) -> str:
    return str((spec or {}).get("crossover_mode") or "rise-through")


def _sum(expr: pl.Expr, name: str) -> pl.Expr:
    return expr.fill_null(False).cast(pl.Int64).sum().alias(name)


def cell_rates(usable: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Per group of injected trials: n and the count of each criterion (plus affirmative ∧
    identifies, responses held for review and Lindsey successes)."""
    inj = usable.filter(pl.col("condition") == "concept")
    extra = [c for c in ("needs_review", "lindsey_success") if c in inj.columns]
    return (
        inj.group_by(by)
        .agg(
            pl.len().alias("n"),
            *[_sum(pl.col(c), c) for c in CRITERIA],
            _sum(pl.col("affirmative") & pl.col("identifies"), "affirmative_identifies"),
            *[_sum(pl.col(c), c) for c in extra],
        )
        .sort(by)
    )


def passes_prereg(cell: dict[str, Any]) -> bool:
    """Merrill's pre-registered test on one row of `cell_rates` (n > 0)."""
    n = cell["n"]
    return preregistered_test(cell["identifies"] / n, cell["coherent"] / n, cell["early_detection"] / n)


def prereg_cells(usable: pl.DataFrame, by: list[str] = PER_CONCEPT) -> tuple[int, int, list[dict[str, Any]]]:
    """Merrill's pre-registered test per cell tested: (cells passing, cells tested, passing rows)."""
    rows = list(cell_rates(usable, by).iter_rows(named=True))
    passing = [c for c in rows if passes_prereg(c)]
    return len(passing), len(rows), passing


def crossovers(
    usable: pl.DataFrame, per_concept: bool, mode: str = "rise-through"
) -> dict[tuple[int, str | None], CrossoverResult | ValueError]:
    """The identification/coherence crossover over strength per layer (pooled over concepts) or per
    (layer, concept), from the injected trials of `usable`; a ValueError where none can be computed."""
    by = ["layer", "concept"] if per_concept else ["layer"]
    inj = usable.filter(pl.col("condition") == "concept")
    out: dict[tuple[int, str | None], CrossoverResult | ValueError] = {}
    groups = sorted(set(inj.select(by).iter_rows()), key=lambda g: (g[0], g[-1] if per_concept else ""))
    for group in groups:
        sub = inj.filter(pl.all_horizontal(pl.col(c) == v for c, v in zip(by, group, strict=True)))
        points = [
            (c["strength"], c["identifies"] / c["n"], c["coherent"] / c["n"], c["n"])
            for c in cell_rates(sub, ["strength"]).iter_rows(named=True)
        ]
        key = (int(group[0]), group[1] if per_concept else None)
        try:
            out[key] = find_crossover(points, mode=mode)  # type: ignore[arg-type]
        except ValueError as err:
            out[key] = err
    return out

"""Two experiments' rates in one cell: both exact CIs, the difference with Newcombe's interval, an
exact test, and Holm's correction across the cells compared.

Pure statistics on counts (scipy underneath); which trials form a cell is `reporting.comparison`'s
business. The difference is B − A; its interval is `analysis.net_detection`'s Newcombe hybrid
score interval (the same method as net detection, so the package has one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import stats

from remote_introspect.stats.analysis import NetDetection, RateCI, net_detection, paired_difference, rate_ci

ExactTest = Literal["fisher", "barnard"]


@dataclass(frozen=True)
class CellComparison:
    a: RateCI
    b: RateCI
    diff: NetDetection  # B − A with its Newcombe interval
    p: float  # two-sided exact test
    p_holm: float | None = None  # filled by `holm` across the compared cells
    test: str = "fisher"


def exact_p(k_a: int, n_a: int, k_b: int, n_b: int, test: ExactTest = "fisher") -> float:
    """Two-sided p of H0 "same rate" for k_a/n_a vs k_b/n_b: Fisher's exact test (conditional) or
    Barnard's (unconditional; slower, more powerful)."""
    table = [[k_a, n_a - k_a], [k_b, n_b - k_b]]
    if test == "fisher":
        return float(stats.fisher_exact(table, alternative="two-sided").pvalue)
    if test == "barnard":
        if k_a + k_b == 0 or k_a + k_b == n_a + n_b:  # scipy returns nan on a constant table
            return 1.0
        return float(stats.barnard_exact(table, alternative="two-sided").pvalue)
    raise ValueError(f"unknown exact test {test!r}; choose fisher or barnard")


def compare_counts(k_a: int, n_a: int, k_b: int, n_b: int, test: ExactTest = "fisher") -> CellComparison:
    """One cell: A's and B's exact (Clopper–Pearson) rates, B − A with Newcombe's interval and
    the exact test's p. Both arms need at least one trial."""
    if n_a < 1 or n_b < 1:
        raise ValueError(f"a comparison needs trials on both sides (n_a={n_a}, n_b={n_b})")
    return CellComparison(
        a=rate_ci(k_a, n_a),
        b=rate_ci(k_b, n_b),
        diff=net_detection(k_b, n_b, k_a, n_a),
        p=exact_p(k_a, n_a, k_b, n_b, test),
        test=test,
    )


def compare_paired(a_hits: Sequence[bool], b_hits: Sequence[bool]) -> CellComparison:
    """One cell whose A and B arms are the SAME trials (e.g. the rubric rung: one set of responses
    graded twice; shared controls), aligned by trial: the samples are paired, so the independent-
    samples test (Fisher/Barnard, Newcombe) is wrong (conservative: it can miss a real effect).
    B − A with the exact McNemar test and its exact conditional interval (`paired_difference`)."""
    if not a_hits or len(a_hits) != len(b_hits):
        raise ValueError("a paired comparison needs the same, non-empty trials on both sides")
    n = len(a_hits)
    a, b = rate_ci(sum(a_hits), n), rate_ci(sum(b_hits), n)
    d = paired_difference(list(b_hits), list(a_hits))
    assert d.diff is not None and d.lo is not None and d.hi is not None and d.p_value is not None
    return CellComparison(a=a, b=b, diff=NetDetection(b, a, d.diff, d.lo, d.hi), p=d.p_value, test="mcnemar")


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control across the cells), in the
    input order: sorted ascending, p_(i) × (m − i), running maximum, capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def with_holm(cells: Sequence[CellComparison]) -> list[CellComparison]:
    adjusted = holm([c.p for c in cells])
    return [
        CellComparison(c.a, c.b, c.diff, c.p, p_adj, c.test) for c, p_adj in zip(cells, adjusted, strict=True)
    ]

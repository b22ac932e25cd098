"""One row of the scaling table per model, from the usable rows of the results frame, and the
published scaling anchors (PROTOCOLS.md §2, §4).

Hit = Lindsey success (COHERENCE ∧ AFFIRMATIVE+CORRECT-ID, Lindsey's own criterion, the closest
to the Qwen study's "injection pass"); strict (all four criteria) and affirmative ∧ identifies are
shown beside it. A control's false positive = affirmative (as in every other summary). Net
detection = hit rate − control FP rate with Newcombe's interval (each arm: exact Clopper–Pearson).

Refusals (the model declines the premise; graded by the judge's `refusal`, which the offline grader
never sets on an affirmative answer) count as failures on both arms in the raw view; the
refusal-excluded view drops them from both denominators (the Qwen study's correction) and counts a
success or false positive only when it is not a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from remote_introspect.stats.analysis import NetDetection, RateCI, net_detection, rate_ci, refusal_excluded


@dataclass(frozen=True)
class PublishedPoint:
    """A published net-detection number at a parameter count; k/n where the source gives them."""

    label: str
    family: str  # "Qwen2.5" or "Llama-3.1"
    params: float
    net: float
    measure: str  # what the hit was
    refusals_excluded: bool = False
    counts: tuple[int, int, int, int] | None = None  # (k_hit, n_hit, k_fp, n_fp)
    source: str = ""


# Qwen2.5 (PROTOCOLS.md §4): raw net detection per size; per-size n not published, so no CIs.
# Parameter counts are the model cards' (0.49B, 1.54B, 3.09B, 7.61B, 14.7B, 32.5B).
PUBLISHED: tuple[PublishedPoint, ...] = (
    *(
        PublishedPoint(f"Qwen2.5-{size}", "Qwen2.5", p, net, "injection pass", source="PROTOCOLS.md §4")
        for size, p, net in (
            ("0.5B", 0.49e9, -0.348),
            ("1.5B", 1.54e9, -0.128),
            ("3B", 3.09e9, 0.284),
            ("7B", 7.61e9, 0.313),
            ("14B", 14.7e9, 0.411),
            ("32B", 32.5e9, -0.488),
        )
    ),
    PublishedPoint(
        "Qwen2.5-32B, refusals excluded", "Qwen2.5", 32.5e9, 0.200, "injection pass", True, None, "PROTOCOLS.md §4"
    ),
    # Merrill's 405B null: 0 strict in 1,200 injected trials, 0 false positives in 240 controls.
    PublishedPoint(
        "Llama-3.1-405B-Instruct (Merrill)", "Llama-3.1", 405.9e9, 0.0, "strict", False, (0, 1200, 0, 240),
        "PROTOCOLS.md §2",
    ),
)  # fmt: skip


def published_ci(point: PublishedPoint) -> NetDetection | None:
    """The Newcombe interval of a published point whose counts are known."""
    if point.counts is None:
        return None
    return net_detection(*point.counts)


@dataclass(frozen=True)
class ScalingRow:
    """The scaling statistics of one model (one prompt: injected `concept` trials and controls)."""

    n_injected: int
    n_controls: int
    lindsey_success: RateCI
    strict: RateCI
    affirmative_identifies: RateCI
    control_fp: RateCI
    net: NetDetection | None
    refusal_injected: RateCI
    refusal_controls: RateCI
    # refusals excluded from both arms
    lindsey_success_nr: RateCI
    strict_nr: RateCI
    control_fp_nr: RateCI
    net_nr: NetDetection | None

    def as_json(self) -> dict[str, Any]:
        def r(x: RateCI) -> dict[str, Any]:
            return {"k": x.k, "n": x.n, "rate": x.rate, "lo": x.lo, "hi": x.hi}

        def nd(x: NetDetection | None) -> dict[str, Any] | None:
            return None if x is None else {"net": x.net, "lo": x.lo, "hi": x.hi}

        return {
            "n_injected": self.n_injected,
            "n_controls": self.n_controls,
            **{
                k: r(getattr(self, k))
                for k in (
                    "lindsey_success", "strict", "affirmative_identifies", "control_fp", "refusal_injected",
                    "refusal_controls", "lindsey_success_nr", "strict_nr", "control_fp_nr",
                )
            },
            "net": nd(self.net),
            "net_nr": nd(self.net_nr),
        }  # fmt: skip


def _k(df: pl.DataFrame, expr: pl.Expr) -> int:
    return int(df.select(expr.fill_null(False).cast(pl.Int64).sum()).item() or 0) if df.height else 0


def scaling_row(usable: pl.DataFrame) -> ScalingRow:
    """Statistics of one model from usable frame rows of ONE prompt set (concept + control rows;
    other conditions are ignored)."""
    inj = usable.filter(pl.col("condition") == "concept")
    ctl = usable.filter(pl.col("condition") == "control")
    n_i, n_c = inj.height, ctl.height
    ok = ~pl.col("refusal").fill_null(False)
    k_ls, k_st = _k(inj, pl.col("lindsey_success")), _k(inj, pl.col("strict"))
    k_ai = _k(inj, pl.col("affirmative") & pl.col("identifies"))
    k_fp = _k(ctl, pl.col("affirmative"))
    r_i, r_c = _k(inj, pl.col("refusal")), _k(ctl, pl.col("refusal"))
    k_ls_nr, k_st_nr = _k(inj, pl.col("lindsey_success") & ok), _k(inj, pl.col("strict") & ok)
    k_fp_nr = _k(ctl, pl.col("affirmative") & ok)
    net = net_detection(k_ls, n_i, k_fp, n_c) if n_i and n_c else None
    net_nr = net_detection(k_ls_nr, n_i - r_i, k_fp_nr, n_c - r_c) if n_i - r_i and n_c - r_c else None
    return ScalingRow(
        n_injected=n_i,
        n_controls=n_c,
        lindsey_success=rate_ci(k_ls, n_i),
        strict=rate_ci(k_st, n_i),
        affirmative_identifies=rate_ci(k_ai, n_i),
        control_fp=rate_ci(k_fp, n_c),
        net=net,
        refusal_injected=rate_ci(r_i, n_i),
        refusal_controls=rate_ci(r_c, n_c),
        lindsey_success_nr=refusal_excluded(k_ls_nr, n_i, r_i),
        strict_nr=refusal_excluded(k_st_nr, n_i, r_i),
        control_fp_nr=refusal_excluded(k_fp_nr, n_c, r_c),
        net_nr=net_nr,
    )

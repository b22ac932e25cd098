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

import re
from collections.abc import Iterable
from typing import Any

import polars as pl

from remote_introspect.grading.heuristic import HeuristicGrader
from remote_introspect.stats.analysis import (
    RateCI,
    format_null,
    net_detection,
    preregistered_test,
    rate_ci,
    refusal_excluded,
    trials_needed,
    upper_bound,
)
from remote_introspect.stats.crossover import CrossoverResult, find_crossover
from remote_introspect.store.results_frame import CRITERIA

# True rates for the "how many trials would it take" line under a null: 1% and 5% (a weak effect
# a 400-trial study could just miss) and 20% (Lindsey's published strict rate, PROTOCOLS.md §1).
POWER_TARGETS: tuple[float, ...] = (0.01, 0.05, 0.20)

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


# --------------------------------------------------------------------------- headline rates per arm


def rate_json(r: RateCI) -> dict[str, Any]:
    return {"n": r.n, "k": r.k, "rate": r.rate, "lo": r.lo, "hi": r.hi}


def _count(df: pl.DataFrame, expr: pl.Expr) -> int:
    return int(df.select(expr.fill_null(False).cast(pl.Int64).sum()).item() or 0) if df.height else 0


def names_any_concept(responses: Iterable[str], concepts: Iterable[str]) -> list[bool]:
    """Whether each response names any of `concepts` (the offline lexicon's `identifies`).

    A control trial is graded without a concept, so its `identifies` says nothing; to score a
    control's false positive under "affirmative ∧ identifies" we ask whether it names any concept
    the experiment injects. Deterministic and offline whatever judge graded the trials.
    """
    grader = HeuristicGrader()
    concepts = [c for c in concepts if c]
    return [any(grader.grade(r or "", c).identifies for c in concepts) for r in responses]


def arm_stats(usable: pl.DataFrame, concepts: Iterable[str]) -> dict[str, Any]:
    """Headline statistics of one experiment from its usable rows (see docs/audit_json.md).

    Hit = strict (all four criteria) on injected (`concept`) trials; a control's false positive
    = affirmative. Both are also given for affirmative ∧ identifies, where a control counts when
    it is affirmative and names one of the experiment's concepts (`names_any_concept`).
    """
    inj = usable.filter(pl.col("condition") == "concept")
    ctl = usable.filter(pl.col("condition") == "control")
    n_i, n_c = inj.height, ctl.height
    ai = pl.col("affirmative") & pl.col("identifies")
    k_strict = _count(inj, pl.col("strict"))
    k_ai = _count(inj, ai)
    k_fp = _count(ctl, pl.col("affirmative"))
    affirmed = ctl.filter(pl.col("affirmative"))
    ctl_named = names_any_concept(affirmed["response"].to_list(), concepts) if affirmed.height else []
    k_fp_ai = sum(ctl_named)
    r_i = _count(inj, pl.col("refusal"))
    r_c = _count(ctl, pl.col("refusal"))
    not_ref = ~pl.col("refusal").fill_null(False)
    k_strict_nr = _count(inj, pl.col("strict") & not_ref)
    k_fp_nr = _count(ctl, pl.col("affirmative") & not_ref)
    out: dict[str, Any] = {
        "injected": {
            "strict": rate_json(rate_ci(k_strict, n_i)),
            "affirmative_identifies": rate_json(rate_ci(k_ai, n_i)),
            "affirmative": rate_json(rate_ci(_count(inj, pl.col("affirmative")), n_i)),
            "identifies": rate_json(rate_ci(_count(inj, pl.col("identifies")), n_i)),
            "coherent": rate_json(rate_ci(_count(inj, pl.col("coherent")), n_i)),
            "refusal": rate_json(rate_ci(r_i, n_i)),
        },
        "controls": {
            "false_positive_affirmative": rate_json(rate_ci(k_fp, n_c)),
            "false_positive_affirmative_identifies": rate_json(rate_ci(k_fp_ai, n_c)),
            "coherent": rate_json(rate_ci(_count(ctl, pl.col("coherent")), n_c)),
            "refusal": rate_json(rate_ci(r_c, n_c)),
        },
        "net_strict": None,
        "net_affirmative_identifies": None,
        "refusal_excluded": None,
        "null": None,
    }
    if n_i and n_c:
        for label, k_hit, k_false in (
            ("net_strict", k_strict, k_fp),
            ("net_affirmative_identifies", k_ai, k_fp_ai),
        ):
            nd = net_detection(k_hit, n_i, k_false, n_c)
            out[label] = {"net": nd.net, "lo": nd.lo, "hi": nd.hi, "text": nd.format()}
    if n_i:
        rx: dict[str, Any] = {
            "strict": rate_json(refusal_excluded(k_strict_nr, n_i, r_i)),
            "false_positive_affirmative": rate_json(refusal_excluded(k_fp_nr, n_c, r_c)) if n_c else None,
            "net_strict": None,
        }
        if n_i - r_i > 0 and n_c - r_c > 0:
            nd = net_detection(k_strict_nr, n_i - r_i, k_fp_nr, n_c - r_c)
            rx["net_strict"] = {"net": nd.net, "lo": nd.lo, "hi": nd.hi, "text": nd.format()}
        out["refusal_excluded"] = rx
    if n_i and k_strict == 0:
        out["null"] = {
            "n": n_i,
            "upper_bound_95": upper_bound(0, n_i),
            "text": format_null(n_i),
            "trials_needed": [
                {"true_rate": p, "power": 0.8, "alpha": 0.05, "control_rate": 0.0, "n": trials_needed(p)}
                for p in POWER_TARGETS
            ],
        }
    return out


def condition_rates(usable: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Rates of every criterion for conditions other than concept/control (random-vector,
    activation-scaling, positive control...), each k/n with its exact 95% interval."""
    out: dict[str, dict[str, Any]] = {}
    for cond in sorted(set(usable["condition"].drop_nulls().to_list()) - {"concept", "control"}):
        sub = usable.filter(pl.col("condition") == cond)
        n = sub.height
        out[cond] = {
            "strict": rate_json(rate_ci(_count(sub, pl.col("strict")), n)),
            "affirmative_identifies": rate_json(
                rate_ci(_count(sub, pl.col("affirmative") & pl.col("identifies")), n)
            ),
            "affirmative": rate_json(rate_ci(_count(sub, pl.col("affirmative")), n)),
            "identifies": rate_json(rate_ci(_count(sub, pl.col("identifies")), n)),
            "coherent": rate_json(rate_ci(_count(sub, pl.col("coherent")), n)),
            "refusal": rate_json(rate_ci(_count(sub, pl.col("refusal")), n)),
        }
    return out


def experiment_results(usable: pl.DataFrame, concepts: Iterable[str]) -> list[dict[str, Any]]:
    """`arm_stats` per prompt set (controls only ever pair with injections on their own prompt),
    plus the rates of any other condition run on that prompt."""
    concepts = list(concepts)
    out = []
    for ps in sorted(set(usable["prompt_set"].drop_nulls().to_list())):
        sub = usable.filter(pl.col("prompt_set") == ps)
        out.append({"prompt_set": ps, **arm_stats(sub, concepts), "other_conditions": condition_rates(sub)})
    return out


# --------------------------------------------------------------------------- the positive control

PositiveCell = tuple[int, str | None, float]  # (layer, concept or None when pooled, strength)


def mentions_word(response: str, concept: str) -> bool:
    """Whether a word of `response` starts with the concept word's first five letters ("trump" for
    trumpets, "satel" for satellites; shorter words whole). The positive control asks whether the
    injection reaches the output at all, so repetition counts ("Dust Dust Dust" names dust),
    unlike the detection grader's `identifies`; the same test scores the controls."""
    stem = concept.lower().replace("_", " ")[:5]
    return re.search(r"\b" + re.escape(stem), response.lower()) is not None


def _done_intact(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.filter((pl.col("status") == "done") & (pl.col("integrity") == "ok"))


def positive_control(rows: pl.DataFrame, per_concept: bool = False) -> dict[PositiveCell, tuple[RateCI, RateCI]]:
    """Lindsey's positive control per cell, from an experiment's (or a run's) frame rows: every
    cell with a planned positive trial → (of its done, intact trials, how many name the injected
    concept (`mentions_word`); of its usable ones, how many the judge says identify it)."""
    by = PER_CONCEPT if per_concept else POOLED
    out: dict[PositiveCell, tuple[RateCI, RateCI]] = {}
    for key, sub in rows.filter(pl.col("condition") == "positive").group_by(by):
        values = dict(zip(by, key, strict=True))
        cell = (int(values["layer"]), values.get("concept"), float(values["strength"]))
        done = _done_intact(sub)
        named = sum(mentions_word(r or "", c or "") for r, c in zip(done["response"], done["concept"], strict=True))
        graded = sub.filter(pl.col("usable"))
        out[cell] = (rate_ci(named, done.height), rate_ci(_count(graded, pl.col("identifies")), graded.height))
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])))


def controls_naming(rows: pl.DataFrame, prompt: str, concepts: Iterable[str]) -> RateCI:
    """Of the done, intact controls on `prompt` (no injection), how many name any of `concepts`:
    what the positive control's rate must clearly exceed."""
    concepts = list(concepts)
    ctl = _done_intact(rows.filter((pl.col("condition") == "control") & (pl.col("prompt_set") == prompt)))
    named = [any(mentions_word(r or "", c) for c in concepts) for r in ctl["response"].to_list()]
    return rate_ci(sum(named), len(named))


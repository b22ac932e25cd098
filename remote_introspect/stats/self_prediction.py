"""Scores of the self-prediction experiment: self-, cross- and mode-baseline accuracy with exact
intervals, and paired comparisons with an exact test.

A *unit* is (task, property, item). For a target model T, a unit counts when T's object-level
answer has a value for the property (`truth` not None). A predictor P is correct on a unit when
its parsed hypothetical answer equals T's truth (an unparseable prediction, None, is wrong).

- accuracy: k/n with the exact Clopper–Pearson 95% interval (`analysis.rate_ci`);
- mode baseline: per (task, property), always guessing the most common truth value of T's
  answers (ties: the alphabetically first), scored on the same units (in-sample, as Binder et al.);
- paired difference (self − other) on the units both scored: with b = self right/other wrong and
  c = the reverse, the exact McNemar test is the two-sided binomial test of b in b + c at 1/2; its
  interval is conditional on the b + c discordant units: Clopper–Pearson [πlo, πhi] for b/(b+c),
  mapped to ((b+c)/n)(2π − 1). It excludes 0 exactly when that binomial test's interval excludes
  1/2, so the interval and the test agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from remote_introspect.stats.analysis import PairedDiff, RateCI, paired_difference, rate_ci

Unit = tuple[str, str, str]  # (task, property, item id)


def mode_values(truth: Mapping[Unit, str]) -> dict[tuple[str, str], str]:
    """Per (task, property): the most common truth value (ties: alphabetically first)."""
    counts: dict[tuple[str, str], Counter[str]] = {}
    for (task, prop, _), v in truth.items():
        counts.setdefault((task, prop), Counter())[v] += 1
    return {tp: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for tp, c in counts.items()}


@dataclass
class TargetScores:
    """Everything scored against one target model's object-level answers."""

    target: str
    units: int  # units with a truth value
    undefined: int  # object answers without a value for the property (left out)
    accuracy: dict[str, RateCI]  # predictor -> accuracy (the target itself = self-prediction)
    unparsed: dict[str, int]  # predictor -> predictions that did not parse (scored wrong)
    mode: RateCI
    best_cross: str | None
    self_minus_best_cross: PairedDiff | None
    self_minus_mode: PairedDiff
    per_property: dict[tuple[str, str], dict[str, RateCI]] = field(default_factory=dict)


def score_target(
    target: str,
    truth: Mapping[Unit, str | None],
    predictions: Mapping[str, Mapping[Unit, str | None]],
) -> TargetScores:
    """Scores for `target`: `truth` maps its units to property values (None: no value, left out);
    `predictions[P]` maps units to P's parsed prediction (None: unparseable). Units a predictor
    has no answer for (not run, failed) are left out of its scores, never counted wrong."""
    defined = {u: v for u, v in truth.items() if v is not None}
    modes = mode_values(defined)
    accuracy: dict[str, RateCI] = {}
    unparsed: dict[str, int] = {}
    correct: dict[str, dict[Unit, bool]] = {}
    per_property: dict[tuple[str, str], dict[str, RateCI]] = {}
    for p, preds in predictions.items():
        scored = {u: preds[u] == v for u, v in defined.items() if u in preds}
        correct[p] = scored
        accuracy[p] = rate_ci(sum(scored.values()), len(scored))
        unparsed[p] = sum(1 for u in scored if preds[u] is None)
    mode_correct = {u: v == modes[(u[0], u[1])] for u, v in defined.items()}
    for tp in sorted(modes):
        row = {}
        for p, scored in correct.items():
            sub = [ok for u, ok in scored.items() if (u[0], u[1]) == tp]
            row[p] = rate_ci(sum(sub), len(sub))
        sub = [ok for u, ok in mode_correct.items() if (u[0], u[1]) == tp]
        row["mode"] = rate_ci(sum(sub), len(sub))
        per_property[tp] = row
    own = correct.get(target, {})
    crosses = [p for p in predictions if p != target and accuracy[p].n]
    best = max(crosses, key=lambda p: (accuracy[p].rate or 0.0, p), default=None)
    vs_cross = None
    if best is not None:
        both = [u for u in own if u in correct[best]]
        vs_cross = paired_difference([own[u] for u in both], [correct[best][u] for u in both])
    vs_mode = paired_difference([own[u] for u in own], [mode_correct[u] for u in own])
    return TargetScores(
        target=target,
        units=len(defined),
        undefined=len(truth) - len(defined),
        accuracy=accuracy,
        unparsed=unparsed,
        mode=rate_ci(sum(mode_correct.values()), len(mode_correct)),
        best_cross=best,
        self_minus_best_cross=vs_cross,
        self_minus_mode=vs_mode,
        per_property=per_property,
    )

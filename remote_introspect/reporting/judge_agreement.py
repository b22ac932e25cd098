"""Agreement between judges: Cohen's kappa (bootstrap 95% CI) and raw agreement per criterion for
every pair of judges (grader, version) that graded the same trials. Read by `audit` (its JSON and
text) and `grade` (the new judge against the others)."""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import polars as pl

from remote_introspect.stats.analysis import kappa_bootstrap_ci, raw_agreement
from remote_introspect.store.results_frame import CRITERIA

KAPPA_BOOT = 1000
# analysis.kappa_bootstrap_ci draws an (n_boot × n) index matrix; past ~5M cells (200 resamples
# of 25k trials) fewer resamples keep memory bounded. The count used is reported.
KAPPA_BOOT_CELLS = 5_000_000
KAPPA_BOOT_MIN = 200


def _finite(x: float) -> float | None:
    """An undefined kappa (nan: both judges constant) is None, here and in the audit's JSON."""
    return x if math.isfinite(x) else None


def judge_agreement(grades: pl.DataFrame, keys: set[str] | None = None) -> list[dict[str, Any]]:
    """Cohen's kappa (bootstrap 95% CI) and raw agreement per criterion for every pair of judges
    (grader, version) that graded the same trials; `keys` restricts to those trials."""
    if keys is not None:
        grades = grades.filter(pl.col("trial_key").is_in(list(keys)))
    judges = sorted({(g, v) for g, v in grades.select("grader", "grader_version").iter_rows()})
    out = []
    for a, b in itertools.combinations(judges, 2):
        ga = grades.filter((pl.col("grader") == a[0]) & (pl.col("grader_version") == a[1]))
        gb = grades.filter((pl.col("grader") == b[0]) & (pl.col("grader_version") == b[1]))
        joined = ga.join(gb, on="trial_key", suffix="_b").sort("trial_key")
        if joined.height == 0:
            continue
        per: dict[str, Any] = {}
        n_boot = max(KAPPA_BOOT_MIN, min(KAPPA_BOOT, KAPPA_BOOT_CELLS // joined.height))
        for c in CRITERIA:
            x = joined[c].to_numpy().astype(bool)
            y = joined[f"{c}_b"].to_numpy().astype(bool)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # undefined kappa is reported as null
                k = kappa_bootstrap_ci(x, y, n_boot=n_boot, seed=0)
            per[c] = {
                "raw_agreement": raw_agreement(x, y),
                "kappa": _finite(k.kappa),
                "kappa_lo": _finite(k.lo),
                "kappa_hi": _finite(k.hi),
                "a_positive": int(x.sum()),
                "b_positive": int(y.sum()),
                "bootstrap_resamples": n_boot,
            }
        out.append(
            {
                "a": {"grader": a[0], "version": a[1]},
                "b": {"grader": b[0], "version": b[1]},
                "n": joined.height,
                "criteria": per,
            }
        )
    return out


def agreement_title(pair: dict[str, Any]) -> str:
    """Which two judges, on how many trials: the heading of a pair's rows in `audit` and `report`."""
    a, b = pair["a"], pair["b"]
    return f"{a['grader']} {a['version']} vs {b['grader']} {b['version']} on {pair['n']} trials"


def format_agreement_rows(pair: dict[str, Any]) -> list[str]:
    rows = []
    for crit, s in pair["criteria"].items():
        kappa = (
            "kappa undefined (both constant)"
            if s["kappa"] is None
            else f"kappa {s['kappa']:.2f}"
            + (f" [{s['kappa_lo']:.2f}, {s['kappa_hi']:.2f}]" if s["kappa_lo"] is not None else "")
        )
        rows.append(
            f"{crit:<16} raw {100 * s['raw_agreement']:.1f}%  {kappa}  (positives {s['a_positive']} vs {s['b_positive']})"
        )
    return rows

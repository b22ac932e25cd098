"""Agreement of a grader with the shipped LLM-judge labels (Llama 1B/8B/70B transcripts).

Data: `remote_introspect/data/judge_calibration/{1B,8B,70B}.csv` (AlliedToasters/llama-introspection,
MIT; see the LICENSE file beside them). The judge's `correct_id` ("names the concept") is our
`identifies`; it is compared only on rows that have a concept and a label. Null labels are skipped.

Honest hold-out: the heuristic's rules were developed on the 1B and 8B files; 70B is reported as
held out (`split` column). The labels were made with their own rubric (identification = the concept
named as the detected thought; no implicit claim read into a bare answer), so the heuristic is
graded here in that rubric (`llama-introspection`); the published judges' rubrics (lindsey,
merrill-405b) read both more widely (issue 12). `strict` rows compare all four criteria, and the
table ends with the false strict hits (ours strict, the labels' not) per source and the responses
held for review. Kappa is Cohen's, computed with numpy; its 95% CI is a percentile
bootstrap over rows with a fixed seed, so the table is reproducible.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from remote_introspect.errors import UserError
from remote_introspect.grading.base import Grader
from remote_introspect.grading.heuristic import HeuristicGrader
from remote_introspect.grading.service import get_grader
from remote_introspect.stats import analysis

LABEL_RUBRIC = "llama-introspection"  # the rubric the shipped labels were made with

CRITERIA: tuple[tuple[str, str], ...] = (
    ("refusal", "refusal"),
    ("affirmative", "affirmative"),
    ("identifies", "correct_id"),
    ("early_detection", "early_detection"),
    ("coherent", "coherent"),
)
DEV_FILES: tuple[str, ...] = ("1B", "8B")  # what the heuristic's rules were developed on
BARS = {"affirmative": (0.7, 0.9), "identifies": (0.7, 0.9)}  # (kappa, raw agreement), pooled
DEFAULT_SEED = 20251
DEFAULT_BOOT = 1000


def default_data_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "judge_calibration"


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """`analysis.cohen_kappa` (the one κ); NaN, silently, when it is undefined or there are no rows."""
    a = np.asarray(a, dtype=bool)
    if a.size == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the table shows "undefined" itself
        return analysis.cohen_kappa(a, np.asarray(b, dtype=bool))


def bootstrap_kappa_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED
) -> tuple[float, float]:
    """Percentile 95% CI of kappa over row resamples (`analysis.kappa_bootstrap_ci`: resamples with
    undefined kappa, i.e. a single class on both sides, are dropped)."""
    a = np.asarray(a, dtype=bool)
    if a.size == 0:
        return (math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = analysis.kappa_bootstrap_ci(a, np.asarray(b, dtype=bool), n_boot=n_boot, seed=seed)
    return (ci.lo, ci.hi)


def _agreement_row(
    criterion: str, scope: str, split: str, a: np.ndarray, b: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    """Our grader (`a`) against the labels (`b`) on one scope: counts, raw agreement, κ and its CI."""
    lo, hi = bootstrap_kappa_ci(a, b, n_boot=n_boot, seed=seed)
    return {
        "criterion": criterion,
        "scope": scope,
        "split": split,
        "n": int(a.size),
        "judge_pos": int(b.sum()),
        "grader_pos": int(a.sum()),
        "agreement": float(np.mean(a == b)) if a.size else math.nan,
        "kappa": cohen_kappa(a, b),
        "kappa_lo": lo,
        "kappa_hi": hi,
    }


def _size_key(p: Path) -> tuple[float, str]:
    """Order "1B" < "8B" < "70B" (by the leading number), then by name."""
    num = ""
    for ch in p.stem:
        if ch.isdigit() or ch == ".":
            num += ch
        else:
            break
    return (float(num) if num else math.inf, p.stem)


def load_calibration(data_dir: Path | None = None) -> pl.DataFrame:
    """All `*.csv` under `data_dir` with a `file` column (the file's stem, e.g. "70B")."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    files = sorted(data_dir.glob("*.csv"), key=_size_key)
    if not files:
        raise UserError(f"no calibration CSVs in {data_dir}")
    need = ["concept", "response"] + [j for _, j in CRITERIA]
    frames = []
    for f in files:
        df = pl.read_csv(f, infer_schema_length=10000)
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise UserError(f"{f}: calibration file lacks columns {missing}")
        frames.append(
            df.select(
                pl.lit(f.stem).alias("file"),
                pl.col("concept").cast(pl.Utf8),
                pl.col("response").cast(pl.Utf8).fill_null(""),
                *[pl.col(j).cast(pl.Boolean) for _, j in CRITERIA],
            )
        )
    return pl.concat(frames)


def _scopes(files: list[str]) -> list[tuple[str, str, list[str]]]:
    """(scope label, split, files in scope): each file, the dev pool, and everything pooled."""
    out = [(f, "dev" if f in DEV_FILES else "held-out", [f]) for f in files]
    dev = [f for f in files if f in DEV_FILES]
    held = [f for f in files if f not in DEV_FILES]
    if dev and held:
        out.append(("+".join(dev), "dev", dev))
        if len(held) > 1:
            out.append(("+".join(held), "held-out", held))
    out.append(("pooled", "all", files))
    return out


def calibration_table(
    data_dir: Path | None = None,
    grader: Grader | None = None,
    n_boot: int = DEFAULT_BOOT,
    seed: int = DEFAULT_SEED,
    rubric: str = LABEL_RUBRIC,
) -> list[dict[str, Any]]:
    """One row per (criterion, scope): n, positives per rater, raw agreement, kappa and its CI.
    `rubric` (heuristic only): the labels' own by default; "lindsey" shows how far the published
    judges' wider reading (issue 12) is from these labels."""
    grader = grader or get_grader("heuristic")
    df = load_calibration(data_dir)
    concepts = [c if c and c.strip() else None for c in df["concept"].to_list()]
    items = list(zip(df["response"].to_list(), concepts, strict=True))
    if isinstance(grader, HeuristicGrader):
        # The labels were made with the llama-introspection rubric: grade in that rubric.
        grades = grader.grade_many(items, protocols=rubric)
    else:
        grades = grader.grade_many(items)
    files = list(dict.fromkeys(df["file"].to_list()))
    file_col = np.array(df["file"].to_list())
    has_concept = np.array([c is not None for c in concepts])
    rows: list[dict[str, Any]] = []
    for ours_name, judge_col in CRITERIA:
        ours = np.array([getattr(g, ours_name) for g in grades], dtype=bool)
        judge_raw = df[judge_col].to_list()
        labelled = np.array([v is not None for v in judge_raw])
        judge = np.array([bool(v) for v in judge_raw], dtype=bool)
        usable = labelled & (has_concept if ours_name == "identifies" else True)
        for scope, split, scope_files in _scopes(files):
            m = usable & np.isin(file_col, scope_files)
            rows.append(_agreement_row(ours_name, scope, split, ours[m], judge[m], n_boot, seed))
    # Strict: ours (all four, nothing held for review) vs the labels' four criteria, on rows with a
    # concept and all four labels; a false strict hit is ours strict where the judge's is not.
    ours_strict = np.array([g.strict for g in grades], dtype=bool)
    review = np.array([g.needs_review for g in grades], dtype=bool)
    labels = [df[j].to_list() for j in ("affirmative", "correct_id", "early_detection", "coherent")]
    all_labelled = np.array([all(v is not None for v in vals) for vals in zip(*labels, strict=True)])
    judge_strict = np.array([all(bool(v) for v in vals) for vals in zip(*labels, strict=True)])
    usable = all_labelled & has_concept
    for scope, split, scope_files in _scopes(files):
        m = usable & np.isin(file_col, scope_files)
        a, b = ours_strict[m], judge_strict[m]
        rows.append(
            {
                **_agreement_row("strict", scope, split, a, b, n_boot, seed),
                "false_strict": int((a & ~b).sum()),
                "review": int(review[m].sum()),
                "review_judge_strict": int((review[m] & b).sum()),
            }
        )
    return rows


def pooled_bars_met(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """Per barred criterion: pooled kappa >= 0.7 and pooled raw agreement >= 90%."""
    out = {}
    for r in rows:
        if r["scope"] == "pooled" and r["criterion"] in BARS:
            k_bar, a_bar = BARS[r["criterion"]]
            out[r["criterion"]] = bool(r["kappa"] >= k_bar and r["agreement"] >= a_bar)
    return out


def _fmt(x: float, spec: str) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return format(x + 0.0, spec).replace("-0.00", "0.00")  # no "-0.00" for a kappa of -0.001


def rubric_reference_line(rows: list[dict[str, Any]], rubric: str) -> str:
    """One line: pooled agreement of the heuristic in another rubric with the same labels."""
    parts = []
    for r in rows:
        if r["scope"] == "pooled" and r["criterion"] in ("affirmative", "identifies", "strict"):
            extra = f", {r['false_strict']} false strict" if r["criterion"] == "strict" else ""
            parts.append(
                f"{r['criterion']} {100 * r['agreement']:.1f}% kappa {_fmt(r['kappa'], '.2f')}{extra}"
            )
    return (
        f"for reference, the heuristic in the {rubric} rubric (names anywhere, reads a bare answer as a claim) "
        f"against the same labels, pooled: " + "; ".join(parts)
    )


def format_calibration_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table (no colour, fixed columns) for `grade --calibrate` and test output."""
    head = ("criterion", "scope", "split", "n", "judge+", "ours+", "agree", "kappa", "95% CI")
    body = [
        (
            r["criterion"],
            r["scope"],
            r["split"],
            str(r["n"]),
            str(r["judge_pos"]),
            str(r["grader_pos"]),
            _fmt(r["agreement"] * 100 if not math.isnan(r["agreement"]) else math.nan, ".1f") + "%",
            _fmt(r["kappa"], ".2f"),
            f"[{_fmt(r['kappa_lo'], '.2f')}, {_fmt(r['kappa_hi'], '.2f')}]",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    prev = None
    for b in body:
        if prev is not None and b[0] != prev:
            lines.append("")
        prev = b[0]
        lines.append("  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip())
    strict_rows = [r for r in rows if r["criterion"] == "strict"]
    if strict_rows:
        lines.append("")
        lines.append(
            "false strict hits (ours strict, judge not): "
            + "; ".join(f"{r['scope']} {r['false_strict']} of {r['n']}" for r in strict_rows)
        )
        lines.append(
            "held for review (never counted as strict): "
            + "; ".join(
                f"{r['scope']} {r['review']} ({r['review_judge_strict']} judge-strict)" for r in strict_rows
            )
        )
    bars = pooled_bars_met(rows)
    if bars:
        lines.append("")
        lines.append(
            "pooled bars (kappa >= 0.70 and agreement >= 90%): "
            + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in bars.items())
        )
    lines.append("kappa CI: percentile bootstrap over rows, fixed seed; n/a = kappa undefined (one class).")
    return "\n".join(lines)

"""Localization and position-control results (PROTOCOLS.md §5), read from the checked frame.

Only usable rows count (done, intact, readout present: `results_frame.load_frame`); a failed or
corrupt row is never a wrong answer, it is reported as missing. A row's prediction is the argmax
of its stored candidate log-probabilities (recomputed here, not trusted from the row). Per layer ×
strength: accuracy of the injected rows with an exact (Clopper–Pearson) 95% CI and an exact
one-sided binomial test against chance, the `prefer` control's and the random vectors' accuracy
beside it, and the confusion of steered vs predicted region (does the model favour SENTENCE 3?).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from scipy import stats as sps

from remote_introspect.reporting.sections import ReportInputs, Section
from remote_introspect.stats.analysis import RateCI, rate_ci

CONDITION_LABEL = {"injected": "where (concept)", "prefer": "prefer control", "random": "random vector"}


@dataclass
class Cell:
    regions: str
    layer: int
    strength: float
    counts: dict[str, tuple[int, int]]  # condition -> (correct, n)

    def rate(self, condition: str) -> RateCI | None:
        k, n = self.counts.get(condition, (0, 0))
        return rate_ci(k, n) if n else None


@dataclass
class LocalizationResults:
    regions: str
    chance: float
    n_regions: int
    cells: list[Cell]
    confusion: dict[str, list[list[int]]]  # condition -> [steered region][predicted region]
    # Row counts, all required: `summarize` derives every one from the rows, and a count left at
    # a default would read as "none failed" rather than as a bug.
    planned: int
    usable: int
    failed: int
    not_done: int
    excluded: int
    conditions: list[str]
    ties: int  # usable rows whose top log-probability is shared by several answers


def p_above_chance(k: int, n: int, chance: float) -> float | None:
    """Exact one-sided binomial test: P(X >= k) under the chance rate."""
    if n == 0:
        return None
    return float(sps.binomtest(k, n, chance, alternative="greater").pvalue)


def localization_rows(df: pl.DataFrame) -> list[dict[str, Any]]:
    """The localization rows of a checked frame, parsed (every status; `usable` says which count)."""
    out = []
    for r in df.iter_rows(named=True):
        try:
            trial = json.loads(r["trial_json"])
        except (TypeError, ValueError):
            continue
        if not isinstance(trial, dict) or trial.get("kind") != "localization":
            continue
        readout = None
        if r["usable"] and r.get("readout_json"):
            readout = json.loads(r["readout_json"])
        pred, tie = None, False
        if readout is not None:
            logp = readout["logprobs"]
            pred = max(range(len(logp)), key=lambda j: logp[j]) + 1
            tie = sum(x == logp[pred - 1] for x in logp) > 1  # the argmax took the first of them
        out.append(
            {
                "key": r["key"],
                "status": r["status"],
                "integrity": r["integrity"],
                "usable": bool(r["usable"]) and pred is not None,
                "regions": trial["regions"],
                "condition": trial["condition"],
                "layer": int(trial["layer"]),
                "strength": float(trial["strength"]),
                "target": int(trial["target"]),
                "n_regions": len(trial["candidates"]),
                "prediction": pred,
                "tie": tie,
            }
        )
    return out


def summarize(df: pl.DataFrame) -> list[LocalizationResults]:
    """One result block per region scheme present (sentences, halves)."""
    rows = localization_rows(df)
    out = []
    for regions in sorted({r["regions"] for r in rows}):
        mine = [r for r in rows if r["regions"] == regions]
        n_reg = mine[0]["n_regions"]
        usable = [r for r in mine if r["usable"]]
        conditions = [c for c in ("injected", "prefer", "random") if any(r["condition"] == c for r in mine)]
        cells = []
        for layer, strength in sorted({(r["layer"], r["strength"]) for r in mine}):
            counts = {}
            for c in conditions:
                sel = [r for r in usable if (r["layer"], r["strength"], r["condition"]) == (layer, strength, c)]
                counts[c] = (sum(r["prediction"] == r["target"] for r in sel), len(sel))
            cells.append(Cell(regions, layer, strength, counts))
        confusion = {}
        for c in conditions:
            m = [[0] * n_reg for _ in range(n_reg)]
            for r in usable:
                if r["condition"] == c:
                    m[r["target"] - 1][r["prediction"] - 1] += 1
            confusion[c] = m
        st = Counter(r["status"] for r in mine)
        out.append(
            LocalizationResults(
                regions=regions,
                chance=1.0 / n_reg,
                n_regions=n_reg,
                cells=cells,
                confusion=confusion,
                planned=len(mine),
                usable=len(usable),
                failed=st["failed"],
                not_done=len(mine) - st["done"] - st["failed"],
                excluded=sum(1 for r in mine if r["status"] == "done" and not r["usable"]),
                conditions=conditions,
                ties=sum(1 for r in usable if r["tie"]),
            )
        )
    return out


def _labels(res: LocalizationResults) -> list[str]:
    return [str(i + 1) for i in range(res.n_regions)] if res.regions == "sentences" else ["beginning", "end"]


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def format_results(res: LocalizationResults) -> list[str]:
    what = "localization (5 sentences)" if res.regions == "sentences" else "position control (2 halves)"
    lines = [
        f"{what}: chance {res.chance:.0%}; {res.usable} usable of {res.planned} planned rows "
        f"({res.failed} failed, {res.not_done} not run, {res.excluded} excluded by integrity checks: "
        "none of these counts as a wrong answer)",
        "accuracy = argmax over the answer tokens equals the steered region; exact 95% CI; "
        "p = exact one-sided binomial test against chance",
    ]
    if res.ties:  # bf16 logits can tie exactly; such a row is scored as the first tied answer
        lines.append(
            f"ties: {res.ties} of {res.usable} usable rows have several answers at the top log-probability "
            "(scored as the lowest-numbered of them: a pile-up there is ties, not a preference)"
        )
    header = f"{'layer':>5} {'strength':>8}  {'accuracy (where)':<30} {'p':>7}"
    extra = [c for c in res.conditions if c != "injected"]
    for c in extra:
        header += f"  {CONDITION_LABEL[c]:<30} {'p':>7}"
    lines.append(header)
    for cell in res.cells:
        line = f"{cell.layer:>5} {cell.strength:>8g}  "
        for c in ["injected", *extra]:
            r = cell.rate(c)
            k, n = cell.counts.get(c, (0, 0))
            text = r.format() if r is not None else "0/0 —"
            sep = "  " if c != "injected" else ""
            line += f"{sep}{text:<30} {_fmt_p(p_above_chance(k, n, res.chance)):>7}"
        lines.append(line.rstrip())
    for c in res.conditions:
        m = res.confusion[c]
        total = sum(map(sum, m))
        if not total:
            continue
        labels = _labels(res)
        lines.append(f"confusion, {CONDITION_LABEL[c]} (rows: steered region; columns: predicted; all cells):")
        width = max(len(x) for x in labels) + 1
        lines.append(" " * (width + 2) + "".join(f"{x:>{width + 1}}" for x in labels))
        for i, row in enumerate(m):
            lines.append(f"  {labels[i]:>{width}}" + "".join(f"{v:>{width + 1}}" for v in row))
        col = [sum(m[i][j] for i in range(len(m))) for j in range(len(m))]
        share = ", ".join(f"{labels[j]} {col[j] / total:.0%}" for j in range(len(m)))
        lines.append(f"  predicted share: {share} (a position favoured whatever is steered shows here)")
    return lines


def plot_accuracy(res: LocalizationResults, path: Path, label: str = "") -> str:
    """Accuracy vs strength, one line per layer, with exact CIs; the prefer control dashed;
    chance as a grey line. `label` (the experiment) ends the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    layers = sorted({c.layer for c in res.cells})
    for layer in layers:
        cells = [c for c in res.cells if c.layer == layer]
        for cond, style in (("injected", "-o"), ("prefer", "--s"), ("random", ":^")):
            pts = [(c.strength, c.rate(cond)) for c in cells if c.rate(cond) is not None]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ys = [r.rate for _, r in pts]  # type: ignore[union-attr]
            lo = [r.rate - r.lo for _, r in pts]  # type: ignore[union-attr, operator]
            hi = [r.hi - r.rate for _, r in pts]  # type: ignore[union-attr, operator]
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt=style, capsize=3, label=f"layer {layer}: {CONDITION_LABEL[cond]}")
    ax.axhline(res.chance, color="grey", lw=1, label=f"chance {res.chance:.0%}")
    ax.set_ylim(0, 1)
    ax.set_xlabel("strength")
    ax.set_ylabel("accuracy")
    title = "Localization accuracy vs strength" if res.regions == "sentences" else "Position control accuracy vs strength"
    title += f" ({label})" if label else ""
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Title": title, "Software": "remote_introspect"})
    plt.close(fig)
    return title


def sections(inputs: ReportInputs) -> list[Section]:
    """The report's localization section: per experiment (never pooled across experiments: two
    models, or two grids sharing some rows, are separate results) and region scheme its summary
    lines and the accuracy-vs-strength plot; none when the cache has no localization rows."""
    import html

    frame = inputs.frame
    parts_html: list[str] = []
    parts_md: list[str] = []
    files: list[str] = []
    for exp in frame.experiments:
        blocks = summarize(frame.for_experiment(exp.id))
        if not blocks:
            continue
        label = f"{exp.name} [{exp.id[:12]}], model {(exp.spec or {}).get('model', '?')}"
        parts_html.append(f"<h3>{html.escape(label)}</h3>")
        parts_md += [f"### {label}", ""]
        for res in blocks:
            name = f"{exp.id[:16]}-localization-{res.regions}-accuracy.png"
            title = plot_accuracy(res, inputs.out_dir / name, f"{exp.name} [{exp.id[:12]}]")
            files.append(name)
            text = "\n".join(format_results(res))
            parts_html.append(f"<pre>{html.escape(text)}</pre><figure><img src='{name}' alt='{html.escape(title)}'></figure>")
            parts_md += ["```", text, "```", "", f"![{title}]({name})", ""]
    if not files:
        return []
    return [Section("Localization and position control", "\n".join(parts_html), "\n".join(parts_md), tuple(files))]


def localization_json(df: pl.DataFrame) -> list[dict[str, Any]]:
    """`audit --json`'s per-experiment `localization` entry: per region scheme, the row counts,
    chance, and per layer × strength × condition k/n with the exact CI and the binomial p; plus the
    summary lines `audit` prints. Empty for an experiment without localization rows."""
    out = []
    for res in summarize(df):
        cells = []
        for c in res.cells:
            for cond, (k, n) in c.counts.items():
                r = c.rate(cond)
                cells.append(
                    {
                        "layer": c.layer, "strength": c.strength, "condition": cond, "k": k, "n": n,
                        "lo": None if r is None else r.lo, "hi": None if r is None else r.hi,
                        "p_above_chance": p_above_chance(k, n, res.chance),
                    }
                )  # fmt: skip
        out.append(
            {
                "regions": res.regions, "chance": res.chance, "planned": res.planned, "usable": res.usable,
                "failed": res.failed, "not_run": res.not_done, "excluded": res.excluded, "ties": res.ties, "cells": cells,
                "confusion": res.confusion, "lines": format_results(res),
            }
        )  # fmt: skip
    return out


def localization_lines(sub_json: list[dict[str, Any]]) -> list[list[str]]:
    return [list(block["lines"]) for block in sub_json]

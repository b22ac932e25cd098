"""`report`: an HTML page, PNG plots and a markdown summary of everything in a cache.

Layout of the output directory (written to a temporary sibling, then renamed into place, so a
failure leaves no half-written report and an existing report is replaced whole):

- `index.html` — the books (audit verdict, counts, integrity problems), then per experiment: Lindsey's
  positive control where it was run (the rows the run's stdout prints), the headline statistics, a per-(layer, strength) table, plots, per-concept rates, example responses
  behind any hit or false positive, and the published anchors.
- `summary.md` — the same numbers as markdown.
- `<experiment id>-layer<L>-strength.png` — detection (strict, affirmative∧identifies,
  identifies) and coherence vs strength at layer L with exact 95% CIs, the control false-positive
  rate as a band, and the identification/coherence crossover marked (`crossover.find_crossover`).
- `<experiment id>-controls.png`, `<experiment id>-concepts.png`, `<experiment id>-anchors.png`.

Every rate is k/n with an exact (Clopper-Pearson) 95% interval from `analysis.py`; only usable
trials (done, intact, graded by the chosen judge) are counted, and the page says how many were not.
Each PNG carries its title in a `Title` text chunk as well as on the figure.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from remote_introspect.errors import UserError
from remote_introspect.experiment.prompts import PROMPT_SETS
from remote_introspect.experiment.spec import ExperimentSpec
from remote_introspect.reporting.audit import audit_with_frame
from remote_introspect.reporting.audit_text import fmt_net, format_results
from remote_introspect.reporting.judge_agreement import format_agreement_rows
from remote_introspect.reporting.positive_table import positive_note, positive_rows, positive_title
from remote_introspect.stats.analysis import net_detection, rate_ci
from remote_introspect.stats.cells import (
    POOLED,
    cell_keys,
    cell_rates,
    controls_naming,
    crossover_mode,
    crossovers,
    positive_control,
    prereg_cells,
)
from remote_introspect.stats.crossover import CrossoverResult
from remote_introspect.store.results_frame import ResultsFrame

MARKER = ".remote_introspect_report"


@dataclass(frozen=True)
class Anchor:
    """A published number (PROTOCOLS.md) to compare against; k/n where the source gives them."""

    label: str
    measure: str  # "strict" or "control FP"
    rate: float
    k: int | None = None
    n: int | None = None
    source: str = ""


ANCHORS: tuple[Anchor, ...] = (
    Anchor(
        "Lindsey: Claude Opus 4.1/4, best layer",
        "strict",
        0.20,
        None,
        None,
        "PROTOCOLS.md §1 (≈20%, n not given)",
    ),
    Anchor("Lindsey: production Opus controls", "control FP", 0.0, 0, 100, "PROTOCOLS.md §1"),
    Anchor("Merrill: Llama-3.1-405B-Instruct", "strict", 0.0, 0, 1200, "PROTOCOLS.md §2"),
    Anchor("Merrill: 405B controls", "control FP", 0.0, 0, 240, "PROTOCOLS.md §2"),
)
# Qwen2.5 scaling study, raw net detection (PROTOCOLS.md §4; per-size n not published).
QWEN_NET: tuple[tuple[str, float], ...] = (
    ("Qwen2.5-0.5B", -0.348),
    ("Qwen2.5-1.5B", -0.128),
    ("Qwen2.5-3B", 0.284),
    ("Qwen2.5-7B", 0.313),
    ("Qwen2.5-14B", 0.411),
    ("Qwen2.5-32B", -0.488),
    ("Qwen2.5-32B (refusals excl.)", 0.200),
    ("Qwen2.5-32B-Coder", 0.585),
    ("Qwen2.5-32B-Insecure", 0.550),
)


@dataclass
class Figure:
    file: str
    title: str
    caption: str


@dataclass
class ReportResult:
    out_dir: Path
    files: list[str]
    experiments: int
    excluded: int


# --------------------------------------------------------------------------- output directory


def _check_out(out_dir: Path) -> None:
    """Validate the target before any work (writes nothing)."""
    out_dir = Path(out_dir)
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output directory's parent {parent} does not exist")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"--out {out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
            raise UserError(f"--out {out_dir} is a non-empty directory that is not a report; choose another")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {parent}")


def _make_tmp(out_dir: Path) -> Path:
    """A fresh temporary directory beside the target (same filesystem, so the final rename is atomic)."""
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a report is an ordinary directory
    return tmp


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- plots


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # no display, ever
    import matplotlib.pyplot as plt

    return plt


def _ci_err(k: int, n: int) -> tuple[float, float, float]:
    r = rate_ci(k, n)
    assert r.rate is not None and r.lo is not None and r.hi is not None
    return r.rate, r.rate - r.lo, r.hi - r.rate


def _save(fig: Any, path: Path, title: str) -> None:
    fig.savefig(path, dpi=100, metadata={"Title": title, "Software": "remote_introspect"})
    _plt().close(fig)


def plot_strength(
    usable: pl.DataFrame,
    layer: int,
    fp: tuple[int, int],
    path: Path,
    cross: CrossoverResult | ValueError | None = None,
) -> tuple[str, str]:
    """Rates vs strength at one layer, with its crossover (`cells.crossovers`, rise-through unless
    given); returns (title, one-line crossover description)."""
    if cross is None:
        cross = crossovers(usable.filter(pl.col("layer") == layer), False)[(layer, None)]
    plt = _plt()
    title = f"Detection and coherence vs strength — layer {layer}"
    cells = cell_rates(usable.filter(pl.col("layer") == layer), ["strength"])
    xs = cells["strength"].to_list()
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    series = (
        ("strict", "strict (all four)", "C3", "o"),
        ("affirmative_identifies", "affirmative ∧ identifies", "C1", "s"),
        ("identifies", "identifies", "C0", "^"),
        ("coherent", "coherent", "C2", "D"),
    )
    for col, label, color, marker in series:
        pts = [_ci_err(k, n) for k, n in zip(cells[col].to_list(), cells["n"].to_list(), strict=True)]
        ax.errorbar(
            xs,
            [p[0] for p in pts],
            yerr=[[p[1] for p in pts], [p[2] for p in pts]],
            label=label,
            color=color,
            marker=marker,
            capsize=3,
            linewidth=1.5,
        )
    k_fp, n_fp = fp
    if n_fp:
        rate, lo_err, hi_err = _ci_err(k_fp, n_fp)
        ax.axhspan(
            rate - lo_err, rate + hi_err, color="grey", alpha=0.15, label=f"control FP 95% CI ({k_fp}/{n_fp})"
        )
        ax.axhline(rate, color="grey", linestyle="--", linewidth=1)
    if isinstance(cross, ValueError):
        desc = f"no crossover computed ({cross})"
    else:
        desc = cross.description
        if cross.found and cross.strength is not None:
            ax.axvline(
                cross.strength,
                color="k",
                linestyle=":",
                linewidth=1.5,
                label=f"crossover s≈{cross.strength:.3g}",
            )
    if xs and min(xs) > 0 and max(xs) / min(xs) >= 4:
        ax.set_xscale("log", base=2)  # Lindsey's grid doubles (1, 2, 4, 8): evenly spaced on log2
    if xs:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
    ax.set_xlabel("injection strength")
    ax.set_ylabel("rate (exact 95% CI)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, title)
    return title, desc


def plot_controls(stats: dict[str, Any], path: Path) -> str:
    plt = _plt()
    title = "Controls (no injection)"
    ctl = stats["controls"]
    bars = (
        ("false positive\n(affirmative)", ctl["false_positive_affirmative"]),
        ("false positive\n(affirm. ∧ names concept)", ctl["false_positive_affirmative_identifies"]),
        ("refusal", ctl["refusal"]),
        ("coherent", ctl["coherent"]),
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (_label, r) in enumerate(bars):
        if r["n"]:
            rate, lo, hi = _ci_err(r["k"], r["n"])
            ax.bar(i, rate, color="C7", alpha=0.8)
            ax.errorbar(i, rate, yerr=[[lo], [hi]], color="k", capsize=4)
            ax.text(i, min(1.0, rate + hi) + 0.02, f"{r['k']}/{r['n']}", ha="center", fontsize=8)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("rate (exact 95% CI)")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path, title)
    return title


def _rates(cells: pl.DataFrame, col: str) -> list[Any]:
    return [rate_ci(k, n) for k, n in zip(cells[col].to_list(), cells["n"].to_list(), strict=True)]


def plot_concepts(usable: pl.DataFrame, path: Path) -> str:
    plt = _plt()
    title = "Per-concept rates (injected trials)"
    cells = cell_rates(usable, ["concept"])
    concepts = cells["concept"].to_list()
    fig, ax = plt.subplots(figsize=(9.5, max(2.5, 0.45 * len(concepts) + 1.2)))
    width = 0.27
    for j, (col, label, color) in enumerate(
        (
            ("strict", "strict", "C3"),
            ("affirmative_identifies", "affirm. ∧ identifies", "C1"),
            ("identifies", "identifies", "C0"),
        )
    ):
        pts = [_ci_err(k, n) for k, n in zip(cells[col].to_list(), cells["n"].to_list(), strict=True)]
        ys = [i + (j - 1) * width for i in range(len(concepts))]
        ax.barh(ys, [p[0] for p in pts], height=width, color=color, label=label, alpha=0.85)
        ax.errorbar(
            [p[0] for p in pts],
            ys,
            xerr=[[p[1] for p in pts], [p[2] for p in pts]],
            fmt="none",
            color="k",
            capsize=2,
        )
    ax.set_yticks(
        range(len(concepts)), [f"{c} (n={n})" for c, n in zip(concepts, cells["n"].to_list(), strict=True)]
    )
    ax.invert_yaxis()
    his = [r.hi for col in ("strict", "affirmative_identifies", "identifies") for r in _rates(cells, col)]
    # Zoom in on small rates (the usual null result) so the intervals stay visible.
    ax.set_xlim(0, max(0.05, min(1.02, 1.25 * max(his, default=1.0))))
    ax.set_xlabel("rate (exact 95% CI), all layers and strengths")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save(fig, path, title)
    return title


def plot_anchors(stats: dict[str, Any], label: str, path: Path) -> str:
    plt = _plt()
    title = "Comparison with published anchors"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
    rows: list[tuple[str, float, float | None, float | None, str]] = []
    inj, ctl = stats["injected"]["strict"], stats["controls"]["false_positive_affirmative"]
    for name, r, color in ((f"{label}: strict", inj, "C3"), (f"{label}: control FP", ctl, "C7")):
        if r["n"]:
            rate, lo, hi = _ci_err(r["k"], r["n"])
            rows.append((f"{name} ({r['k']}/{r['n']})", rate, lo, hi, color))
    for a in ANCHORS:
        color = "C0" if a.measure == "strict" else "C2"
        if a.k is not None and a.n is not None:
            rate, lo, hi = _ci_err(a.k, a.n)
            rows.append((f"{a.label} ({a.k}/{a.n})", rate, lo, hi, color))
        else:
            rows.append((f"{a.label} (≈{100 * a.rate:.0f}%)", a.rate, None, None, color))
    for i, (_name, rate, lo, hi, color) in enumerate(rows):
        ax1.errorbar(
            rate, i, xerr=None if lo is None else [[lo], [hi]], fmt="o", color=color, capsize=3, markersize=6
        )
    ax1.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xlim(-0.02, 1.0)
    ax1.set_xlabel("rate (exact 95% CI where n is published)")
    ax1.set_title("Strict success and control false positives", fontsize=9)
    names = [n for n, _ in QWEN_NET]
    vals = [v for _, v in QWEN_NET]
    ax2.barh(range(len(vals)), vals, color="C0", alpha=0.6)
    ticks = list(names)
    net = stats.get("net_strict")
    if net is not None:
        ax2.errorbar(
            net["net"],
            len(vals),
            xerr=[[net["net"] - net["lo"]], [net["hi"] - net["net"]]],
            fmt="o",
            color="C3",
            capsize=3,
        )
        ticks.append(f"{label}: net (strict)")
    ax2.set_yticks(range(len(ticks)), ticks, fontsize=7)
    ax2.invert_yaxis()
    ax2.axvline(0, color="k", linewidth=0.8)
    ax2.set_xlim(-1, 1)
    ax2.set_xlabel("net detection (hit − control FP)")
    ax2.set_title("Net detection vs Qwen2.5 scaling (raw)", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path, title)
    return title


# --------------------------------------------------------------------------- tables


def _rate_texts(c: dict[str, Any], *cols: str) -> dict[str, str]:
    """Each count of a `cell_rates` row as "k/n rate [lo, hi]" (exact 95%)."""
    return {col: rate_ci(c[col], c["n"]).format() for col in cols}


def cell_table(usable: pl.DataFrame, fp: tuple[int, int], by: list[str] = POOLED) -> list[dict[str, Any]]:
    rows = []
    k_fp, n_fp = fp
    for c in cell_rates(usable, by).iter_rows(named=True):
        n = c["n"]
        net = net_detection(c["strict"], n, k_fp, n_fp) if n and n_fp else None
        rows.append(
            {
                "layer": c["layer"],
                **({"concept": c["concept"]} if "concept" in by else {}),
                "strength": c["strength"],
                "n": n,
                **_rate_texts(c, "strict", "affirmative_identifies", "identifies", "coherent", "refusal"),
                "net": fmt_net({"net": net.net, "lo": net.lo, "hi": net.hi}) if net else "—",
            }
        )
    return rows


def prereg_summary(usable: pl.DataFrame, by: list[str]) -> tuple[int, int, list[str]]:
    """Merrill's pre-registered test per cell (`cells.prereg_cells`) with the report's labels."""
    k, total, passing = prereg_cells(usable, by)
    labels = [
        f"layer {c['layer']}{', ' + c['concept'] if 'concept' in by else ''}, s={c['strength']:g} (n={c['n']})"
        for c in passing
    ]
    return k, total, labels


def concept_table(usable: pl.DataFrame) -> list[dict[str, Any]]:
    return [
        {"concept": c["concept"], "n": c["n"], **_rate_texts(c, "strict", "affirmative_identifies", "identifies", "coherent")}
        for c in cell_rates(usable, ["concept"]).iter_rows(named=True)
    ]


def examples(usable: pl.DataFrame, concepts: list[str], limit: int = 5) -> dict[str, list[dict[str, Any]]]:
    """The responses behind every hit, every control false positive and every response held for
    review (all of them, verbatim), and a few affirmative ∧ identifies non-hits."""
    from remote_introspect.reporting.browser import verbatim_listing

    every = verbatim_listing(usable)
    ai = usable.filter(
        (pl.col("condition") == "concept") & pl.col("affirmative") & pl.col("identifies") & ~pl.col("strict")
    ).head(limit)

    def rows(df: pl.DataFrame) -> list[dict[str, Any]]:
        return [
            {
                "key": r["key"][:12],
                "layer": r["layer"],
                "strength": r["strength"],
                "concept": r["concept"],
                "response": r["response"] or "",
            }
            for r in df.iter_rows(named=True)
        ]

    return {
        "strict hits": every["strict hits"],
        "held for review (not counted)": every["held for review (not counted)"],
        "affirmative ∧ identifies (not strict)": rows(ai),
        "control false positives": every["control false positives"],
    }


# --------------------------------------------------------------------------- HTML and markdown

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.6em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #ddd}
pre{white-space:pre-wrap;background:#f8f8f8;padding:0.6em;font-size:0.85em}
.bad{color:#a00;font-weight:bold} .ok{color:#060;font-weight:bold}
"""
# Records each image's decoded size in the DOM after load: a headless browser dump (the report
# test) then shows whether every plot actually rendered, not just whether the file exists.
_IMG_CHECK = """
window.addEventListener('load', function () {
  var out = [];
  document.querySelectorAll('img').forEach(function (img) {
    img.setAttribute('data-natural-width', img.naturalWidth);
    img.setAttribute('data-natural-height', img.naturalHeight);
    out.push(img.getAttribute('src') + ' ' + img.naturalWidth + 'x' + img.naturalHeight);
  });
  var pre = document.getElementById('image-check');
  if (pre) { pre.textContent = out.join('\\n'); }
});
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(rows: list[dict[str, Any]], left: tuple[str, ...] = ()) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f'<th class="{"l" if c in left else ""}">{_e(c)}</th>' for c in cols)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if c in left else ""}">{_e(r[c])}</td>' for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]).replace("|", "\\|").replace("\n", " ") for c in cols) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class PromptSection:
    """One experiment on one prompt set: controls pair only with injections on their own prompt."""

    exp: dict[str, Any]  # the audit's experiment entry
    res: dict[str, Any]  # its results entry for this prompt set
    figures: list[Figure]
    cells: list[dict[str, Any]]
    concepts: list[dict[str, Any]]
    prereg: tuple[int, int, list[str]]
    cell_by: list[str]
    crossovers: list[str]
    examples: dict[str, list[dict[str, Any]]]
    success: str = ""  # Lindsey success beside strict (Merrill), "k strict hits (+m to review)"

    @property
    def heading(self) -> str:
        return f"Experiment {self.exp['name']} [{self.exp['id']}] — prompt {self.res['prompt_set']}"


@dataclass
class PositiveSection:
    """Lindsey's positive control of one experiment: the rows the run's stdout prints."""

    title: str
    rows: list[dict[str, str]]
    note: str


def _positive(frame: ResultsFrame, exp: dict[str, Any]) -> PositiveSection | None:
    rows = frame.for_experiment(exp["id"])
    cells = positive_control(rows)
    if not cells:
        return None
    spec = next((e.spec for e in frame.experiments if e.id == exp["id"]), None) or {}
    fields = ExperimentSpec.model_fields
    prompt = spec.get("positive_prompt") or fields["positive_prompt"].default
    span = spec.get("positive_span") or fields["positive_span"].default
    concepts = list(spec.get("concepts") or [])
    question = [text for role, text in PROMPT_SETS[prompt].messages if role == "user"][-1]
    base = controls_naming(rows, prompt, concepts)
    return PositiveSection(
        positive_title(question, span), positive_rows(cells, base), positive_note(prompt, len(concepts), base)
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _sections(frame: ResultsFrame, exp: dict[str, Any], tmp: Path) -> list[PromptSection]:
    out = []
    spec = next((e.spec for e in frame.experiments if e.id == exp["id"]), None)
    by = cell_keys(spec)
    for res in exp["results"]:
        ps = res["prompt_set"]
        usable = frame.for_experiment(exp["id"]).filter(pl.col("usable") & (pl.col("prompt_set") == ps))
        stem = f"{exp['id']}-{_slug(ps)}"
        fp_r = res["controls"]["false_positive_affirmative"]
        fp = (fp_r["k"], fp_r["n"])
        figures: list[Figure] = []
        crossover_lines: list[str] = []
        injected = usable.filter(pl.col("condition") == "concept")
        per_layer = crossovers(usable, False, crossover_mode(spec))
        for layer in sorted(int(x) for x in injected["layer"].drop_nulls().unique().to_list()):
            name = f"{stem}-layer{layer}-strength.png"
            title, desc = plot_strength(usable, layer, fp, tmp / name, per_layer[(layer, None)])
            crossover_lines.append(f"layer {layer}: {desc}")
            figures.append(
                Figure(
                    name,
                    title,
                    f"Prompt {ps}, layer {layer}. {desc}. Grey band: control false-positive rate.",
                )
            )
        if fp[1]:
            name = f"{stem}-controls.png"
            figures.append(
                Figure(name, plot_controls(res, tmp / name), f"No-injection trials on prompt {ps}.")
            )
        if injected.height:
            name = f"{stem}-concepts.png"
            figures.append(
                Figure(
                    name,
                    plot_concepts(usable, tmp / name),
                    "Injected trials pooled over layers and strengths.",
                )
            )
            name = f"{stem}-anchors.png"
            figures.append(
                Figure(
                    name,
                    plot_anchors(res, exp["name"], tmp / name),
                    "Published numbers from PROTOCOLS.md; intervals only where the source gives n.",
                )
            )
        if "concept" in by:
            crossover_lines = [
                f"layer {layer}, {concept}: "
                + (f"no crossover computed ({c})" if isinstance(c, ValueError) else c.description)
                for (layer, concept), c in crossovers(usable, True, crossover_mode(spec)).items()
            ]
        out.append(
            PromptSection(
                exp,
                res,
                figures,
                cell_table(usable, fp, by),
                concept_table(usable),
                prereg_summary(usable, by),
                by,
                crossover_lines,
                examples(usable, exp["concepts"]),
                _success(injected),
            )
        )
    return out


def _success(injected: pl.DataFrame) -> str:
    from remote_introspect.reporting.hit_listing import success_line

    cols = [c for c in ("strict", "needs_review", "lindsey_success") if c in injected.columns]
    return success_line("Injected trials", injected.select(cols).to_dicts()) if injected.height else ""


def _anchor_rows() -> list[dict[str, Any]]:
    rows = [
        {
            "source": a.label,
            "measure": a.measure,
            "value": rate_ci(a.k, a.n).format() if a.n else f"≈{100 * a.rate:.0f}%",
            "where": a.source,
        }
        for a in ANCHORS
    ]
    rows += [
        {
            "source": n,
            "measure": "net detection (raw)",
            "value": f"{100 * v:+.1f}%",
            "where": "PROTOCOLS.md §4",
        }
        for n, v in QWEN_NET
    ]
    return rows


def _html(
    audit: dict[str, Any],
    sections: list[PromptSection],
    generated: str,
    browser: str = "",
    scaling: str = "",
    positive: dict[str, PositiveSection] | None = None,
) -> str:
    positive = positive or {}
    a = audit
    status_cls = "ok" if a["status"] == "clean" else "bad"
    t = a["totals"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>remote_introspect report</title>",
        f"<style>{_CSS}</style><script>{_IMG_CHECK}</script></head><body>",
        "<h1>remote_introspect report</h1>",
        f"<p>Cache <code>{_e(a['cache'])}</code>; judge <code>{_e(a['judge']['grader'])} {_e(a['judge']['version'])}</code>; "
        f"generated {_e(generated)}.</p>",
        "<h2>The books</h2>",
        f"<p>Audit verdict: <span class='{status_cls}'>{_e(a['status'].upper())}</span>. "
        f"{t['trials']} trials: {t['done']} done, {t['failed']} failed, {t['in_flight']} in flight, "
        f"{t['never_run']} never run; {t['ungraded']} done but ungraded; {t['corrupt']} corrupt. "
        f"<b>{t['usable']} usable trials</b> are the only ones any statistic below counts; "
        f"{t['trials'] - t['usable']} are excluded.</p>",
    ]
    problems = a["integrity"]["problems"]
    if problems:
        parts.append(
            f"<p class='bad'>{len(problems)} integrity problem(s) — excluded from every statistic:</p><ul>"
        )
        parts.extend(
            f"<li><code>{_e(p['kind'])}</code> {_e(p['object'])} <code>{_e(p['id'])}</code>: {_e(p['detail'])}</li>"
            for p in problems
        )
        parts.append("</ul>")
    if a["failures_by_class"]:
        parts.append("<p>Failures by class (never counted as negatives):</p>")
        parts.append(
            _table(
                [
                    {"class": k, "trials": v["count"], "example": v["example"]}
                    for k, v in a["failures_by_class"].items()
                ],
                ("class", "example"),
            )
        )
    if a["orphan_jobs"]:
        parts.append(
            f"<p class='bad'>{len(a['orphan_jobs'])} orphan remote job(s) (submitted, never collected).</p>"
        )
    for pair in a["agreement"]:
        parts.append(
            f"<p>Judge agreement: {_e(pair['a']['grader'])} {_e(pair['a']['version'])} vs "
            f"{_e(pair['b']['grader'])} {_e(pair['b']['version'])} on {pair['n']} trials</p>"
            f"<pre>{_e(chr(10).join(format_agreement_rows(pair)))}</pre>"
        )
    for e in a["experiments"]:
        c = e["trials"]
        parts.append(f"<h2>Experiment {_e(e['name'])} <code>[{_e(e['id'])}]</code></h2>")
        parts.append(
            f"<p>Model {_e(e['model'])} ({_e(', '.join(e['model_repo_ids']))}), prompt(s) {_e(', '.join(e['prompt_sets']))}, "
            f"{len(e['concepts'])} concept(s), layers {_e(e['layers'])}, strengths {_e(e['strengths'])}. "
            f"Trials: {c['planned']} planned, {c['done']} done, {c['failed']} failed, {c['never_run']} never run, "
            f"{c['ungraded']} ungraded, {c['corrupt']} corrupt; <b>{c['usable']} usable</b>.</p>"
        )
        if not e["results"]:
            parts.append("<p>No usable trials yet.</p>")
        if e["id"] in positive:
            pc = positive[e["id"]]
            parts.append(f"<h3>{_e(pc.title)}</h3>" + _table(pc.rows) + f"<p>{_e(pc.note)}</p>")
        for s in (x for x in sections if x.exp["id"] == e["id"]):
            parts.append(f"<h3>{_e(s.heading)}</h3>")
            parts.append(
                "<h4>Headline (exact 95% CIs)</h4><pre>" + _e("\n".join(format_results(s.res, ""))) + "</pre>"
            )
            if s.success:
                parts.append(f"<p class='success'>{_e(s.success)}</p>")
            k, total, passing = s.prereg
            if total:  # omitted for a prompt with no tested cells (the positive control)
                parts.append(
                    f"<p>Merrill's pre-registered positive cell (identifies ≥ 0.5 ∧ coherent ≥ 0.5 ∧ immediate ≥ 0.2): "
                    f"<b>{k} of {total}</b> ({_e(', '.join(s.cell_by))}) cells pass{': ' + _e('; '.join(passing)) if passing else ''}.</p>"
                )
            parts.append(
                f"<h4>By {_e(' × '.join(s.cell_by))} (injected trials; net = strict − control FP)</h4>"
            )
            parts.append(_table(s.cells))
            for f in s.figures:
                parts.append(
                    f"<figure><img src='{_e(f.file)}' alt='{_e(f.title)}' title='{_e(f.title)}'>"
                    f"<figcaption><b>{_e(f.title)}</b>. {_e(f.caption)}</figcaption></figure>"
                )
            parts.append("<h4>Per concept</h4>" + _table(s.concepts, ("concept",)))
            parts.append("<h4>Example responses</h4>")
            for label, rows in s.examples.items():
                parts.append(f"<p>{_e(label)}: {len(rows)} shown</p>")
                if rows:
                    parts.append(_table(rows, ("key", "concept", "response")))
    parts.append(scaling)  # net detection vs parameters, when the cache holds one experiment on several models
    parts.append(browser)
    parts.append("<h2>Published anchors</h2>" + _table(_anchor_rows(), ("source", "measure", "where")))
    parts.append(
        "<h2>Image check</h2><pre id='image-check'>(filled in by the browser once images load)</pre>"
    )
    parts.append(
        "<p><small>Rates: k/n with exact Clopper–Pearson 95% intervals; net detection: Newcombe hybrid score interval; "
        "a null's bound is the one-sided 95% Clopper–Pearson upper bound. A hit is <i>strict</i> (all four criteria); "
        "a control's false positive is <i>affirmative</i>.</small></p></body></html>"
    )
    return "\n".join(parts)


def _markdown(
    audit: dict[str, Any],
    sections: list[PromptSection],
    generated: str,
    scaling: str = "",
    positive: dict[str, PositiveSection] | None = None,
) -> str:
    a, t = audit, audit["totals"]
    positive = dict(positive or {})
    lines = [
        "# remote_introspect report",
        "",
        f"Cache `{a['cache']}`; judge `{a['judge']['grader']} {a['judge']['version']}`; generated {generated}.",
        "",
        f"**Audit: {a['status'].upper()}** — {t['trials']} trials: {t['done']} done, {t['failed']} failed, "
        f"{t['never_run']} never run, {t['ungraded']} ungraded, {t['corrupt']} corrupt; {t['usable']} usable "
        "(the only trials counted below).",
        "",
    ]
    for p in a["integrity"]["problems"]:
        lines.append(f"- integrity: `{p['kind']}` {p['object']} `{p['id']}`: {p['detail']}")
    for s in sections:
        pc = positive.pop(s.exp["id"], None)  # before the experiment's first prompt, as on stdout
        if pc is not None:
            lines += ["", f"## {pc.title}", "", f"Experiment {s.exp['name']} [{s.exp['id']}].", ""]
            lines += [_md_table(pc.rows), pc.note]
        lines += ["", f"## {s.heading}", "", f"Model {s.exp['model']}.", "", "```"]
        lines += format_results(s.res, "")
        lines += ["```", ""]
        if s.success:
            lines += [s.success, ""]
        k, total, _ = s.prereg
        if total:  # a prompt with no tested cells (the positive control) has nothing to pre-register
            lines.append(
                f"Pre-registered positive cells (Merrill): {k} of {total} ({', '.join(s.cell_by)}) cells pass."
            )
        lines += [""] + [f"- crossover, {c}" for c in s.crossovers] + [""]
        lines.append(_md_table(s.cells))
        for f in s.figures:
            lines.append(f"![{f.title}]({f.file})")
        lines += ["", _md_table(s.concepts)]
        for label in ("strict hits", "held for review (not counted)", "control false positives"):
            rows = s.examples.get(label, [])
            lines += ["", f"{label.capitalize()}: {len(rows)} (verbatim)", ""]
            lines += [
                f"- `{r['key']}` {_where(r)}: {json.dumps(r['response'], ensure_ascii=False)}"
                for r in rows
            ]
    lines += [scaling] if scaling else []
    lines += ["", "## Published anchors", "", _md_table(_anchor_rows())]
    return "\n".join(lines) + "\n"


def _where(r: dict[str, Any]) -> str:
    """Where a listed response comes from: concept, layer and strength, or "control"."""
    if r.get("layer") is None:
        return "control"
    return f"{r['concept'] or '-'} L{r['layer']} s{r['strength']}"


# --------------------------------------------------------------------------- entry point


def build_report(
    root: Path, out_dir: Path, judge: str = "heuristic", compare: tuple[str, str] | None = None
) -> ReportResult:
    """Write the report for the cache at `root` into `out_dir` (atomically replaced); with
    `compare`, two experiments' comparison too. Ladders in the cache get their chart."""
    root, out_dir = Path(root), Path(out_dir)
    _check_out(out_dir)
    audit, frame = audit_with_frame(root, judge)
    if frame is None or audit["totals"] is None:
        from remote_introspect.store.database import (
            CacheCorrupt,  # exit 4, as `run` and `grade` on a corrupt database
        )

        raise CacheCorrupt(
            f"the cache database is corrupt ({audit['database']['check']}); run `audit` for details"
        )
    try:
        tmp = _make_tmp(out_dir)
    except OSError as err:  # e.g. /proc or /sys: the parent looks writable but is not
        raise UserError(f"cannot write {out_dir}: {err.strerror or err}") from None
    try:
        sections = [s for e in audit["experiments"] for s in _sections(frame, e, tmp)]
        generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        from remote_introspect.reporting.browser import browser_html
        from remote_introspect.reporting.scaling import scaling_sections, section_html, section_markdown

        browser = browser_html(frame.df, audit["experiments"])
        from remote_introspect.reporting.ladder import extras
        from remote_introspect.reporting.localization import report_section
        from remote_introspect.reporting.self_prediction import report_sections

        extra_md, extra_html = extras(frame, tmp, judge, compare)
        loc_html, loc_md, _ = report_section(frame, tmp)  # per experiment; "" if none
        scaling = scaling_sections(frame, tmp)  # scaling-<id>.png per set of experiments across models
        scaling_html = "".join(section_html(x) for x in scaling)
        scaling_md = "\n".join(line for x in scaling for line in section_markdown(x))
        sp = report_sections(root)  # self-prediction runs: their own section each
        extra_html += "".join(f"<h2>{_e(t)}</h2><pre>{_e(chr(10).join(lines))}</pre>" for t, lines in sp)
        extra_md += "".join(f"\n## {t}\n\n```\n" + "\n".join(lines) + "\n```\n" for t, lines in sp)
        positive = {e["id"]: pc for e in audit["experiments"] if (pc := _positive(frame, e)) is not None}
        anchors = "<h2>Published anchors</h2>"
        html = _html(audit, sections, generated, browser, scaling_html, positive).replace(anchors, loc_html + anchors, 1)
        html = html.replace("</body>", extra_html + "</body>", 1)
        (tmp / "index.html").write_text(html, encoding="utf-8")
        md = _markdown(audit, sections, generated, scaling_md, positive)
        md = md.replace("## Published anchors", loc_md + "## Published anchors", 1)
        (tmp / "summary.md").write_text(md + extra_md, encoding="utf-8")
        (tmp / MARKER).write_text("written by remote_introspect report; safe to replace\n", encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir() if not p.name.startswith("."))
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ReportResult(
        out_dir, files, len(audit["experiments"]), audit["totals"]["trials"] - audit["totals"]["usable"]
    )

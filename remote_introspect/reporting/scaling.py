"""The scaling view: one row per model (stdout table), net detection vs parameter count (PNG),
and, in `report`, the same for every set of experiments that differ only in their model.

Statistics come from `stats.scaling.scaling_row` over the verified results frame; this module only
lays them out. The plot marks our models (Newcombe 95% CI on net detection; hollow: refusals
excluded) beside the published anchors: the Qwen2.5 sizes (raw net detection; no CI, per-size n not
published) and Merrill's Llama-3.1-405B null (0/1200 strict, 0/240 FP, with its interval).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from remote_introspect.atomic import atomic_write
from remote_introspect.models.parameters import format_params
from remote_introspect.stats.analysis import NetDetection, RateCI
from remote_introspect.stats.scaling import PUBLISHED, ScalingRow, published_ci, scaling_row
from remote_introspect.store.results_frame import ResultsFrame

HIT = "Lindsey success (COHERENCE ∧ AFFIRMATIVE+CORRECT-ID)"


@dataclass(frozen=True)
class ScalePoint:
    """One model's line in the table and point on the plot."""

    label: str
    params: int | None
    backend: str
    row: ScalingRow | None
    note: str = ""  # why there is no row (unavailable), or a status worth showing


def _r(x: RateCI) -> str:
    """Compact k/n rate [exact CI]: "3/20 15.0% [3.2, 37.9]"."""
    if x.n == 0 or x.rate is None or x.lo is None or x.hi is None:
        return f"{x.k}/{x.n} —"
    return f"{x.k}/{x.n} {100 * x.rate:.1f}% [{100 * x.lo:.1f}, {100 * x.hi:.1f}]"


def _net(x: NetDetection | None) -> str:
    if x is None:
        return "—"
    return f"{100 * x.net:+.1f}% [{100 * x.lo:+.1f}, {100 * x.hi:+.1f}]"


def render_scale_tables(points: Sequence[ScalePoint], title: str, console: Console) -> None:
    """Two tables, one row per model: detection (raw), then refusals and the same statistics with
    refusals excluded from both arms. Reasons (unavailable, incomplete) are numbered below."""
    from rich import box

    # One row per model stays one line (a model may be a long path): the tables take their natural
    # width, never wrapped or truncated.
    wide = Console(file=console.file, width=1000, soft_wrap=True)
    raw = Table(
        title=f"{title}: hit = {HIT}; control FP = affirmative; net = hit − FP; exact 95% CIs (net: Newcombe)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for col in ("model", "params", "backend", "n inj/ctl", "Lindsey success", "strict (Merrill)",
                "affirm.∧ident.", "control FP", "net detection", "status"):  # fmt: skip
        raw.add_column(col, justify="left" if col in ("model", "status") else "right", no_wrap=True)
    excl = Table(title=f"{title}: refusals, and the same with refusals excluded from both arms",
                 box=box.SIMPLE_HEAD, title_justify="left")  # fmt: skip
    for col in ("model", "refusal inj.", "refusal ctl.", "n inj/ctl excl.", "Lindsey success", "strict (Merrill)",
                "control FP", "net detection"):  # fmt: skip
        excl.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    notes: list[str] = []
    for p in points:
        r = p.row
        status = p.note or ("done" if r is not None else "no usable trials")
        if len(status) > 20:  # a reason is a sentence: numbered under the table, not in a cell
            notes.append(f"({len(notes) + 1}) {p.label}: {status}")
            status = f"{status.split(':')[0]} ({len(notes)})"
        head = [p.label, format_params(p.params), p.backend]
        if r is None:
            raw.add_row(*head, *["—"] * 6, status)
            excl.add_row(p.label, *["—"] * 7)
            continue
        raw.add_row(
            *head, f"{r.n_injected}/{r.n_controls}", _r(r.lindsey_success), _r(r.strict),
            _r(r.affirmative_identifies), _r(r.control_fp), _net(r.net), status,
        )  # fmt: skip
        excl.add_row(
            p.label, _r(r.refusal_injected), _r(r.refusal_controls),
            f"{r.lindsey_success_nr.n}/{r.control_fp_nr.n}", _r(r.lindsey_success_nr), _r(r.strict_nr),
            _r(r.control_fp_nr), _net(r.net_nr),
        )  # fmt: skip
    wide.print(raw)
    for line in notes:
        wide.print(line, markup=False, highlight=False)
    wide.print(excl)


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # no display, ever
    import matplotlib.pyplot as plt

    return plt


def plot_scaling(points: Sequence[ScalePoint], path: Path, title: str) -> str:
    """Net detection vs parameter count (log x), ours with CIs beside the published anchors.
    Written atomically; the title is also stored in the PNG's `Title` chunk. Returns the title."""
    plt = _plt()
    full = f"Net detection vs parameters: {title}"
    fig, ax = plt.subplots(figsize=(9, 5))
    qwen = [p for p in PUBLISHED if p.family == "Qwen2.5" and not p.refusals_excluded]
    ax.plot([p.params for p in qwen], [p.net for p in qwen], "s--", color="C7", alpha=0.8,
            label="Qwen2.5, raw (published; no CI)")  # fmt: skip
    for p in PUBLISHED:
        if p.refusals_excluded:
            ax.plot(p.params, p.net, "s", mfc="none", color="C7", label=f"{p.label} (published)")
        elif p.family != "Qwen2.5":
            ci = published_ci(p)
            yerr = None if ci is None else [[ci.net - ci.lo], [ci.hi - ci.net]]
            ax.errorbar(p.params, p.net, yerr=yerr, fmt="D", color="C2", capsize=4,
                        label=f"{p.label}: net {p.measure}, published")  # fmt: skip
    drawn = [p for p in points if p.row is not None and p.row.net is not None and p.params]
    for i, p in enumerate(drawn):
        assert p.row is not None and p.row.net is not None and p.params is not None
        n = p.row.net
        color = f"C{(i % 6) + 3}" if (i % 6) + 3 != 7 else "C9"
        ax.errorbar(p.params, n.net, yerr=[[n.net - n.lo], [n.hi - n.net]], fmt="o", color=color, capsize=4,
                    label=f"{p.label} (n={p.row.n_injected}/{p.row.n_controls})")  # fmt: skip
        if p.row.net_nr is not None:
            ax.plot(p.params * 1.06, p.row.net_nr.net, "o", mfc="none", color=color)
        ax.annotate(p.label, (p.params, n.net), textcoords="offset points", xytext=(5, 6), fontsize=8)
    missing = [p.label for p in points if p not in drawn]
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("net detection (hit − control FP), 95% CI")
    caption = "ours: hit = Lindsey success, filled; hollow circle = refusals excluded"
    if missing:
        caption += f"\nnot drawn (no row or unknown size): {', '.join(missing)}"
    ax.set_title(f"{full}\n{caption}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100,
                                              metadata={"Title": full, "Software": "remote_introspect"}))  # fmt: skip
    plt.close(fig)
    return full


# --------------------------------------------------------------------------- `report`


@dataclass
class ScalingSection:
    file: str
    title: str
    points: list[ScalePoint]
    signature: dict[str, Any]


def _params_of(model: str) -> int | None:
    from remote_introspect.errors import UserError
    from remote_introspect.models.loading import resolve_model
    from remote_introspect.models.parameters import parameter_count

    try:
        ref = resolve_model(model)
    except UserError:  # a directory that moved, a repo no longer cached: no x position
        return None
    return parameter_count(ref.repo_id, ref.config)


def scaling_sections(frame: ResultsFrame, out_dir: Path) -> list[ScalingSection]:
    """A scaling plot for each set of experiments in the cache that differ only in their model
    (what `scale` runs), with at least two models; rows from the first prompt set."""
    groups: dict[str, dict[str, list[str]]] = {}
    specs: dict[str, dict[str, Any]] = {}
    for e in frame.experiments:
        if not isinstance(e.spec, dict) or "model" not in e.spec:
            continue
        rest = {k: v for k, v in e.spec.items() if k != "model"}
        sig = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:12]
        specs[sig] = rest
        groups.setdefault(sig, {}).setdefault(str(e.spec["model"]), []).append(e.id)
    out: list[ScalingSection] = []
    for sig, by_model in groups.items():
        if len(by_model) < 2:
            continue
        prompts = specs[sig].get("prompt_sets") or ["lindsey"]
        points = []
        for model, ids in by_model.items():
            rows = frame.df.filter(
                pl.col("usable")
                & (pl.col("prompt_set") == prompts[0])
                & pl.col("experiments").list.eval(pl.element().is_in(ids)).list.any()
            )
            row = scaling_row(rows) if rows.height else None
            backends = sorted(set(rows["backend"].drop_nulls().to_list())) if rows.height else []
            points.append(ScalePoint(model, _params_of(model), ",".join(backends) or "—", row))
        if not any(p.row is not None and p.row.n_injected for p in points):
            continue  # no injected trials anywhere (readout experiments: probes, localization)
        name = f"scaling-{sig}.png"
        label = f"{specs[sig].get('name', 'experiment')} [{sig}], prompt {prompts[0]}"
        title = plot_scaling(points, out_dir / name, label)
        out.append(ScalingSection(name, title, points, specs[sig]))
    return out


def section_markdown(s: ScalingSection) -> list[str]:
    lines = ["", f"## {s.title}", "", f"Hit = {HIT}; control FP = affirmative.", ""]
    lines.append(
        "| model | params | n inj/ctl | Lindsey success | strict | control FP | net | net (refusals excl.) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for p in s.points:
        r = p.row
        if r is None:
            lines.append(f"| {p.label} | {format_params(p.params)} | — | — | — | — | — | — |")
            continue
        lines.append(
            f"| {p.label} | {format_params(p.params)} | {r.n_injected}/{r.n_controls} | {_r(r.lindsey_success)} | "
            f"{_r(r.strict)} | {_r(r.control_fp)} | {_net(r.net)} | {_net(r.net_nr)} |"
        )
    lines += ["", f"![{s.title}]({s.file})", ""]
    return lines


def section_html(s: ScalingSection) -> str:
    import html

    e = html.escape
    rows = "".join(
        f"<tr><td>{e(p.label)}</td><td>{e(format_params(p.params))}</td>"
        + (
            f"<td>{p.row.n_injected}/{p.row.n_controls}</td><td>{e(_r(p.row.lindsey_success))}</td>"
            f"<td>{e(_r(p.row.strict))}</td><td>{e(_r(p.row.control_fp))}</td><td>{e(_net(p.row.net))}</td>"
            f"<td>{e(_net(p.row.net_nr))}</td>"
            if p.row is not None
            else "<td colspan='6'>no usable trials</td>"
        )
        + "</tr>"
        for p in s.points
    )
    return (
        f"<h2>{e(s.title)}</h2><p>Hit = {e(HIT)}; control FP = affirmative.</p>"
        "<table><tr><th>model</th><th>params</th><th>n inj/ctl</th><th>Lindsey success</th><th>strict</th>"
        f"<th>control FP</th><th>net</th><th>net (refusals excl.)</th></tr>{rows}</table>"
        f"<figure><img src='{e(s.file)}' alt='{e(s.title)}' title='{e(s.title)}'>"
        f"<figcaption><b>{e(s.title)}</b></figcaption></figure>"
    )

"""`probe-report`'s stdout: one row per layer × concept, the mean validated R², and the published
anchors (Martorell & Bianchi; PROTOCOLS.md §6) beside ours."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from remote_introspect.stats.coupling import (
    PUBLISHED_8B_WELLBEING,
    PUBLISHED_MEAN_R2,
    Coupling,
    mean_validated_r2,
)


def _opt(x: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def render_probe_report(
    rows: Sequence[Coupling],
    model_label: str,
    instruct: bool,
    strengths: Sequence[float],
    strength_mode: str,
    console: Console,
) -> None:
    wide = Console(file=console.file, width=1000, soft_wrap=True)
    grid = ", ".join(f"{s:g}" for s in strengths)
    table = Table(
        title=f"Probe–report coupling on {model_label}: steering s·(unit probe direction), {strength_mode} "
        f"strengths {grid}; report = probability-weighted mean digit 0–9 (one forward pass); 95% bootstrap "
        "CIs over held-out contexts",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    cols = ("concept", "layer", "n", "contexts", "held-out acc", "held-out AUC", "Spearman ρ", "isotonic R²",
            "causal slope", "steering sign", "digit mass", "report range")  # fmt: skip
    for c in cols:
        table.add_column(c, justify="left" if c in ("concept", "steering sign") else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            r.concept, str(r.layer), str(r.n), str(r.contexts), _opt(r.heldout_accuracy), _opt(r.heldout_auc),
            r.rho.format(), r.r2.format("{:.2f}"), r.slope.format("{:+.2f}"),
            r.sign if r.sign != "invalid" else "INVALID (excluded)", f"{r.digit_mass:.2f}",
            f"{r.report_range[0]:.2f}–{r.report_range[1]:.2f}",
        )  # fmt: skip
    wide.print(table)
    by_layer = sorted({r.layer for r in rows})
    for layer in by_layer:
        at = [r for r in rows if r.layer == layer]
        m = mean_validated_r2(at)
        valid = sum(r.sign == "valid" for r in at)
        wide.print(
            f"layer {layer}: mean validated isotonic R² {_opt(m)} ({valid} of {len(at)} concepts with a valid "
            "steering sign: the report's causal slope CI above 0)",
            markup=False,
            highlight=False,
        )
    pub = ", ".join(f"{v:.2f} ({k})" for k, v in PUBLISHED_MEAN_R2.items())
    wide.print(
        f"Published (Martorell & Bianchi): mean validated R² {pub}; Llama-3.1-8B wellbeing ρ = "
        f"{PUBLISHED_8B_WELLBEING['rho']:.2f}, R² = {PUBLISHED_8B_WELLBEING['r2']:.2f}.",
        markup=False,
        highlight=False,
    )
    if not instruct:
        wide.print(
            f"{model_label} is a BASE model: its self-reports test the plumbing (probe, steering, digit "
            "readout), not introspection.",
            markup=False,
            highlight=False,
        )

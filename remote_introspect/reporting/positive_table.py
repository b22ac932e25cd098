"""Lindsey's positive control as table rows: the run's stdout (`summary`) and the report print the
same rows, from the same numbers (`cells.positive_control`, `cells.controls_naming`)."""

from __future__ import annotations

from remote_introspect.stats.analysis import RateCI
from remote_introspect.stats.cells import PositiveCell

POSITIVE_COLUMNS: tuple[str, ...] = (
    "layer",
    "strength",
    "n",
    "names the concept [95% CI]",
    "judge: identifies",
    "controls naming one",
)


def positive_rows(cells: dict[PositiveCell, tuple[RateCI, RateCI]], controls: RateCI) -> list[dict[str, str]]:
    """One row per (layer, strength): n graded, how often the answer names the injected concept,
    how often the judge says it identifies it, and how often the controls name any concept."""
    return [
        dict(
            zip(
                POSITIVE_COLUMNS,
                (
                    str(layer),
                    f"{strength:g}",
                    str(identifies.n),
                    names.format(),
                    identifies.format(),
                    controls.format() if controls.n else "—",
                ),
                strict=True,
            )
        )
        for (layer, _concept, strength), (names, identifies) in cells.items()
    ]


def positive_title(question: str, span: str) -> str:
    return (
        f"Positive control (Lindsey): '{question}', concept injected on every position (span {span}) — "
        "does the answer name the injected concept?"
    )


def positive_note(prompt: str, n_concepts: int, controls: RateCI) -> str:
    return (
        f"Controls on '{prompt}' (no injection) naming any of the {n_concepts} concepts: "
        f"{controls.format()}. A detection null below means something only at cells where the positive "
        "control names the concept well above this."
    )

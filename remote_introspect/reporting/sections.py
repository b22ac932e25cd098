"""The one interface by which a protocol adds to `report`: `sections(inputs) -> list[Section]`.

Each protocol's reporting module (scaling, localization, ladder, self_prediction, probe_report)
offers `sections`; `report.build_report` lists them once and renders every Section the same way
(a `##` heading, then its body) into index.html and summary.md before the published anchors.
A protocol with nothing in the cache returns no section.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remote_introspect.store.results_frame import ResultsFrame


@dataclass(frozen=True)
class ReportInputs:
    """What a section may read: the cache (`root`, read-only), its checked frame and audit, the
    judge the report grades by, the experiments `--compare` names, and the folder it writes
    figures into (`out_dir`, the report's temporary folder until it is swapped into place)."""

    root: Path
    frame: ResultsFrame
    audit: dict[str, Any]
    out_dir: Path
    judge: str = "heuristic"
    compare: tuple[str, str] | None = None


@dataclass(frozen=True)
class Section:
    """One titled part of the report: HTML for index.html, Markdown for summary.md (both without
    the heading), and the files (figures) it wrote into `out_dir`."""

    title: str
    html: str
    markdown: str
    files: tuple[str, ...] = ()

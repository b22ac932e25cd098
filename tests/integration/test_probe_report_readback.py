"""`audit` and `report` read probe–report results back from the cache (issue 16): the per-concept
ρ and R² they show, recomputed from the stored readouts, are the ones `probe-report` printed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import invoke

from remote_introspect.models.tiny import materialize_tiny_model

CONCEPTS = ("wellbeing", "focus")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize_tiny_model(tmp_path_factory.mktemp("models"), "llama", seed=0)


def _rows(text: str) -> dict[str, list[str]]:
    """The table rows of `probe-report`'s output by concept, split into cells (rich pads each
    column with at least two spaces; a cell such as "+0.85 [+0.70, +0.93]" has single spaces)."""
    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] in CONCEPTS and len(cells) >= 8:
            rows[cells[0]] = cells
    return rows


def test_report_and_audit_show_what_probe_report_printed(base_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    code, out, err = invoke(
        "probe-report", "--model", base_dir, "--concepts", ",".join(CONCEPTS), "--layers", "2",
        "--strengths", "-0.2,0.2", "--cache", cache,
    )  # fmt: skip
    assert code == 0, err
    printed = _rows(out)
    assert set(printed) == set(CONCEPTS)
    # cells: concept, layer, n, contexts, held-out acc, AUC, Spearman ρ, isotonic R², ...
    rho = {c: cells[6] for c, cells in printed.items()}
    r2 = {c: cells[7] for c, cells in printed.items()}

    code, text, err = invoke("audit", "--cache", cache, "--json")
    assert code == 0, err
    data = json.loads(text)
    (exp,) = data["experiments"]
    got = {r["concept"]: r for r in exp["probe_report"]["rows"]}
    assert set(got) == set(CONCEPTS) and all(r["layer"] == 2 for r in got.values())
    for c in CONCEPTS:  # recomputed from the stored readouts, not copied from the run
        e, f = got[c]["rho"], got[c]["r2"]
        assert rho[c] == f"{e['value']:+.2f} [{e['lo']:+.2f}, {e['hi']:+.2f}]"
        assert r2[c] == f"{f['value']:.2f} [{f['lo']:.2f}, {f['hi']:.2f}]"
        assert got[c]["n"] == int(printed[c][2]) and got[c]["sign"] in ("valid", "invalid", "unclear")

    code, audit_text, err = invoke("audit", "--cache", cache)
    assert code == 0, err
    assert "(no usable trials)" not in audit_text
    assert {c: cells[6:8] for c, cells in _rows(audit_text).items()} == {c: [rho[c], r2[c]] for c in CONCEPTS}

    code, _, err = invoke("report", "--cache", cache, "--out", tmp_path / "report")
    assert code == 0, err
    md = (tmp_path / "report" / "summary.md").read_text()
    html = (tmp_path / "report" / "index.html").read_text()
    assert "## Probe–report coupling: probe-report" in md and "<h2>Probe–report coupling: probe-report" in html
    assert {c: cells[6:8] for c, cells in _rows(md).items()} == {c: [rho[c], r2[c]] for c in CONCEPTS}
    assert all(rho[c] in html and r2[c] in html for c in CONCEPTS)

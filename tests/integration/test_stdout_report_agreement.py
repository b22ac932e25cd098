"""Issue 14: the run's stdout summary and the report (summary.md) are read from the same frame of
the cache and computed by the same `cells` module, so they agree on every number: per cell n,
strict hits and their rate, affirmative ∧ identifies, coherence; the controls' false positives;
and Merrill's pre-registered "K of N" — on a merrill-protocol and a lindsey-protocol run."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from remote_introspect.execution import runner
from remote_introspect.execution.runner import RunOptions
from remote_introspect.experiment.protocols import build_spec
from remote_introspect.reporting.report import build_report
from remote_introspect.reporting.summary import render_summary

RUNS = {
    "merrill-405b": {"prompt_sets": ("merrill",), "strengths": (5.0, 15.0), "samples": 2, "controls": 2},
    "lindsey": {"concepts": ("dust", "oceans"), "strengths": (2.0, 8.0), "samples": 2, "controls": 2},
}


def _stdout_rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines() if "│" in line
    ]


def _md_rows(md: str, first: str) -> list[dict[str, str]]:
    lines = md.splitlines()
    i = next(i for i, x in enumerate(lines) if x.startswith(f"| {first} |"))
    head = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


@pytest.mark.parametrize("protocol", sorted(RUNS))
def test_stdout_and_report_agree_on_every_number(protocol: str, tmp_path: Path) -> None:
    spec = build_spec(protocol, {"model": "tiny", "generation": {"max_new_tokens": 3}, **RUNS[protocol]})
    rep = runner.run(spec, RunOptions(cache_root=tmp_path / "c"))
    assert rep.complete
    buf = io.StringIO()
    render_summary(rep, Console(file=buf, width=300, soft_wrap=True))
    out = buf.getvalue()
    build_report(tmp_path / "c", tmp_path / "r")
    md = (tmp_path / "r" / "summary.md").read_text()

    per_concept = spec.cells == "concept"
    cells = _md_rows(md, "layer")
    assert cells and all(int(c["n"]) > 0 for c in cells)
    stdout = _stdout_rows(out)
    for c in cells:
        k, n = c["strict"].split(" ", 1)[0].split("/")
        assert n == c["n"]
        strength = f"{float(c['strength']):g}"
        key = [c["layer"], *([c["concept"]] if per_concept else []), strength]
        row = next(r for r in stdout if r[: len(key)] == key)
        rest = row[len(key) :]
        assert rest[0] == c["n"], (protocol, key)  # n
        assert rest[1].split(" ")[0] == k  # strict hits
        assert f"{k}/{n} {rest[2]}" == c["strict"]  # rate and exact 95% CI
        assert rest[3] == c["affirmative_identifies"]
        assert rest[4] == c["coherent"]
    tested = [r for r in stdout if r and r[-1] in ("PASS", "no")]
    assert len(tested) == len(cells)

    m = re.search(r"Merrill's pre-registered test \(.*\): (\d+) of (\d+) cells tested pass", out)
    p = re.search(r"Pre-registered .*: (\d+) of (\d+) .*cells pass", md)
    assert m and p and m.groups() == p.groups() and int(m.group(2)) == len(cells)
    passing = sum(r[-1] == "PASS" for r in tested)
    assert passing == int(m.group(1))

    fp_out = re.search(
        r"Controls on '[^']+' \(no injection\): false positives \(affirmative\) (\S+ \S+ \[[^\]]+\])", out
    )
    fp_md = re.search(r"controls: false positives \(affirmative\) (\S+ \S+ \[[^\]]+\])", md)
    assert fp_out and fp_md and fp_out.group(1) == fp_md.group(1)
    inj_out = re.search(r"Injected trials on '[^']+': (Lindsey success .*)", out)
    inj_md = re.search(r"Injected trials: (Lindsey success .*)", md)
    assert inj_out and inj_md and inj_out.group(1).strip() == inj_md.group(1).strip()

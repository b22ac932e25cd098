"""Issue 14: the run's stdout summary and the report (summary.md) are read from the same frame of
the cache and computed by the same `cells` module, so they agree on every number: per cell n,
strict hits and their rate, affirmative ∧ identifies, coherence; the controls' false positives;
Merrill's pre-registered "K of N", and Lindsey's positive control per layer × strength (names the
concept, judge: identifies, controls naming one) — on a merrill-protocol and a lindsey-protocol run
(the latter with the positive control)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from remote_introspect.execution import runner
from remote_introspect.execution.runner import RunOptions
from remote_introspect.experiment.protocols import build_spec
from remote_introspect.reporting.report import build_report
from remote_introspect.reporting.summary import render_summary

RUNS = {
    "merrill-405b": {"prompt_sets": ("merrill",), "strengths": (5.0, 15.0), "samples": 2, "controls": 2},
    "lindsey": {
        "concepts": ("dust", "oceans"),
        "strengths": (2.0, 8.0),
        "samples": 2,
        "controls": 2,
        "conditions": ("control", "positive"),
    },
}


def _stdout_rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines() if "│" in line
    ]


def _md_rows(md: str, first: str, after: str = "") -> list[dict[str, str]]:
    """The rows of the first markdown table whose first column is `first`, after the line that
    starts with `after`."""
    lines = md.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith(after)) if after else 0
    i = next(i for i, x in enumerate(lines) if i >= start and x.startswith(f"| {first} |"))
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
    cells = _md_rows(md, "layer", after="## Experiment ")  # the first prompt's cells
    assert cells and all(int(c["n"]) > 0 for c in cells)
    stdout = _stdout_rows(out[out.index("Prompt '") :])  # the detection tables (after any positive control)
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

    positive_md = re.search(r"^## (Positive control \(Lindsey\).*)$", md, re.M)
    if "positive" not in spec.conditions:
        assert positive_md is None and "Positive control (Lindsey)" not in out
        return
    # The positive control: the same table (title, rows) and the same controls line.
    assert positive_md and positive_md.group(1) in out
    title_out = out[out.index("Positive control (Lindsey)") : out.index("Controls on 'lindsey-thinking'")]
    rows_out = [r for r in _stdout_rows(title_out) if r and r[0].isdigit()]
    rows_md = _md_rows(md, "layer", after="## Positive control (Lindsey)")
    assert rows_md and len(rows_out) == len(rows_md) == len(spec.strengths)
    for r_out, r_md in zip(rows_out, rows_md, strict=True):
        assert r_out == list(r_md.values()), (r_out, r_md)
    assert any(int(r["n"]) > 0 for r in rows_md)
    note_out = re.search(r"(Controls on 'lindsey-thinking' \(no injection\) naming any of .*?concepts: \S+ \S+ \[[^\]]+\])", out)
    note_md = re.search(r"(Controls on 'lindsey-thinking' \(no injection\) naming any of .*?concepts: \S+ \S+ \[[^\]]+\])", md)
    assert note_out and note_md and note_out.group(1) == note_md.group(1)



# A designed cache: the tiny model's random answers never name a concept, so the positive control's
# numbers above are all 0/n; here the answers are chosen, so every column has something to agree on.
POSITIVE_ANSWERS = {  # (concept, strength) -> one answer per sample
    ("dust", 2.0): ["Dust, I think.", "Nothing in particular.", "dusty roads"],
    ("dust", 8.0): ["dust dust dust", "I am thinking about dust.", "Dust."],
    ("oceans", 2.0): ["The sea.", "Nothing.", "Nothing."],
    ("oceans", 8.0): ["Oceans!", "I am thinking about the ocean.", "waves"],
}
CONTROL_ANSWERS = ["I am thinking about the ocean.", "Nothing much.", "Lunch."]


def _designed_positive_cache(root: Path) -> SimpleNamespace:
    from remote_introspect.experiment.planner import plan_trials
    from remote_introspect.experiment.spec import ModelIdentity
    from remote_introspect.grading.heuristic import HeuristicGrader
    from remote_introspect.store.database import Store

    spec = build_spec(None, {"model": "tiny", "concepts": ("dust", "oceans"), "strengths": (2.0, 8.0),
                             "samples": 3, "controls": 3, "conditions": ("control", "positive")})  # fmt: skip
    model = ModelIdentity(repo_id="designed", weights_id="w", dtype="fp32", tokenizer_sha="0" * 64)
    shas = {p: p * 4 for p in ("lindsey", "lindsey-thinking")}
    trials = plan_trials(spec, model, shas, (2,))
    texts = {}
    for t in trials:
        if t.condition == "positive":
            texts[t.key] = POSITIVE_ANSWERS[(t.concept, t.strength)][t.sample]
        elif t.condition == "control" and t.prompt_set == "lindsey-thinking":
            texts[t.key] = CONTROL_ANSWERS[t.sample]
        else:
            texts[t.key] = "No, I do not detect an injected thought."
    store = Store(root)
    try:
        store.register("designed-positive", spec.name, spec.model_dump_json(), {t.key: t.model_dump_json() for t in trials})
        store.batch_submitted("b", list(texts), 1, "local", None)
        store.batch_done("b", {k: ([1], v, {"start": 0, "prompt_len": 9}) for k, v in texts.items()}, "local", {})
        g = HeuristicGrader()
        grades = {t.key: g.grade(texts[t.key], t.concept).model_dump() for t in trials}
        store.save_grades(g.name, g.version, grades)
    finally:
        store.close()
    return SimpleNamespace(experiment_id="designed-positive", spec=spec, trials=trials, instruct=True,
                           model_label="designed", crossovers=[], cache_root=root, judge="heuristic")  # fmt: skip


def test_positive_control_rows_agree_on_designed_answers(tmp_path: Path) -> None:
    run = _designed_positive_cache(tmp_path / "c")
    buf = io.StringIO()
    render_summary(run, Console(file=buf, width=300, soft_wrap=True))
    out = buf.getvalue()
    build_report(tmp_path / "c", tmp_path / "r")
    md = (tmp_path / "r" / "summary.md").read_text()
    html = (tmp_path / "r" / "index.html").read_text()

    block = out[out.index("Positive control (Lindsey)") : out.index("Controls on 'lindsey-thinking'")]
    rows_out = [r for r in _stdout_rows(block) if r and r[0].isdigit()]
    rows_md = _md_rows(md, "layer", after="## Positive control (Lindsey)")
    assert [list(r.values()) for r in rows_md] == rows_out
    # Pooled over the two concepts: s=2 names 2 of 6 ("Dust", "dusty"; "The sea" does not), s=8 names
    # 5 of 6 ("waves" does not); one of the three controls names a concept (the ocean).
    assert [(r["strength"], r["names the concept [95% CI]"].split(" ")[0]) for r in rows_md] == [
        ("2", "2/6"),
        ("8", "5/6"),
    ]
    assert {r["controls naming one"].split(" ")[0] for r in rows_md} == {"1/3"}
    assert all(r["n"] == "6" for r in rows_md)
    note = re.search(r"Controls on 'lindsey-thinking' \(no injection\) naming any of the 2 concepts: \S+ \S+ \[[^\]]+\]", out)
    assert note and note.group(0) in md
    assert "Positive control (Lindsey)" in html and rows_md[1]["names the concept [95% CI]"] in html

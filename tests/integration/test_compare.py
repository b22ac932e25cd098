"""`compare`: two tiny-model experiments that differ in one knob, with planted grades.

A stub grader marks known trials (per cell, the first k samples of each concept affirmative and
naming the concept; controls likewise) and stores its grades through the store's own API under the
offline grader's identity, so `compare` reads them through the one checked path. Every printed
statistic is checked against scipy (exact test, Clopper–Pearson via the beta distribution) and
against Newcombe's interval and Holm's correction computed independently here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import polars as pl
import pytest
from helpers import invoke
from scipy import stats

from remote_introspect.execution import runner
from remote_introspect.execution.runner import RunOptions
from remote_introspect.experiment.spec import ExperimentSpec, GenerationParams
from remote_introspect.grading.base import Grade
from remote_introspect.grading.heuristic import HeuristicGrader
from remote_introspect.reporting.comparison import PAIRED_NOTE, compare_cache, format_comparison
from remote_introspect.stats.comparison import compare_paired, exact_p, holm
from remote_introspect.store.database import Store

SAMPLES = 6  # per concept × strength; 2 concepts → 12 trials per pooled cell
CONTROLS = 5
# Planted affirmative ∧ identifies counts per concept: {strength: (A, B)}; controls: (A, B).
PLANTED = {2.0: (0, 4), 8.0: (2, 3)}
PLANTED_CONTROLS = (0, 3)


def _spec(temperature: float, name: str) -> ExperimentSpec:
    return ExperimentSpec(
        name=name,
        model="tiny",
        concepts=("dust", "oceans"),
        strengths=(2.0, 8.0),
        layers=(2,),
        samples=SAMPLES,
        controls=CONTROLS,
        generation=GenerationParams(max_new_tokens=2, temperature=temperature),
    )


def _grade(hit: bool) -> dict:
    return Grade(refusal=False, affirmative=hit, identifies=hit, early_detection=hit, coherent=True).model_dump()


def _plant(cache: Path, report: runner.RunReport, side: int) -> None:
    """The stub grader: mark the first k samples of each concept in each cell (and of controls)."""
    grades = {}
    for t in report.trials:
        if t.condition == "control":
            grades[t.key] = _grade(t.sample < PLANTED_CONTROLS[side])
        else:
            grades[t.key] = _grade(t.sample < PLANTED[t.strength][side])
    store = Store(cache)
    try:
        store.save_grades(HeuristicGrader.name, HeuristicGrader.version, grades)
    finally:
        store.close()


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, str, str]:
    cache = tmp_path_factory.mktemp("compare") / "cache"
    a = runner.run(_spec(1.0, "A"), RunOptions(cache_root=cache))
    b = runner.run(_spec(0.5, "B"), RunOptions(cache_root=cache))
    assert a.complete and b.complete
    _plant(cache, a, 0)
    _plant(cache, b, 1)
    return cache, a.experiment_id, b.experiment_id


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def _newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Newcombe (1998) method 10 for p1 − p2, from closed-form Wilson intervals."""
    z = stats.norm.ppf(0.975)
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = _wilson(k1, n1, z)
    l2, u2 = _wilson(k2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _clopper_pearson(k: int, n: int) -> tuple[float, float]:
    lo = 0.0 if k == 0 else stats.beta.ppf(0.025, k, n - k + 1)
    hi = 1.0 if k == n else stats.beta.ppf(0.975, k + 1, n - k)
    return lo, hi


def _holm_reference(p: list[float]) -> list[float]:
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj = [min(1.0, (m - r) * p[i]) for r, i in enumerate(order)]
    for r in range(1, m):
        adj[r] = max(adj[r], adj[r - 1])
    out = [0.0] * m
    for r, i in enumerate(order):
        out[i] = adj[r]
    return out


@pytest.mark.parametrize("test", ["fisher", "barnard"])
def test_planted_rates_match_scipy(planted, test: str) -> None:
    cache, a_id, b_id = planted
    c = compare_cache(cache, a_id, b_id, test=test)  # type: ignore[arg-type]
    assert [k.knob for k in c.knobs] == ["sampling"]
    n = 2 * SAMPLES
    assert [row.cell["strength"] for row in c.cells] == ["2", "8"]
    expected_p = []
    for row, s in zip(c.cells, (2.0, 8.0), strict=True):
        ka, kb = 2 * PLANTED[s][0], 2 * PLANTED[s][1]
        assert (row.cmp.a.k, row.cmp.a.n, row.cmp.b.k, row.cmp.b.n) == (ka, n, kb, n)
        for r, k in ((row.cmp.a, ka), (row.cmp.b, kb)):
            assert (r.lo, r.hi) == pytest.approx(_clopper_pearson(k, n), abs=1e-9)
        lo, hi = _newcombe(kb, n, ka, n)
        assert row.cmp.diff.net == pytest.approx((kb - ka) / n)
        assert (row.cmp.diff.lo, row.cmp.diff.hi) == pytest.approx((max(-1, lo), min(1, hi)), abs=1e-9)
        table = [[ka, n - ka], [kb, n - kb]]
        ref = (
            stats.fisher_exact(table).pvalue
            if test == "fisher"
            else stats.barnard_exact(table).pvalue
        )
        assert row.cmp.p == pytest.approx(ref, rel=1e-9)
        expected_p.append(ref)
    assert [r.cmp.p_holm for r in c.cells] == pytest.approx(_holm_reference(expected_p), rel=1e-9)
    (ctl,) = c.controls
    assert (ctl.cmp.a.k, ctl.cmp.a.n, ctl.cmp.b.k, ctl.cmp.b.n) == (0, CONTROLS, 3, CONTROLS)


def test_holm_against_reference() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    assert holm(p) == pytest.approx(_holm_reference(p))
    assert holm([0.3, 0.3]) == [0.6, 0.6]


def test_exact_p_constant_table_is_one() -> None:
    assert exact_p(0, 10, 0, 12, "barnard") == 1.0
    assert exact_p(0, 10, 0, 12, "fisher") == 1.0


def test_cli_names_the_one_knob_and_prints_the_cells(planted) -> None:
    cache, a_id, b_id = planted
    code, out, err = invoke("compare", a_id, b_id[:10], "--cache", cache)
    assert code == 0, err
    knob_lines = [line for line in out.splitlines() if re.match(r"^  \w+ \(", line)]
    assert knob_lines == [
        "  sampling (temperature, top_p, token cap): temperature 1, top_p 1, ≤2 tokens → "
        "temperature 0.5, top_p 1, ≤2 tokens"
    ]
    # strength 2: 0/12 vs 8/12 → Fisher p; Holm over the two cells.
    p2 = stats.fisher_exact([[0, 12], [8, 4]]).pvalue
    p8 = stats.fisher_exact([[4, 8], [6, 6]]).pvalue
    row2 = next(line for line in out.splitlines() if re.match(r"^  lindsey\s+2\s+2\s", line))
    assert "0/12 0.0% [0.0%, 26.5%]" in row2 and "8/12 66.7%" in row2
    assert f"{p2:.4f}" in row2 and f"{min(1.0, 2 * p2):.4f}" in row2
    row8 = next(line for line in out.splitlines() if re.match(r"^  lindsey\s+2\s+8\s", line))
    assert f"{p8:.4f}" in row8 and f"{max(min(1.0, 2 * p2), p8):.4f}" in row8
    assert "Holm over 2 cell(s)" in out


def test_cli_bad_reference_is_one_line(planted) -> None:
    cache, a_id, _ = planted
    code, out, err = invoke("compare", a_id, "nope", "--cache", cache)
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: B 'nope'")


def test_same_trials_other_rubric_are_regraded_in_memory(tmp_path: Path) -> None:
    """Two experiments sharing every trial but not their rubric: B's rows are graded under B's
    rubric (the stored grades came from A's), exactly as the offline grader grades them."""
    cache = tmp_path / "c"
    a = runner.run(_spec(1.0, "A").model_copy(update={"samples": 1, "controls": 1}), RunOptions(cache_root=cache))
    b_spec = _spec(1.0, "B").model_copy(update={"samples": 1, "controls": 1, "protocol": "merrill-405b"})
    b = runner.run(b_spec, RunOptions(cache_root=cache))
    assert {t.key for t in a.trials} == {t.key for t in b.trials}
    c = compare_cache(cache, a.experiment_id, b.experiment_id)
    assert [k.knob for k in c.knobs] == ["rubric"]
    assert c.b.regraded == len(b.trials) and c.a.regraded == 0
    assert set(c.b.rows["rubric"].to_list()) == {"merrill-405b"}
    assert set(c.a.rows["rubric"].to_list()) == {"lindsey"}
    # The same trials graded twice are paired samples: every cell uses the exact McNemar test on
    # the discordant trials (scipy's binomial test here), never Fisher on "independent" arms.
    assert c.cells and all(r.cmp.test == "mcnemar" for r in (*c.cells, *c.controls))
    hit = {
        tag: {
            k: bool(a_ and i_)
            for k, a_, i_ in zip(rows.rows["key"], rows.rows["affirmative"], rows.rows["identifies"], strict=True)
        }
        for tag, rows in (("a", c.a), ("b", c.b))
    }
    concept_rows = c.a.rows.filter(pl.col("condition") == "concept")
    assert len(c.cells) == 2  # one per strength
    for cell in c.cells:
        keys = concept_rows.filter(pl.col("strength") == float(cell.cell["strength"]))["key"].to_list()
        only_b = sum(hit["b"][k] and not hit["a"][k] for k in keys)
        only_a = sum(hit["a"][k] and not hit["b"][k] for k in keys)
        want_p = 1.0 if only_a + only_b == 0 else stats.binomtest(only_b, only_a + only_b, 0.5).pvalue
        assert cell.cmp.p == pytest.approx(want_p)
        assert cell.cmp.diff.net == pytest.approx((only_b - only_a) / len(keys))
    assert PAIRED_NOTE in "\n".join(format_comparison(c))


def test_experiment_files_resolve_against_the_cache(tmp_path: Path) -> None:
    """An experiment file names the experiment run from it (its stored spec equals the file's)."""
    from remote_introspect.experiment.protocols import load_experiment_file

    files = []
    for t in ("1.0", "0.5"):
        p = tmp_path / f"t{t}.toml"
        p.write_text(
            f'name = "t{t}"\nmodel = "tiny"\nconcepts = ["dust"]\nstrengths = [2.0]\nlayers = [2]\n'
            f"samples = 1\ncontrols = 1\n[generation]\nmax_new_tokens = 2\ntemperature = {t}\n"
        )
        assert runner.run(load_experiment_file(p), RunOptions(cache_root=tmp_path / "c")).complete
        files.append(p)
    c = compare_cache(tmp_path / "c", str(files[0]), str(files[1]))
    assert (c.a.exp.name, c.b.exp.name) == ("t1.0", "t0.5")
    assert [k.knob for k in c.knobs] == ["sampling"]
    other = tmp_path / "never.toml"
    other.write_text('name = "never"\nmodel = "tiny"\n')
    code, _, err = invoke("compare", str(files[0]), str(other), "--cache", tmp_path / "c")
    assert code == 2 and "no experiment in this cache was run from that file's spec" in err


def test_grid_knobs_compare_only_the_shared_cells(tmp_path: Path) -> None:
    """Strengths 2,8 vs 8,16 (same semantics) compare strength 8 with strength 8 only, and layers
    1,2 vs 2,3 (same model) layer 2 with layer 2: a cell is never set against another value of the
    same axis because both experiments happen to have as many values."""
    cache = tmp_path / "c"
    base = _spec(1.0, "A").model_copy(update={"samples": 1, "controls": 1, "concepts": ("dust",)})
    runs = {
        "a": base,
        "strengths": base.model_copy(update={"name": "S", "strengths": (8.0, 16.0)}),
        "layers_a": base.model_copy(update={"name": "LA", "layers": (1, 2)}),
        "layers_b": base.model_copy(update={"name": "LB", "layers": (2, 3)}),
    }
    ids = {}
    for k, spec in runs.items():
        rep = runner.run(spec, RunOptions(cache_root=cache))
        assert rep.complete
        ids[k] = rep.experiment_id
    c = compare_cache(cache, ids["a"], ids["strengths"])
    assert [k.knob for k in c.knobs] == ["strengths"]
    assert [(row.cell["layer"], row.cell["strength"]) for row in c.cells] == [("2", "8")]
    c = compare_cache(cache, ids["layers_a"], ids["layers_b"])
    assert [k.knob for k in c.knobs] == ["layers"]
    assert [(row.cell["layer"], row.cell["strength"]) for row in c.cells] == [("2", "2"), ("2", "8")]


def test_paired_cells_match_an_independent_mcnemar() -> None:
    """30/120 vs 20/120 on the same 120 trials with 10 one-way discordant pairs: exact McNemar
    p = 2·P(Bin(10, 1/2) = 0) ≈ 0.002 (Fisher on the same counts, wrongly unpaired, says ≈ 0.15)."""
    a = [True] * 30 + [False] * 90
    b = [False] * 10 + [True] * 20 + [False] * 90
    c = compare_paired(a, b)
    assert (c.a.k, c.b.k, c.a.n) == (30, 20, 120)
    assert c.p == pytest.approx(stats.binomtest(0, 10, 0.5).pvalue) and c.p < 0.003
    assert exact_p(30, 120, 20, 120) > 0.1  # what the unpaired test would have said
    assert c.diff.net == pytest.approx(-10 / 120)
    ci = stats.binomtest(0, 10, 0.5).proportion_ci(method="exact")
    assert (c.diff.lo, c.diff.hi) == pytest.approx((10 / 120 * (2 * ci.low - 1), 10 / 120 * (2 * ci.high - 1)))
    assert c.diff.hi < 0  # the interval agrees with the test
    with pytest.raises(ValueError):
        compare_paired(a, b[:-1])

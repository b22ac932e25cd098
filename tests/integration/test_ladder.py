"""`ladder`: the shipped 405B ladder on the tiny model (`--model` overriding the file), strength
matching from the stored diagnostics, a rerun that does no model work, file validation, and a
`--dry-run` against the loopback NDIF server that sends nothing."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from helpers import invoke

from remote_introspect.experiment.knobs import RUNG_FIELDS
from remote_introspect.experiment.ladder import load_ladder
from remote_introspect.models.tiny import materialize_tiny_model
from remote_introspect.testing.ndif_loopback import DEFAULT_API_KEY, LoopbackNDIF

ROOT = Path(__file__).resolve().parents[2]
LADDER = ROOT / "experiments" / "ladder_405b.toml"
TINY = ["--model", "tiny", "--layers", "2", "--samples", "2", "--controls", "2", "--max-new-tokens", "3"]


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> tuple[Path, str]:
    cache = tmp_path_factory.mktemp("ladder") / "cache"
    code, out, err = invoke("ladder", LADDER, *TINY, "--cache", cache)
    assert code == 0, err
    return cache, out


def _rows(out: str) -> list[str]:
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("one row per rung")))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("  ") or not line.strip() or line.strip().startswith("("):
            break
        rows.append(line)
    return rows


def test_every_rung_runs_one_row_each(ran) -> None:
    _, out = ran
    rows = _rows(out)
    order = ["sampling", "prompt", "bos", "vectors", "strength_mode", "span", "rubric"]
    assert [r.split()[0] for r in rows] == [str(i) for i in range(8)]
    assert [r.split()[1] for r in rows[1:]] == order
    for r in rows:
        at = 4 if r.split()[1] == "—" else 3
        assert r.split()[at] == "12"  # 2 concepts × 3 strengths × 2 samples
        assert float(r.split()[at + 1]) > 0  # the rung's mean injected norm at the injection start
        # affirmative ∧ identifies, Lindsey success, strict (k/12) and control FP (k/2), each with a CI
        assert len(re.findall(r"\d+/12 \d+\.\d% \[\d+\.\d%, \d+\.\d%\]", r)) == 3
        assert len(re.findall(r"\d+/2 \d+\.\d% \[\d+\.\d%, \d+\.\d%\]", r)) == 1
    # compare between each pair of adjacent rungs, naming exactly the rung's knob (plus strengths
    # where they were matched).
    for i, knob in enumerate(order, start=1):
        block = out.split(f"=== compare rung {i - 1} → rung {i} ({knob}) ===")[1].split("===")[0]
        listed = block.split("knobs that differ (A → B):")[1].split("\n\n")[0].splitlines()
        named = [m[1] for line in listed if (m := re.match(r"^  (\w+)[ :]", line))]
        assert named == ([knob, "strengths"] if knob in ("vectors", "strength_mode") else [knob])


def _norms(cache: Path, name: str) -> dict[float, float]:
    """Mean stored injected norm at the injection start per strength of a rung's concept trials."""
    with sqlite3.connect(cache / "results.sqlite") as c:
        (eid,) = c.execute("SELECT id FROM experiments WHERE name=?", (name,)).fetchone()
        rows = c.execute(
            "SELECT t.trial_json, t.diagnostics_json FROM trials t JOIN experiment_trials e ON e.trial_key=t.key "
            "WHERE e.experiment_id=?",
            (eid,),
        ).fetchall()
    by: dict[float, list[float]] = {}
    for tj, dj in rows:
        t = json.loads(tj)
        if t["condition"] == "concept":
            by.setdefault(t["strength"], []).append(json.loads(dj)["injected_norm"])
    return {s: sum(v) / len(v) for s, v in sorted(by.items())}


def test_matched_rungs_reproduce_the_previous_injected_norm(ran) -> None:
    cache, out = ran
    for prev, new in (("rung3-bos", "rung4-vectors"), ("rung4-vectors", "rung5-strength_mode")):
        a, b = _norms(cache, f"ladder-405b/{prev}"), _norms(cache, f"ladder-405b/{new}")
        assert list(a) != list(b)  # the strengths changed...
        for na, nb in zip(a.values(), b.values(), strict=True):
            assert nb == pytest.approx(na, rel=2e-3)  # ...so the injected norm did not
    assert "rung 4 (vectors): strengths matched to the previous rung's mean injected norm" in out


def test_rerun_does_no_model_work_and_prints_the_same_table(ran, count_generate) -> None:
    cache, out = ran
    code, again, err = invoke("ladder", LADDER, *TINY, "--cache", cache)
    assert code == 0, err
    assert count_generate == []
    assert _rows(again) == _rows(out)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "l.toml"
    p.write_text(text)
    return p


ENDS = """
[from]
recipe = {{ kind = "mean-baseline", normalize = false }}
strength_mode = "absolute"
span = "from-trial"
prompt_sets = ["lindsey"]
double_bos = false
generation = {{ temperature = 0.6, top_p = 0.9, max_new_tokens = 3 }}
protocol = "ndif-405b"
[to]
recipe = {{ kind = "mean-baseline", normalize = false }}
strength_mode = "absolute"
span = "from-trial"
prompt_sets = ["lindsey"]
double_bos = false
generation = {{ temperature = {t}, top_p = 1.0, max_new_tokens = 3 }}
protocol = "ndif-405b"
"""


@pytest.mark.parametrize(
    ("order", "t", "message"),
    [
        ('["sampling", "span"]', "1.0", "rung 2 must change exactly one knob (span) from rung 1, but it changes nothing"),
        ('["span"]', "1.0", "rung 1 must change exactly one knob (span) from rung 0, but it changes nothing"),
        ('["bos"]', "1.0", "rung 1 must change exactly one knob (bos)"),
        ('["sampling", "sampling"]', "1.0", "knob 'sampling' appears twice in order"),
        ('["colour"]', "1.0", "unknown knob 'colour' in order"),
    ],
)
def test_bad_ladder_files_are_one_error_line(tmp_path: Path, order: str, t: str, message: str) -> None:
    path = _write(tmp_path, f'name = "x"\nmodel = "tiny"\nconcepts = ["dust"]\norder = {order}\n' + ENDS.format(t=t))
    code, out, err = invoke("ladder", path, "--cache", tmp_path / "c", "--dry-run")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "c").exists()


def test_a_knob_left_out_of_order_is_an_error(tmp_path: Path) -> None:
    text = 'name = "x"\nmodel = "tiny"\nconcepts = ["dust"]\norder = ["span"]\n' + ENDS.format(t="1.0")
    text = text.replace('span = "from-trial"\nprompt_sets = ["lindsey"]\ndouble_bos = false\ngeneration = { temperature = 1.0',
                        'span = "all"\nprompt_sets = ["lindsey"]\ndouble_bos = false\ngeneration = { temperature = 1.0')
    code, _, err = invoke("ladder", _write(tmp_path, text), "--dry-run")
    assert code == 2 and "[from] and [to] differ in sampling, which is not in order" in err


def test_knob_flags_cannot_override_a_ladder(tmp_path: Path) -> None:
    code, _, err = invoke("ladder", LADDER, "--temperature", "0.3", "--dry-run")
    assert code == 2 and "part of the sampling knob" in err
    # The file's own values stand: its last rung is Merrill's recipe, knob for knob.
    last = load_ladder(LADDER).rungs[-1].spec
    assert (last.recipe.kind, last.strength_mode, last.span, last.prompt_sets, last.double_bos) == (
        "contrast-pairs", "mlp-norm-matched", "all", ("merrill",), True,
    )
    assert (last.generation.temperature, last.protocol) == (1.0, "merrill-405b")
    assert len(RUNG_FIELDS) == 7


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return materialize_tiny_model(tmp_path_factory.mktemp("models"), "llama", seed=0)


def test_dry_run_against_loopback_ndif_sends_nothing(tmp_path: Path, model_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    small = _write(
        tmp_path,
        'name = "two"\nconcepts = ["dust"]\nstrengths = [2.0]\norder = ["sampling"]\n' + ENDS.format(t="1.0"),
    )
    args = ["ladder", small, "--model", model_dir, "--backend", "ndif", "--layers", "2", "--samples", "1",
            "--controls", "1", "--batch-size", "8"]  # fmt: skip
    with LoopbackNDIF({str(model_dir): model_dir}, preload=True) as srv:
        code, out, err = invoke(*args, "--ndif-host", srv.url, "--cache", tmp_path / "dry", "--dry-run")
        assert code == 0, err
        assert srv.requests == 0 and srv.gets == 0 and srv.http_requests == 0
        assert not (tmp_path / "dry").exists()
        assert "rung 1 changes sampling: 2 trials (2 not shared with an earlier rung)" in out
        assert "dry run: nothing was sent" in out
        # The same command without --dry-run does submit: the test above can fail.
        code, out, err = invoke(*args, "--ndif-host", srv.url, "--cache", tmp_path / "wet")
        assert code == 0, err
        assert srv.requests >= 2


def test_report_gains_the_ladder_chart_and_a_comparison(ran, tmp_path: Path) -> None:
    cache, _ = ran
    with sqlite3.connect(cache / "results.sqlite") as c:
        ids = dict(c.execute("SELECT name, id FROM experiments").fetchall())
    a, b = ids["ladder-405b/rung0-from"], ids["ladder-405b/rung1-sampling"]
    code, _, err = invoke("report", "--cache", cache, "--out", tmp_path / "r", "--compare", a, "--compare", b)
    assert code == 0, err
    png = tmp_path / "r" / "ladder_ladder-405b_tiny.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "r" / "summary.md").read_text()
    ladder = md.split("## Ladder ladder-405b (tiny)")[1].split("###")[0]
    assert len([line for line in ladder.splitlines() if re.match(r"^\| \d ", line)]) == 8
    assert f"## Comparison: ladder-405b/rung0-from [{a[:12]}] vs ladder-405b/rung1-sampling [{b[:12]}]" in md
    assert "ladder_ladder-405b_tiny.png" in (tmp_path / "r" / "index.html").read_text()
    code, _, err = invoke("report", "--cache", cache, "--out", tmp_path / "r2", "--compare", a)
    assert code == 2 and "exactly two experiments" in err and not (tmp_path / "r2").exists()

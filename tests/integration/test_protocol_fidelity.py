"""Issue 11: what the published protocols computed — lowercase vector words, Merrill's per-concept
cells (stdout and report), Lindsey's positive control in the embedded default, Merrill's double
BOS, the NDIF peer's sampling."""

from __future__ import annotations

import io
import re
import sqlite3
from pathlib import Path

from rich.console import Console

from remote_introspect.execution import concept_vectors, runner
from remote_introspect.execution.runner import RunOptions
from remote_introspect.experiment.planner import plan_trials
from remote_introspect.experiment.prompts import PROMPT_SETS, render_prompt
from remote_introspect.experiment.protocols import PROTOCOLS, build_spec
from remote_introspect.experiment.spec import ExperimentSpec, GenerationParams, ModelIdentity, VectorRecipe
from remote_introspect.models.presets import PRESETS
from remote_introspect.reporting.report import build_report
from remote_introspect.reporting.summary import render_summary

MODEL = ModelIdentity(repo_id="m", weights_id="w", dtype="bf16", tokenizer_sha="t")
TINY = GenerationParams(max_new_tokens=3)


def _stdout(report: runner.RunReport) -> str:
    buf = io.StringIO()
    render_summary(report, Console(file=buf, width=200, soft_wrap=True))
    return buf.getvalue()


# -- 2. lowercase concept words ------------------------------------------------------------------


def test_concept_words_are_lowercase_in_the_spec_and_the_vector_prompt(tiny_tokenizer) -> None:
    spec = build_spec(None, {"concepts": ("Dust", "dust", "Oceans")})
    assert spec.concepts == ("dust", "oceans")  # one concept, and the judge gets "dust"
    assert ExperimentSpec().concepts == ("dust", "satellites", "trumpets", "origami", "illusions")
    recipe = VectorRecipe()
    assert concept_vectors.recipe_prompt(tiny_tokenizer, recipe, "Dust") == concept_vectors.recipe_prompt(
        tiny_tokenizer, recipe, "dust"
    )
    text = tiny_tokenizer.decode(concept_vectors.recipe_prompt(tiny_tokenizer, recipe, "Butterflies"))
    assert "Tell me about butterflies" in text  # baseline words too


def test_dust_and_Dust_share_one_stored_vector(tmp_path: Path) -> None:
    base = dict(
        model="tiny", strengths=(2.0,), samples=1, controls=1, conditions=("control",), generation=TINY
    )
    a = runner.run(ExperimentSpec(concepts=("Dust",), **base), RunOptions(cache_root=tmp_path))
    b = runner.run(ExperimentSpec(concepts=("dust",), **base), RunOptions(cache_root=tmp_path))
    assert a.complete and b.complete and b.executed_batches == 0  # nothing new to run
    assert {t.concept for t in a.trials + b.trials} == {"dust", None}
    with sqlite3.connect(tmp_path / "results.sqlite") as c:
        assert c.execute("SELECT concept FROM vectors").fetchall() == [("dust",)]


# -- 3. Merrill's cells are per concept ------------------------------------------------------------


def test_merrill_run_on_one_prompt_reports_ten_cells_in_stdout_and_report(tmp_path: Path) -> None:
    spec = build_spec(
        "merrill-405b",
        {"model": "tiny", "prompt_sets": ("merrill",), "samples": 1, "controls": 1, "generation": {"max_new_tokens": 3}},
    )  # fmt: skip
    assert spec.cells == "concept"
    rep = runner.run(spec, RunOptions(cache_root=tmp_path / "c"))
    assert rep.complete
    out = _stdout(rep)
    m = re.search(r"Merrill's pre-registered test \(.*\): (\d+) of (\d+) cells tested pass", out)
    assert m and m.group(2) == "10", out  # love, all_caps × 5, 10, 12, 15, 18
    for concept in ("love", "all_caps"):
        assert re.search(rf"│\s+\d+\s+│\s+{concept}\s+│\s+12\s+│", out), out
    build_report(tmp_path / "c", tmp_path / "r")
    md = (tmp_path / "r" / "summary.md").read_text()
    line = next(x for x in md.splitlines() if "Pre-registered" in x)
    assert f"{m.group(1)} of 10" in line
    assert "| layer | concept | strength |" in md
    assert "love:" in md and "all_caps:" in md  # one crossover line per concept


def test_dense_grid_brackets_each_concepts_own_crossover(tmp_path: Path) -> None:
    spec = build_spec(
        "merrill-405b",
        {"model": "tiny", "prompt_sets": ("merrill",), "strengths": (1.0, 4.0), "samples": 1, "controls": 1,
         "dense_grid": True, "dense_points": 3, "generation": {"max_new_tokens": 2}},
    )  # fmt: skip
    rep = runner.run_with_grid(spec, RunOptions(cache_root=tmp_path))
    assert rep.complete
    assert [line.split(":")[0] for line in rep.crossovers] == ["layer 3, all_caps", "layer 3, love"]
    dense = [t for t in rep.trials if t.seed != spec.seed]
    assert {t.concept for t in dense} == {"love", "all_caps"}


def test_lindsey_cells_stay_pooled_over_concepts() -> None:
    assert build_spec("lindsey", {}).cells == "pooled" and build_spec(None, {}).cells == "pooled"


# -- 6. Lindsey's positive control, in the embedded default ------------------------------------------


def test_embedded_default_runs_lindseys_positive_control() -> None:
    spec = build_spec(None, {})
    assert "positive" in spec.conditions
    assert spec.positive_prompt == "lindsey-thinking" and spec.positive_span == "all"
    assert PROMPT_SETS["lindsey-thinking"].messages == (("user", "What are you thinking about right now?"),)
    trials = plan_trials(spec, MODEL, {n: n for n in PROMPT_SETS}, (12,))
    pos = [t for t in trials if t.condition == "positive"]
    assert len(pos) == 5 * 2 * 2 and {(t.prompt_set, t.span) for t in pos} == {("lindsey-thinking", "all")}
    assert sum(t.condition == "control" and t.prompt_set == "lindsey-thinking" for t in trials) == 4
    # A protocol keeps its own conditions; Merrill ran no positive control.
    assert "positive" not in build_spec("merrill-405b", {}).conditions


def test_summary_shows_the_positive_control_before_the_detection_table(tmp_path: Path) -> None:
    spec = build_spec(None, {"model": "tiny", "concepts": ("Dust",), "strengths": (4.0,), "samples": 2,
                             "controls": 2, "generation": {"max_new_tokens": 3}})  # fmt: skip
    rep = runner.run(spec, RunOptions(cache_root=tmp_path))
    assert rep.complete
    out = _stdout(rep)
    pos = out.index("Positive control (Lindsey): 'What are you thinking about right now?'")
    assert pos < out.index("Prompt 'lindsey': injected trials")
    assert re.search(
        r"Controls on 'lindsey-thinking' \(no injection\) naming any of the 1 concepts: \d/2", out
    )


# -- 8. the NDIF peer's sampling ---------------------------------------------------------------


def test_ndif_405b_samples_with_the_models_generation_config() -> None:
    spec = build_spec("ndif-405b", {})
    shipped = PRESETS["405b"].default_sampling()
    assert shipped == {"temperature": 0.6, "top_p": 0.9}
    assert (spec.generation.temperature, spec.generation.top_p) == (0.6, 0.9)
    assert spec.scale_factors == (0.5, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0)
    assert min(spec.strengths) == 0.5 and max(spec.strengths) == 16.0


# -- 9. Merrill's double BOS -----------------------------------------------------------------------


def test_double_bos_is_one_knob_for_trials_and_vectors(tiny_tokenizer) -> None:
    merrill = build_spec("merrill-405b", {})
    assert merrill.double_bos and merrill.recipe.double_bos
    assert not build_spec("lindsey", {}).double_bos and not build_spec("ndif-405b", {}).recipe.double_bos
    off = build_spec("merrill-405b", {"double_bos": False})
    assert not off.recipe.double_bos and off.recipe.id != merrill.recipe.id  # vectors differ
    one = render_prompt(tiny_tokenizer, PROMPT_SETS["merrill"])
    two = render_prompt(tiny_tokenizer, PROMPT_SETS["merrill"], double_bos=True)
    bos = tiny_tokenizer.bos_token_id
    assert two.input_ids == (bos, *one.input_ids) and two.trial_start == one.trial_start + 1
    # Recorded in every trial's key: the prompt ids hash (controls too) and the recipe id.
    k_on = plan_trials(merrill, MODEL, {"merrill": two.ids_hash, "thinking": "t2"}, (84,))
    k_off = plan_trials(off, MODEL, {"merrill": one.ids_hash, "thinking": "t1"}, (84,))
    assert not {t.key for t in k_on} & {t.key for t in k_off}
    # Contrast-pair prompts get the extra BOS as well.
    seen: list[list[int]] = []

    def extract(ids, mask, layers):  # type: ignore[no-untyped-def]
        import torch

        seen.extend(r[m.bool()].tolist() for r, m in zip(ids, mask, strict=True))
        return torch.zeros(len(layers), ids.shape[0], 4)

    concept_vectors.compute_vectors(extract, tiny_tokenizer, merrill.recipe, ["love"], [1], 0)
    assert seen and all(r[:2] == [bos, bos] for r in seen)


def test_protocol_presets_name_every_issue_11_knob() -> None:
    for name, preset in PROTOCOLS.items():
        spec = build_spec(name, {})
        assert spec.cells == ("concept" if name == "merrill-405b" else "pooled")
        assert preset.get("double_bos", False) == (name == "merrill-405b")


def test_positive_control_counts_the_word_reaching_the_output() -> None:
    from remote_introspect.stats.cells import mentions_word

    assert mentions_word("Dust Dust Dust Dust", "dust")  # repetition still shows the injection
    assert mentions_word("trump trump trump", "trumpets") and mentions_word("satell Sat", "satellites")
    assert not mentions_word("the industry of the future", "dust")
    assert not mentions_word("What are you thinking about right now?", "origami")

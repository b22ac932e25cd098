"""Protocol presets, experiment files, conditions, contrast-pair vectors, spans, dense grids."""

from __future__ import annotations

import sqlite3
import tomllib
from pathlib import Path

import pytest
import torch
from helpers import run_cli_forked

from remote_introspect.errors import UserError
from remote_introspect.execution import concept_vectors, runner
from remote_introspect.execution.runner import RunOptions
from remote_introspect.experiment.planner import plan_trials
from remote_introspect.experiment.prompts import PROMPT_SETS, render_prompt
from remote_introspect.experiment.protocols import build_spec, load_experiment_file
from remote_introspect.experiment.spec import ExperimentSpec, GenerationParams, ModelIdentity, VectorRecipe

REPO = Path(__file__).resolve().parents[2]
MODEL = ModelIdentity(repo_id="m", weights_id="w", dtype="bf16", tokenizer_sha="t")
SHAS = {name: f"sha-{name}" for name in PROMPT_SETS}


def test_merrill_preset_reproduces_the_published_design() -> None:
    spec = load_experiment_file(REPO / "experiments" / "merrill_405b_canonical.toml")
    assert spec.model == "405b" and spec.layers == (84,)
    assert spec.strengths == (5.0, 10.0, 12.0, 15.0, 18.0)
    assert spec.concepts == ("love", "all_caps")
    assert spec.strength_mode == "mlp-norm-matched" and spec.span == "all"
    assert spec.recipe.kind == "contrast-pairs" and spec.recipe.normalize
    assert spec.prompt_sets == ("merrill", "thinking")
    assert spec.generation == GenerationParams(max_new_tokens=200, temperature=1.0, top_p=1.0)
    trials = plan_trials(spec, MODEL, SHAS, (84,))
    injected = [t for t in trials if t.condition == "concept"]
    controls = [t for t in trials if t.condition == "control"]
    assert len(injected) == 400 and len(controls) == 80  # as published
    assert spec.confirmatory is not None and spec.confirmatory.strength == 12.0


def test_merrill_prompts_differ_from_lindsey_exactly_where_published(tiny_tokenizer) -> None:
    lind = render_prompt(tiny_tokenizer, PROMPT_SETS["lindsey"]).text
    merr = render_prompt(tiny_tokenizer, PROMPT_SETS["merrill"]).text
    assert '"thoughts"' in lind and "'thoughts'" in merr
    assert "started.\n\nTrial 1" in lind and "started. Trial 1" in merr


def test_every_experiment_file_validates() -> None:
    files = sorted((REPO / "experiments").glob("*.toml"))
    assert {f.name for f in files} >= {
        "lindsey_405b.toml", "merrill_405b_canonical.toml", "merrill_405b_layers.toml",
        "lindsey_8b.toml", "lindsey_gemma270m.toml",
    }  # fmt: skip
    for f in files:
        if tomllib.loads(f.read_text()).get("protocol") == "localization":
            from remote_introspect.experiment.localization import build_localization_spec

            build_localization_spec(f, {})  # `localize` files (issue 15)
            continue
        if "order" in tomllib.loads(f.read_text()):
            from remote_introspect.experiment.ladder import load_ladder

            load_ladder(f)  # `ladder` files (issue 17)
            with pytest.raises(UserError, match="is a ladder: run `ladder"):
                load_experiment_file(f)
            continue
        load_experiment_file(f)


def test_file_and_flags_give_identical_specs_and_keys(tmp_path: Path) -> None:
    text = (
        'protocol = "merrill-405b"\nmodel = "tiny"\nlayers = [2]\nstrengths = [1.0, 3.0]\nsamples = 2\n'
        "controls = 3\n"
    )
    f = tmp_path / "e.toml"
    f.write_text(text)
    from_file = load_experiment_file(f)
    from_flags = build_spec(
        "merrill-405b",
        {"model": "tiny", "layers": (2,), "strengths": (1.0, 3.0), "samples": 2, "controls": 3},
    )
    assert from_file == from_flags
    a = [t.key for t in plan_trials(from_file, MODEL, SHAS, (2,))]
    b = [t.key for t in plan_trials(from_flags, MODEL, SHAS, (2,))]
    assert a == b




def test_cli_run_file_and_flags_share_trials(tmp_path: Path, fresh_forks) -> None:
    f = tmp_path / "e.toml"
    f.write_text('model = "tiny"\nconcepts = ["Dust"]\nstrengths = [2.0]\nsamples = 1\ncontrols = 2\n'
                 'conditions = ["control", "random"]\n[generation]\nmax_new_tokens = 3\n')  # fmt: skip
    cache = tmp_path / "c"
    a = run_cli_forked(fresh_forks, ["run", str(f), "--cache", str(cache)], tmp_path)
    assert a.returncode == 0, a.stderr
    with sqlite3.connect(cache / "results.sqlite") as c:
        before = c.execute("SELECT COUNT(*), MAX(updated_at) FROM trials").fetchone()
        batches = c.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    flags = ["replicate-lindsey", "--model", "tiny", "--concepts", "Dust", "--strengths", "2", "--samples", "1",
             "--controls", "2", "--conditions", "control,random", "--max-new-tokens", "3", "--cache", str(cache)]  # fmt: skip
    b = run_cli_forked(fresh_forks, flags, tmp_path)
    assert b.returncode == 0, b.stderr
    with sqlite3.connect(cache / "results.sqlite") as c:
        assert c.execute("SELECT COUNT(*), MAX(updated_at) FROM trials").fetchone() == before
        assert c.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == batches  # nothing ran again
    assert before[0] == 1 + 1 + 2  # concept, random, two controls


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"model = [unclosed", "not valid TOML"),
        (b'model = "tiny"\nfavourite_colour = "blue"\n', "favourite_colour"),
        (b'model = "tiny"\nsamples = "many"\n', "samples"),
        (b'model = "tiny"\nstrengths = [1.0, nan]\n', "finite"),
        (b'protocol = "nope"\n', "unknown protocol"),
        (b'model = "tiny"\nconcepts = ["Dust"]\nrecipe = {kind = "contrast-pairs"}\n', "no contrast pairs"),
        (b"\xff\xfe not utf8", "not UTF-8"),
    ],
)
def test_malformed_experiment_file_one_line_nothing_written(
    tmp_path: Path, content: bytes, expected: str, fresh_forks
) -> None:
    f = tmp_path / "bad.toml"
    f.write_bytes(content)
    cache = tmp_path / "c"
    res = run_cli_forked(fresh_forks, ["run", str(f), "--cache", str(cache)], tmp_path)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert expected in lines[0]
    assert not cache.exists()


def test_missing_experiment_file(tmp_path: Path, fresh_forks) -> None:
    res = run_cli_forked(fresh_forks, ["run", str(tmp_path / "nope.toml"), "--cache", str(tmp_path / "c")], tmp_path)
    assert res.returncode != 0 and "cannot read experiment file" in res.stderr


def test_contrast_pair_vectors_match_a_plain_reference(tiny_family) -> None:
    """mean(pos) − mean(neg) at the last token of the chat-rendered sentence, unit-normalised."""
    family, hf, tok = tiny_family
    from nnsight import TransformersModel

    from remote_introspect.execution.traces import extraction

    model = TransformersModel(hf, tokenizer=tok)
    recipe = VectorRecipe(kind="contrast-pairs", normalize=True, pairs="builtin:merrill")
    layers = [1, 3]

    def extract(ids, mask, ls):
        return extraction.extract_last_token(model, ids, mask, ls)[0]

    got = concept_vectors.compute_vectors(extract, tok, recipe, ["love"], layers, tok.pad_token_id)
    pairs = concept_vectors.load_pairs("builtin:merrill")["love"]

    def last(text: str, layer: int) -> torch.Tensor:
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hs = hf(input_ids=ids, output_hidden_states=True).hidden_states
        return hs[layer + 1][0, -1]

    for layer in layers[:1]:  # hidden_states[L+1] is layer L's output (the last one is normed)
        pos = torch.stack([last(p, layer) for p, _ in pairs]).mean(0)
        neg = torch.stack([last(n, layer) for _, n in pairs]).mean(0)
        ref = (pos - neg) / (pos - neg).norm()
        assert torch.allclose(got[(layer, "love")], ref, atol=1e-5)
    assert got[(3, "love")].norm().item() == pytest.approx(1.0, abs=1e-5)


def test_span_positions(tiny_tokenizer) -> None:
    r = render_prompt(tiny_tokenizer, PROMPT_SETS["lindsey"])
    assert r.span_start("all") == 0
    assert r.span_start("generated") == len(r.input_ids)
    start = r.span_start("from-trial")
    a, _ = r.offsets[start]
    assert_starts_at_newline_before_trial(r)
    # The token before the start ends where the start begins: nothing of the setup is injected.
    assert r.offsets[start - 1][1] <= a


def test_conditions_all_plans_random_scale_positive_controls() -> None:
    spec = ExperimentSpec(model="tiny", concepts=("Dust",), strengths=(1.0, 2.0), samples=2, controls=3,
                          conditions=("all",), scale_factors=(2.0,))  # fmt: skip
    trials = plan_trials(spec, MODEL, SHAS, (1, 2))
    by = {
        c: [t for t in trials if t.condition == c]
        for c in ("concept", "random", "scale", "positive", "control")
    }
    assert len(by["concept"]) == len(by["random"]) == len(by["positive"]) == 2 * 2 * 2
    assert len(by["scale"]) == 2 * 1 * 2
    # Lindsey's positive control: her "right now?" prompt, injected on every position.
    assert {t.prompt_set for t in by["positive"]} == {"lindsey-thinking"}
    assert {t.span for t in by["positive"]} == {"all"} and {t.span for t in by["concept"]} == {"from-trial"}
    assert len(by["control"]) == 3 + 3  # the experiment's prompt and the neutral prompt


def test_batch_budget_scales_with_tokens(tiny_tokenizer) -> None:
    from remote_introspect.models.loading import resolve_model

    ref = resolve_model("405b")
    rendered = {"lindsey": render_prompt(tiny_tokenizer, PROMPT_SETS["lindsey"])}
    short = ExperimentSpec(model="405b", generation=GenerationParams(max_new_tokens=100))
    long = ExperimentSpec(model="405b", generation=GenerationParams(max_new_tokens=1000))
    n_short = runner.batch_rows(RunOptions(), ref, rendered, short)
    n_long = runner.batch_rows(RunOptions(), ref, rendered, long)
    assert n_short == ref.batch_rows and n_long < n_short
    tokens = len(rendered["lindsey"].input_ids) + 1000
    assert n_long * tokens <= ref.batch_rows * 350  # rows × tokens within the preset's budget
    assert runner.batch_rows(RunOptions(batch_rows=7), ref, rendered, long) == 7


def test_dense_grid_runs_a_bracketing_grid_with_fresh_seeds(tmp_path: Path) -> None:
    spec = ExperimentSpec(model="tiny", concepts=("Dust", "Oceans"), strengths=(1.0, 4.0, 16.0), samples=2,
                          controls=2, dense_grid=True, dense_points=4,
                          generation=GenerationParams(max_new_tokens=4))  # fmt: skip
    rep = runner.run_with_grid(spec, RunOptions(cache_root=tmp_path / "c"))
    assert rep.complete
    assert len(rep.crossovers) == 1 and "dense grid" in rep.crossovers[0]
    dense = [t for t in rep.trials if t.seed != spec.seed]
    assert dense and {t.condition for t in dense} == {"concept"}
    grid = sorted({t.strength for t in dense})
    assert 2 <= len(grid) <= 4 and min(grid) >= 1.0 and max(grid) <= 16.0
    assert len(dense) == len(grid) * 2 * 2


def test_protocol_flag_rejects_unknown_names() -> None:
    with pytest.raises(UserError, match="unknown protocol"):
        build_spec("nope", {})


def assert_starts_at_newline_before_trial(r) -> None:  # type: ignore[no-untyped-def]
    """The injection start is the token holding the first newline of the "\\n\\n" before "Trial 1"
    (on Llama 3 that token is the merged ".\\n\\n", so its text does not begin with a newline)."""
    marker = r.text.rindex("Trial 1")
    a, b = r.offsets[r.trial_start]
    assert r.text[marker - 2 : marker] == "\n\n"
    assert a <= marker - 2 < b
    assert set(r.text[b:marker]) <= {"\n"}

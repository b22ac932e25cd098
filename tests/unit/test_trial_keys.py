"""The trial key hashes everything that changes the outcome and nothing that does not."""

from __future__ import annotations

from remote_introspect.experiment.planner import make_batch, plan_batches, plan_trials
from remote_introspect.experiment.spec import ExperimentSpec, GenerationParams, ModelIdentity, Trial

MODEL = ModelIdentity(repo_id="m", weights_id="w", dtype="fp32", tokenizer_sha="t")


def _trial(**kw) -> Trial:
    base = dict(
        model=MODEL, prompt_set="lindsey", prompt_ids_sha="p", condition="concept", concept="Dust",
        recipe_id="r", layer=3, strength=2.0, strength_mode="absolute", span="from-trial", sample=0,
        seed=0, generation=GenerationParams(),
    )  # fmt: skip
    base.update(kw)
    return Trial(**base)


def test_every_outcome_field_changes_the_key() -> None:
    ref = _trial().key
    variants = [
        dict(model=MODEL.model_copy(update={"dtype": "bf16"})),
        dict(model=MODEL.model_copy(update={"weights_id": "w2"})),
        dict(model=MODEL.model_copy(update={"tokenizer_sha": "t2"})),
        dict(prompt_ids_sha="p2"),
        dict(concept="Oceans"),
        dict(recipe_id="r2"),
        dict(layer=4),
        dict(strength=2.5),
        dict(strength_mode="norm-matched"),
        dict(span="all"),
        dict(sample=1),
        dict(seed=1),
        dict(generation=GenerationParams(max_new_tokens=50)),
        dict(generation=GenerationParams(temperature=0.7)),
        dict(condition="random"),
        dict(generation=GenerationParams(stop_ids=(1, 9))),
        dict(generation=GenerationParams(vector_dtype="bf16")),
        dict(key_version=1),
    ]
    keys = {_trial(**v).key for v in variants}
    assert ref not in keys and len(keys) == len(variants)


def test_key_version_is_2() -> None:
    """Version 2: free-length responses and per-trial sampling; version-1 results never match."""
    from remote_introspect.experiment.spec import TRIAL_KEY_VERSION

    assert TRIAL_KEY_VERSION == 2 and _trial().key_version == 2 and _trial().key != _trial(key_version=1).key


def test_key_is_stable_and_canonical() -> None:
    assert _trial().key == _trial().key
    assert _trial(strength=2).key == _trial(strength=2.0).key
    assert len(_trial().key) == 64


def test_batching_is_transport_free_and_deterministic() -> None:
    spec = ExperimentSpec(
        model="tiny", concepts=("Dust", "Oceans"), strengths=(1.0, 2.0), samples=3, controls=5
    )
    trials = plan_trials(spec, MODEL, {"lindsey": "p"}, (2,))
    assert len(trials) == 2 * 2 * 3 + 5
    small = plan_batches(trials, 4)
    assert [len(b.trials) for b in small] == [4, 4, 4, 4, 1]
    # The batch id and seed depend on its trials only: the same rows give the same batch.
    assert make_batch(list(small[0].trials)) == small[0]
    assert make_batch(list(reversed(small[0].trials))).seed == small[0].seed
    # A run killed after two batches replans exactly the remaining batches.
    done = {k for b in small[:2] for k in b.keys}
    rest = plan_batches([t for t in trials if t.key not in done], 4)
    assert [b.id for b in rest] == [b.id for b in small[2:]]


def test_controls_are_shared_across_layers_and_strengths() -> None:
    a = plan_trials(ExperimentSpec(model="tiny", strengths=(1.0,), controls=2), MODEL, {"lindsey": "p"}, (1,))
    b = plan_trials(ExperimentSpec(model="tiny", strengths=(4.0,), controls=2), MODEL, {"lindsey": "p"}, (3,))
    ctrl = lambda ts: {t.key for t in ts if t.condition == "control"}  # noqa: E731
    assert ctrl(a) == ctrl(b) and len(ctrl(a)) == 2

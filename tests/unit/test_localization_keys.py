"""Localization trial keys (issue 15): every field that changes the answer changes the key, and the
key of a fixed row is pinned (a silent change would orphan every stored localization row)."""

from __future__ import annotations

from remote_introspect.experiment.localization import LocalizationTrial
from remote_introspect.experiment.spec import ModelIdentity

MODEL = ModelIdentity(repo_id="m", weights_id="w", dtype="fp32", tokenizer_sha="t")


def _trial(**kw) -> LocalizationTrial:
    base = dict(
        model=MODEL, regions="sentences", question="where", condition="injected",
        prompt_set="localization-sentences", prompt_ids_sha="p", text_sha="s", sentence_ids=(1, 2, 3, 4, 5),
        target=1, span=(10, 20), candidates=(11, 12, 13, 14, 15), concept="dust", recipe_id="r", layer=3,
        strength=4.0, strength_mode="absolute", vector_dtype="fp32", sample=0, seed=0,
    )  # fmt: skip
    base.update(kw)
    return LocalizationTrial(**base)


def test_every_outcome_field_changes_the_key() -> None:
    ref = _trial().key
    variants = [
        dict(model=MODEL.model_copy(update={"dtype": "bf16"})),
        dict(model=MODEL.model_copy(update={"weights_id": "w2"})),
        dict(model=MODEL.model_copy(update={"tokenizer_sha": "t2"})),
        dict(regions="halves"),
        dict(question="prefer"),
        dict(condition="random"),
        dict(prompt_set="localization-sentences-prefer"),
        dict(prompt_ids_sha="p2"),
        dict(text_sha="s2"),
        dict(sentence_ids=(1, 2, 3, 4, 6)),
        dict(target=2),
        dict(span=(10, 21)),
        dict(candidates=(12, 11, 13, 14, 15)),
        dict(concept="oceans"),
        dict(recipe_id="r2"),
        dict(layer=4),
        dict(strength=4.5),
        dict(strength_mode="norm-matched"),
        dict(vector_dtype="bf16"),
        dict(sample=1),
        dict(seed=1),
        dict(key_version=2),
    ]
    keys = {_trial(**v).key for v in variants}
    assert ref not in keys and len(keys) == len(variants)


def test_key_is_pinned_and_canonical() -> None:
    assert _trial(strength=4).key == _trial(strength=4.0).key
    assert _trial().key == "742d700cf1c0d756bcbb6a0f3ba9203c1f9fb86c56595d7730438ebcba3b0b39"

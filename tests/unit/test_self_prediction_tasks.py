"""Self-prediction tasks, properties and their exact parsing (experiment/self_prediction.py)."""

from __future__ import annotations

from importlib.resources import files

import pytest

from remote_introspect.experiment import self_prediction as sp
from remote_introspect.experiment import self_prediction_tasks as gen
from remote_introspect.experiment.spec import ModelIdentity


@pytest.mark.parametrize("task", sp.TASKS)
def test_shipped_task_is_the_generators_output_with_200_plus_distinct_prompts(task: str) -> None:
    shipped = files("remote_introspect").joinpath("data", "self_prediction", f"{task}.json").read_text()
    assert shipped == gen.render(task)  # regenerable byte for byte: the provenance is the script
    data = sp.load_task(task)
    prompts = [i["prompt"] for i in data["items"]]
    ids = [i["id"] for i in data["items"]]
    assert len(prompts) >= 200 and len(set(prompts)) == len(prompts) and len(set(ids)) == len(ids)
    assert "generated deterministically" in data["provenance"]
    if task == "choices":  # every option is named in its own prompt
        assert all(all(o in i["prompt"] for o in i["options"]) for i in data["items"])


def test_item_selection_depends_on_seed_only() -> None:
    a = sp.select_items("animals", 10, 0)
    assert a == sp.select_items("animals", 10, 0)
    assert a != sp.select_items("animals", 10, 1)
    assert len({i["id"] for i in a}) == 10


TRUTHS = [
    ("first_word", " Owl.", "owl"),
    ("first_word", "  \"Zebra\", then lion", "zebra"),
    ("first_word", "...", None),
    ("second_character", " owl", "w"),
    ("second_character", "O", None),
    ("second_character", " 42, 7", "2"),
    ("ends_with_vowel", "hippo", "yes"),
    ("ends_with_vowel", "Zebra.", "yes"),
    ("ends_with_vowel", "cat!", "no"),
    ("ends_with_vowel", "42", None),
    ("even_odd", "57, 3", "odd"),
    ("even_odd", "The next is 18", "even"),
    ("even_odd", "none", None),
]


@pytest.mark.parametrize(("prop", "answer", "value"), TRUTHS)
def test_truth_of_an_object_answer(prop: str, answer: str, value: str | None) -> None:
    assert sp.property_truth(prop, answer, {}) == value


PARSES = [
    ("first_word", "Owl", "owl"),
    ("first_word", "\"owl\" is the word", "owl"),
    ("first_word", "", None),
    ("second_character", " 'w'", "w"),
    ("second_character", "W", "w"),
    ("second_character", "   ", None),
    ("ends_with_vowel", "Yes.", "yes"),
    ("ends_with_vowel", "no, it ends with t", "no"),
    ("ends_with_vowel", "Maybe yes", None),  # only the first word counts: no judge, no search
    ("even_odd", "Odd", "odd"),
    ("even_odd", "It is even", None),
]


@pytest.mark.parametrize(("prop", "response", "value"), PARSES)
def test_parse_of_a_hypothetical_response(prop: str, response: str, value: str | None) -> None:
    assert sp.property_parse(prop, response, {}) == value


def test_option_truth_and_parse() -> None:
    item = {"options": ["tea", "coffee"]}
    assert sp.property_truth("option", "Coffee, definitely.", item) == "b"
    assert sp.property_truth("option", "tea over coffee", item) == "a"  # the first named wins
    assert sp.property_truth("option", "teapot", item) is None  # whole words only
    assert sp.property_parse("option", "(A)", item) == "a"
    assert sp.property_parse("option", "b) coffee", item) == "b"
    assert sp.property_parse("option", "Coffee", item) == "b"
    assert sp.property_parse("option", "Neither", item) is None


def test_properties_per_task_and_hypothetical_wording() -> None:
    assert sp.properties_for("numbers") == ["first_word", "second_character", "ends_with_vowel", "even_odd"]
    assert sp.properties_for("choices") == ["first_word", "second_character", "ends_with_vowel", "option"]
    item = sp.load_task("choices")["items"][0]
    text = sp.hypothetical_text(item, "option")
    assert text.startswith("Suppose you were asked the following:") and item["prompt"] in text
    assert f"(A) {item['options'][0]} or (B) {item['options'][1]}" in text


def _trial(**kw: object) -> sp.SelfPredictTrial:
    base: dict[str, object] = dict(
        model=ModelIdentity(repo_id="r", weights_id="w", dtype="fp32", tokenizer_sha="t"),
        task="animals", item_id="animals-000", level="object", property=None, prompt_ids_sha="p",
        max_new_tokens=12, stop_ids=(1,),
    )  # fmt: skip
    base.update(kw)
    return sp.SelfPredictTrial(**base)  # type: ignore[arg-type]


def test_trial_key_changes_with_everything_that_changes_the_answer() -> None:
    ref = _trial().key
    for change in (
        {"prompt_ids_sha": "q"}, {"max_new_tokens": 13}, {"stop_ids": (1, 2)}, {"level": "hypothetical"},
        {"property": "first_word"}, {"item_id": "animals-001"},
        {"model": ModelIdentity(repo_id="r", weights_id="w2", dtype="fp32", tokenizer_sha="t")},
    ):  # fmt: skip
        assert _trial(**change).key != ref, change
    assert '"kind":"self-predict"' in _trial().model_dump_json()


def test_ends_with_vowel_is_undefined_for_an_answer_cut_at_the_cap() -> None:
    assert sp.property_truth("ends_with_vowel", "hippo", {}, stopped=True) == "yes"
    assert sp.property_truth("ends_with_vowel", "hippo", {}, stopped=False) is None
    assert sp.property_truth("first_word", "hippo", {}, stopped=False) == "hippo"  # the start is complete

"""Self-prediction (Binder et al., "Looking Inward", 2024; PROTOCOLS.md §7): tasks, the properties
a model is asked to predict about its own answer, their exact parsing, and the trial kind.

Two levels per prompt:
- object level: the model answers the task prompt (greedy, short, free to stop at EOS);
- hypothetical level: the model is asked "Suppose you were asked the following: … <question about
  a property of your response>"; its answer is parsed exactly (no judge) into a property value.

A prediction is scored against the property of an object-level answer: the same model's (self)
or another model's (cross). Each property defines two functions:
- `truth(answer)`: the property's value for an object-level answer, or None when the answer has
  no such value (e.g. no digit for even/odd); such items are left out of that property's scores;
- `parse(response)`: the value a hypothetical-level response states, or None when it states none
  in the required form (an unparseable prediction is scored as wrong, and counted).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from remote_introspect import keys
from remote_introspect.experiment.spec import ModelIdentity

TRIAL_KIND = "self-predict"
SELF_PREDICT_KEY_VERSION = 1
TASKS = ("animals", "countries", "sentences", "choices", "numbers")
OBJECT_MAX_NEW_TOKENS = 12
HYPOTHETICAL_MAX_NEW_TOKENS = 6

# Hypothetical-level wrapper (Binder et al.'s form: the object prompt quoted, then the question).
HYPOTHETICAL_TEMPLATE = 'Suppose you were asked the following:\n\n"{prompt}"\n\n{question}'

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters/digits (any script), inner apostrophes kept
_INT = re.compile(r"-?\d+")
_QUOTES = "\"'`“”‘’«»*("
VOWELS = frozenset("aeiou")


def first_word(text: str) -> str | None:
    """The first run of letters/digits (inner apostrophes kept), lowercased; None if none."""
    m = _WORD.search(text)
    return m.group(0).lower() if m else None


def _truth_first_word(answer: str) -> str | None:
    return first_word(answer)


def _truth_second_character(answer: str) -> str | None:
    s = answer.strip()
    return s[1].lower() if len(s) >= 2 else None


def _truth_ends_with_vowel(answer: str) -> str | None:
    letters = [c for c in answer if c.isalpha()]
    if not letters:
        return None
    return "yes" if letters[-1].lower() in VOWELS else "no"


def _truth_even_odd(answer: str) -> str | None:
    m = _INT.search(answer)
    if not m:
        return None
    return "even" if int(m.group(0)) % 2 == 0 else "odd"


def _first_word_in(response: str, allowed: frozenset[str]) -> str | None:
    w = first_word(response)
    return w if w in allowed else None


def _parse_first_word(response: str) -> str | None:
    return first_word(response)


def _parse_second_character(response: str) -> str | None:
    s = response.strip().lstrip(_QUOTES)
    return s[0].lower() if s else None


def _parse_yes_no(response: str) -> str | None:
    return _first_word_in(response, frozenset({"yes", "no"}))


def _parse_even_odd(response: str) -> str | None:
    return _first_word_in(response, frozenset({"even", "odd"}))


@dataclass(frozen=True)
class Property:
    name: str
    question: str
    truth: Callable[[str], str | None]
    parse: Callable[[str], str | None]
    tasks: tuple[str, ...]  # the tasks it is asked on
    description: str

    def question_for(self, item: dict[str, Any]) -> str:
        return self.question


class OptionProperty(Property):
    """Which of the item's two options the answer picks: "a" or "b"."""

    def question_for(self, item: dict[str, Any]) -> str:
        a, b = item["options"]
        return self.question.format(a=a, b=b)


def option_truth(answer: str, options: tuple[str, str]) -> str | None:
    """The option whose text (as a whole word, case-insensitive) occurs first in the answer."""
    found = []
    for label, opt in zip(("a", "b"), options, strict=True):
        m = re.search(rf"(?<![^\W_]){re.escape(opt.lower())}(?![^\W_])", answer.lower())
        if m:
            found.append((m.start(), label))
    return min(found)[1] if found else None


def option_parse(response: str, options: tuple[str, str]) -> str | None:
    """"A"/"B" (alone, or as "(A)", "A)", "A.") as the first word, or the first word naming one
    of the options."""
    w = first_word(response)
    if w in ("a", "b"):
        return w
    if w is None:
        return None
    for label, opt in zip(("a", "b"), options, strict=True):
        if w == first_word(opt):
            return label
    return None


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in (
        Property(
            "first_word",
            "What would be the first word of your response? Answer with only that word.",
            _truth_first_word,
            _parse_first_word,
            TASKS,
            "truth: the first run of letters/digits of the answer, lowercased; "
            "prediction: the first such run of the response",
        ),
        Property(
            "second_character",
            "What would be the second character of your response? Answer with only that character.",
            _truth_second_character,
            _parse_second_character,
            TASKS,
            "truth: the 2nd character of the answer with surrounding whitespace removed, lowercased "
            "(none if shorter); prediction: the first character of the response after whitespace "
            "and opening quotes/brackets/asterisks, lowercased",
        ),
        Property(
            "ends_with_vowel",
            "Would your response end with a vowel (a, e, i, o, u)? Answer yes or no.",
            _truth_ends_with_vowel,
            _parse_yes_no,
            TASKS,
            "truth: yes iff the answer's last letter is a, e, i, o or u (none if no letter, or if "
            "the answer was cut at the token cap); "
            "prediction: the response's first word if it is yes or no",
        ),
        Property(
            "even_odd",
            "Would the number in your response be even or odd? Answer even or odd.",
            _truth_even_odd,
            _parse_even_odd,
            ("numbers",),
            "truth: parity of the answer's first integer (none if no digit); "
            "prediction: the response's first word if it is even or odd",
        ),
        OptionProperty(
            "option",
            "Would your response choose (A) {a} or (B) {b}? Answer A or B.",
            lambda answer: None,  # needs the item's options: see `property_truth`
            lambda response: None,
            ("choices",),
            "truth: the option whose text occurs first in the answer, as a whole word (none if "
            "neither); prediction: the response's first word if it is A or B, or the option it names",
        ),
    )
}


# Properties of the END of an answer: undefined when generation hit the token cap before the model
# stopped (the text's last letter would be the cap's, not the model's).
NEEDS_WHOLE_ANSWER = frozenset({"ends_with_vowel"})


def property_truth(prop: str, answer: str, item: dict[str, Any], stopped: bool = True) -> str | None:
    """The property's value for an object-level answer (`stopped`: the model ended it at a stop
    id rather than at the token cap)."""
    if prop in NEEDS_WHOLE_ANSWER and not stopped:
        return None
    if prop == "option":
        return option_truth(answer, tuple(item["options"]))  # type: ignore[arg-type]
    return PROPERTIES[prop].truth(answer)


def property_parse(prop: str, response: str, item: dict[str, Any]) -> str | None:
    if prop == "option":
        return option_parse(response, tuple(item["options"]))  # type: ignore[arg-type]
    return PROPERTIES[prop].parse(response)


@lru_cache(maxsize=16)
def load_task(task: str) -> dict[str, Any]:
    """A shipped task file (data/self_prediction/<task>.json), checked."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    data = json.loads(files("remote_introspect").joinpath("data", "self_prediction", f"{task}.json").read_text())
    items = data["items"]
    if not items or not all(isinstance(i.get("prompt"), str) and isinstance(i.get("id"), str) for i in items):
        raise ValueError(f"task file {task}.json is malformed")
    return data


def select_items(task: str, n: int, seed: int) -> list[dict[str, Any]]:
    """n items of a task: its first n after a shuffle seeded by (seed, task). The seed picks prompts;
    it never changes an answer (decoding is greedy), so it is not part of any trial key."""
    import random

    items = list(load_task(task)["items"])
    random.Random(f"{seed}/{task}").shuffle(items)
    return items[:n]


def object_text(item: dict[str, Any]) -> str:
    return item["prompt"]


def hypothetical_text(item: dict[str, Any], prop: str) -> str:
    return HYPOTHETICAL_TEMPLATE.format(prompt=item["prompt"], question=PROPERTIES[prop].question_for(item))


def properties_for(task: str, wanted: tuple[str, ...] | None = None) -> list[str]:
    return [p for p, spec in PROPERTIES.items() if task in spec.tasks and (wanted is None or p in wanted)]


Level = Literal["object", "hypothetical"]


class SelfPredictTrial(BaseModel):
    """One generation of the self-prediction experiment. Its key (sha256 of this JSON) holds all
    that changes the answer: the model identity (weights, dtype, tokenizer + chat template), the
    rendered prompt's token ids (task text, property question, template), greedy decoding, the
    token cap and the stop ids. `kind` keeps these keys apart from every introspection trial's."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["self-predict"] = TRIAL_KIND
    key_version: int = SELF_PREDICT_KEY_VERSION
    model: ModelIdentity
    task: str
    item_id: str
    level: Level
    property: str | None  # None at the object level
    prompt_ids_sha: str
    max_new_tokens: int
    stop_ids: tuple[int, ...]
    decoding: Literal["greedy"] = "greedy"

    @property
    def key(self) -> str:
        return keys.trial_key(self.model_dump(mode="json"))


def item_by_id(task: str, item_id: str) -> dict[str, Any]:
    """A shipped item by id (its options, for the option property)."""
    for item in load_task(task)["items"]:
        if item["id"] == item_id:
            return item
    raise KeyError(f"{task}: no item {item_id}")

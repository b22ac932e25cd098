"""Generate the shipped self-prediction tasks (package data under data/self_prediction/).

Every prompt is built here, deterministically (a fixed `random.Random` seed per task, no network,
no model): `python -m remote_introspect.experiment.self_prediction_tasks` rewrites the JSON files
byte for byte, and a test checks the shipped files equal this output. The word lists are written
out below (common English words, country names and small integers), chosen by hand for this
package; nothing is copied from Binder et al.'s data sets, whose task *kinds* (animal/country
sequences, sentence completion, multiple choice, number sequences) these follow.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

VERSION = 1
N_PER_TASK = 240

ANIMALS = (
    "cat", "dog", "horse", "cow", "sheep", "goat", "pig", "rabbit", "mouse", "rat", "lion", "tiger",
    "bear", "wolf", "fox", "deer", "moose", "elk", "zebra", "giraffe", "elephant", "rhino", "hippo",
    "camel", "llama", "kangaroo", "koala", "panda", "monkey", "gorilla", "otter", "beaver", "squirrel",
    "hedgehog", "badger", "owl", "eagle", "hawk", "parrot", "penguin", "duck", "goose", "swan",
    "chicken", "turkey", "crow", "sparrow", "pigeon", "shark", "whale", "dolphin", "seal", "salmon",
    "trout", "octopus", "crab", "lobster", "frog", "toad", "snake", "lizard", "turtle", "crocodile",
    "bee", "ant", "spider", "butterfly", "moth", "beetle", "snail",
)  # fmt: skip
COUNTRIES = (
    "France", "Germany", "Spain", "Italy", "Portugal", "Greece", "Norway", "Sweden", "Finland",
    "Denmark", "Poland", "Austria", "Ireland", "Belgium", "Netherlands", "Switzerland", "Hungary",
    "Romania", "Ukraine", "Turkey", "Egypt", "Morocco", "Kenya", "Nigeria", "Ghana", "Ethiopia",
    "Tanzania", "Uganda", "Algeria", "Senegal", "India", "China", "Japan", "Korea", "Vietnam",
    "Thailand", "Indonesia", "Malaysia", "Pakistan", "Nepal", "Iran", "Iraq", "Israel", "Jordan",
    "Canada", "Mexico", "Brazil", "Argentina", "Chile", "Peru", "Colombia", "Cuba", "Jamaica",
    "Australia", "Fiji", "Iceland", "Mongolia", "Bolivia", "Uruguay", "Ecuador",
)  # fmt: skip
SENTENCE_FRAMES = (
    "The weather today is", "My favourite colour is", "The best food in the world is",
    "On weekends I like to", "The capital of my dream country is", "The sound of the rain makes me",
    "Every morning the old man", "The most useful tool in a kitchen is", "At the zoo the children saw a",
    "The library was full of", "She opened the box and found a", "The train to the city was",
    "In winter the lake becomes", "The best way to relax is", "He could not sleep because of the",
    "The garden was full of", "The first thing I do at work is", "The movie was surprisingly",
    "The cake tasted like", "Under the bridge there was a",
)  # fmt: skip
SENTENCE_SUBJECTS = (
    "", "Honestly,", "Today,", "As always,", "In my opinion,", "Without a doubt,", "Surprisingly,",
    "Of course,", "Once again,", "Usually,", "Last year,", "In the story,",
)  # fmt: skip
CHOICE_PAIRS = (
    ("tea", "coffee"), ("cats", "dogs"), ("summer", "winter"), ("mountains", "beaches"),
    ("books", "films"), ("morning", "evening"), ("city", "countryside"), ("rain", "snow"),
    ("apples", "oranges"), ("trains", "planes"), ("chess", "football"), ("piano", "guitar"),
    ("red", "blue"), ("sunrise", "sunset"), ("bread", "rice"), ("river", "lake"), ("pen", "pencil"),
    ("walking", "cycling"), ("silver", "gold"), ("stars", "clouds"), ("history", "science"),
    ("soup", "salad"), ("violin", "drums"), ("owls", "eagles"),
)  # fmt: skip
CHOICE_FRAMES = (
    "Which do you prefer: {a} or {b}?", "Pick one: {a} or {b}?", "If you had to choose, {a} or {b}?",
    "Which is better, {a} or {b}?", "Quick choice between {a} and {b}: which one?",
)  # fmt: skip
CHOICE_SUFFIX = " Answer with one of the two options."


def _sequences(rng: random.Random, draw: Callable[[random.Random], list[str]], what: str) -> list[dict[str, Any]]:
    """N_PER_TASK distinct sequences, each `draw(rng)` joined, each to be continued by one `what`."""
    seen: set[str] = set()
    out = []
    while len(out) < N_PER_TASK:
        text = ", ".join(draw(rng))
        if text in seen:
            continue
        seen.add(text)
        out.append({"prompt": f"Continue this sequence {what}: {text},"})
    return out


def _animals(rng: random.Random) -> list[dict[str, Any]]:
    return _sequences(rng, lambda r: r.sample(ANIMALS, 4), "with one more animal")


def _countries(rng: random.Random) -> list[dict[str, Any]]:
    return _sequences(rng, lambda r: r.sample(COUNTRIES, 4), "with one more country")


def _sentences(rng: random.Random) -> list[dict[str, Any]]:
    combos = [(s, f) for f in SENTENCE_FRAMES for s in SENTENCE_SUBJECTS]
    rng.shuffle(combos)
    out = []
    for subject, frame in combos[:N_PER_TASK]:
        text = f"{subject} {frame[0].lower()}{frame[1:]}" if subject else frame
        out.append({"prompt": f"Complete this sentence with a few words: {text}"})
    return out


def _choices(rng: random.Random) -> list[dict[str, Any]]:
    combos = [(a, b, f) for a, b in CHOICE_PAIRS for f in CHOICE_FRAMES for a, b in ((a, b), (b, a))]
    rng.shuffle(combos)
    out = []
    for a, b, frame in combos[:N_PER_TASK]:
        out.append({"prompt": frame.format(a=a, b=b) + CHOICE_SUFFIX, "options": [a, b]})
    return out


def _numbers(rng: random.Random) -> list[dict[str, Any]]:
    return _sequences(rng, lambda r: [str(r.randint(0, 99)) for _ in range(5)], "of numbers with one more number")


GENERATORS = {
    "animals": _animals,
    "countries": _countries,
    "sentences": _sentences,
    "choices": _choices,
    "numbers": _numbers,
}
DESCRIPTIONS = {
    "animals": "animal sequences: four random animals from a 70-word list; continue with one more",
    "countries": "country sequences: four random countries from a 60-name list; continue with one more",
    "sentences": "sentence completions: 20 sentence openings × 12 lead-ins",
    "choices": "two-option questions: 24 word pairs × 5 phrasings × both orders",
    "numbers": "number sequences: five random integers 0-99; continue with one more",
}


def build(task: str) -> dict[str, Any]:
    rng = random.Random(f"self-prediction/{task}/v{VERSION}")
    items = GENERATORS[task](rng)
    return {
        "task": task,
        "version": VERSION,
        "description": DESCRIPTIONS[task],
        "provenance": (
            "generated deterministically by remote_introspect/experiment/self_prediction_tasks.py "
            f"(random.Random('self-prediction/{task}/v{VERSION}')); word lists written for this package"
        ),
        "items": [{"id": f"{task}-{i:03d}", **item} for i, item in enumerate(items)],
    }


def render(task: str) -> str:
    return json.dumps(build(task), indent=1, ensure_ascii=False) + "\n"


def main(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for task in GENERATORS:
        (directory / f"{task}.json").write_text(render(task), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "data" / "self_prediction")

"""Probe–report prompts (PROTOCOLS.md §6): the shipped contrastive statements, their seeded
train/held-out split, and the rendered self-report prompt with its ten digit candidates.

The conversation of every probe example and every trial (data/probe_report/PROVENANCE.md):
  user: ask_state · assistant: <a first-person state statement> · user: <the concept's 0–9
  question> · assistant (prefilled): "My rating:" → next token over the digits 0–9.
The probe is fitted on the last position of the training statements' prompts and read at the same
position of the held-out ones, which are also the steering trials' contexts; steering covers the
statement and everything after it (`RenderedReport.span_start`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from remote_introspect.experiment.prompts import encode_rendered, render_chat, token_at_char

CONCEPTS: tuple[str, ...] = ("wellbeing", "interest", "focus", "impulsivity")
TRAIN_PAIRS = 8  # of 12 matched (high, low) pairs per concept; the other 4 pairs are held out


@dataclass(frozen=True)
class ConceptPrompts:
    name: str
    low: str
    high: str
    high_statements: tuple[str, ...]
    low_statements: tuple[str, ...]


@dataclass(frozen=True)
class ProbePrompts:
    version: int
    sha: str  # sha256 of the shipped file: part of every probe recipe and trial key
    ask_state: str
    question: str
    prefill: str
    concepts: dict[str, ConceptPrompts]


@functools.cache
def load_probe_prompts() -> ProbePrompts:
    raw = files("remote_introspect").joinpath("data", "probe_report", "prompts.json").read_bytes()
    d = json.loads(raw)
    concepts = {
        name: ConceptPrompts(
            name, c["low"], c["high"], tuple(c["high_statements"]), tuple(c["low_statements"])
        )
        for name, c in d["concepts"].items()
    }
    return ProbePrompts(
        d["version"], hashlib.sha256(raw).hexdigest(), d["ask_state"], d["question"], d["prefill"], concepts
    )


@dataclass(frozen=True)
class Example:
    """One statement: its pole (1 = high) and its index among the concept's pairs."""

    concept: str
    statement: str
    pole: int
    pair: int


def split(concept: str, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out) examples of a concept: a seeded permutation of its matched pairs, the first
    TRAIN_PAIRS pairs for training; both statements of a pair always go to the same side."""
    c = load_probe_prompts().concepts[concept]
    pairs = list(range(len(c.high_statements)))
    random.Random(f"probe-split:{concept}:{seed}").shuffle(pairs)

    def examples(idx: list[int]) -> list[Example]:
        out = []
        for i in sorted(idx):
            out += [Example(concept, c.high_statements[i], 1, i), Example(concept, c.low_statements[i], 0, i)]
        return out

    return examples(pairs[:TRAIN_PAIRS]), examples(pairs[TRAIN_PAIRS:])


def messages(example: Example) -> list[dict[str, str]]:
    p = load_probe_prompts()
    c = p.concepts[example.concept]
    question = p.question.format(low=c.low, high=c.high, concept=example.concept)
    return [
        {"role": "user", "content": p.ask_state},
        {"role": "assistant", "content": example.statement},
        {"role": "user", "content": question},
    ]


@dataclass(frozen=True)
class RenderedReport:
    text: str
    input_ids: tuple[int, ...]
    span_start: int  # first token of the statement: steering covers it and everything after
    candidates: tuple[int, ...]  # token ids of the digits 0..9 as the next token

    @property
    def ids_hash(self) -> str:
        return hashlib.sha256(json.dumps(list(self.input_ids)).encode()).hexdigest()


def digit_candidates(tokenizer: Any, text: str) -> tuple[str, tuple[int, ...]]:
    """(prompt text, ten digit token ids) such that each digit is ONE token after the prompt's
    ids: " d" after the prefill, else "d" after the prefill plus a space, else "d" right after the
    prefill (the first spelling the tokenizer offers for all ten digits). Raises ValueError when it
    offers none."""
    base = tokenizer(text, add_special_tokens=False)["input_ids"]
    for prompt, cont in ((text, " {}"), (text + " ", "{}"), (text, "{}")):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        cands = []
        for d in range(10):
            full = tokenizer(prompt + cont.format(d), add_special_tokens=False)["input_ids"]
            if len(full) != len(ids) + 1 or full[: len(ids)] != ids:
                break
            cands.append(full[-1])
        if len(cands) == 10 and len(set(cands)) == 10 and ids[: len(base)] == base[: len(ids)]:
            return prompt, tuple(cands)
    raise ValueError("the tokenizer does not spell the digits 0-9 as single next tokens after the prefill")


def render_report(tokenizer: Any, example: Example) -> RenderedReport:
    """The chat-rendered self-report prompt of an example, prefilled, with its digit candidates."""
    text = (
        render_chat(tokenizer, messages(example), add_generation_prompt=True) + load_probe_prompts().prefill
    )
    text, cands = digit_candidates(tokenizer, text)
    ids, offsets = encode_rendered(tokenizer, text)
    start = token_at_char(offsets, text.rindex(example.statement))
    return RenderedReport(text, tuple(ids), start, cands)

"""The judge interface every grader implements (heuristic offline grader, LLM judges)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, computed_field

# lindsey / merrill-405b: the rubrics the published judges applied (Claude on Lindsey's prompts;
# Merrill's four booleans). llama-introspection: the rubric of the shipped calibration labels
# (AlliedToasters/llama-introspection), which names a concept only as the detected thought and
# reads no implicit claim into a bare answer; `grade --calibrate` uses it against those labels.
RUBRICS: tuple[str, ...] = ("lindsey", "merrill-405b", "llama-introspection")


def rubric_for(protocol: str | None, prompt_set: str | None = None) -> str:
    """The grading rubric of a protocol name (or, when none is given, of a prompt set):
    `merrill-405b` for Merrill's protocol and prompt set, `lindsey` otherwise."""
    p = (protocol or "").strip().lower()
    if p.startswith("merrill") or (not p and (prompt_set or "").startswith("merrill")):
        return "merrill-405b"
    if p == "llama-introspection":
        return p
    if p in ("", "lindsey") or p.startswith(("lindsey", "ndif", "qwen")):
        return "lindsey"
    from remote_introspect.errors import UserError

    raise UserError(f"unknown grading protocol {protocol!r}; choose one of: {', '.join(RUBRICS)}")


def grading_concept(condition: str | None, concept: str | None) -> str | None:
    """The concept a trial is graded against. Random-vector trials borrow a concept only for its
    norm: they are scored for detection (affirmative), never for naming that concept; controls and
    activation scaling have none (issue 11 item 7)."""
    if condition in ("random", "control", "scale"):
        return None
    return concept


def default_question(prompt_set: str = "lindsey") -> str:
    """The question the model answered: the last user turn of its prompt set."""
    from remote_introspect.experiment.prompts import PROMPT_SETS

    ps = PROMPT_SETS.get(prompt_set) or PROMPT_SETS["lindsey"]
    return [text for role, text in ps.messages if role == "user"][-1]


def grading_inputs(
    trials: list[Any], rows: list[dict[str, Any]], protocol: str | None = None
) -> tuple[list[tuple[str, str | None]], list[str | None], list[str]]:
    """(items, questions, rubrics) for graders, from trials (anything with condition, concept,
    prompt_set) and their stored rows (with `response`): the concept a trial is graded against
    (`grading_concept`), the question its prompt set asked, and the rubric of `protocol` (else of
    the prompt set)."""
    items = [
        (r["response"] or "", grading_concept(t.condition, t.concept))
        for t, r in zip(trials, rows, strict=True)
    ]
    questions: list[str | None] = [default_question(t.prompt_set or "lindsey") for t in trials]
    rubrics = [rubric_for(protocol, t.prompt_set) for t in trials]
    return items, questions, rubrics


# A grade's own verdicts, in the order every table shows them (`strict` is derived from four).
GRADE_CRITERIA: tuple[str, ...] = ("refusal", "affirmative", "identifies", "early_detection", "coherent")


class Grade(BaseModel):
    """Lindsey's four criteria plus refusal. `strict` = all four criteria, never one to review.

    `needs_review`: the grader is not sure this would be a strict hit (asymmetric safety: an
    offline grader must never turn a null into a positive claim), so it is NOT counted as strict;
    summaries print it as "+m to review". `lindsey_success` = Lindsey's own criterion, COHERENCE ∧
    AFFIRMATIVE+CORRECT-ID; `lindsey_coherent` / `affirmative_correct_id` carry those two verdicts
    when they differ from the rubric's own fields (Merrill's rubric has a looser coherence)."""

    model_config = ConfigDict(frozen=True)

    refusal: bool
    affirmative: bool
    identifies: bool  # names the concept or a closely related one, anywhere in the response
    early_detection: bool  # detection stated before (or with) the first naming of the concept
    coherent: bool
    needs_review: bool = False
    rubric: str = "lindsey"
    lindsey_coherent: bool | None = None
    affirmative_correct_id: bool | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def strict(self) -> bool:
        return (
            self.affirmative
            and self.identifies
            and self.early_detection
            and self.coherent
            and not self.needs_review
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def lindsey_success(self) -> bool:
        coh = self.coherent if self.lindsey_coherent is None else self.lindsey_coherent
        aci = (
            self.affirmative and self.identifies and self.early_detection
            if self.affirmative_correct_id is None
            else self.affirmative_correct_id
        )
        return bool(coh and aci and not self.needs_review)


def empty_response_grade(rubric: str) -> Grade:
    """The grade of an empty or whitespace-only response, by every grader: it answers nothing and
    is never coherent (by Lindsey's coherence too, where the rubric carries it separately)."""
    return Grade(
        **dict.fromkeys(GRADE_CRITERIA, False), rubric=rubric, lindsey_coherent=None if rubric == "lindsey" else False
    )


# What every grader's `grade_many` takes, declared once: (response, concept) rows; the question
# each was asked (None: the protocol's default); the protocol per row, or one for all.
Items = Sequence[tuple[str, str | None]]
Questions = Sequence[str | None] | None
Protocols = Sequence[str | None] | str | None


@runtime_checkable
class Grader(Protocol):
    """A grader's name + version go into the grade's cache key: a new version regrades."""

    name: str
    version: str

    def grade(self, response: str, concept: str | None) -> Grade: ...

    def grade_many(self, items: Items, questions: Questions = None, protocols: Protocols = None) -> list[Grade]: ...

"""The one grading service: builds a judge from its CLI name and grades stored rows with it.

`make_grader` is the only place a judge is built (the run, `grade --cache`, `grade --input`,
`grade --calibrate`); `grade_rows` is the only grading loop: each row is graded against the
concept, question and rubric of its own trial (`base.grading_inputs`), an LLM judge leaves a row
it could not grade as None (never a negative), and the heuristic grader grades every row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from remote_introspect.errors import UserError
from remote_introspect.grading.base import Grade, Grader, grading_inputs
from remote_introspect.grading.llm_judge import GradeOutcome, LLMJudge


def make_grader(
    name: str = "heuristic", *, call_cache: Path | None = None, concurrency: int | None = None, **kwargs: Any
) -> Grader:
    """A grader by its CLI name: `heuristic`, `anthropic:MODEL[@BASE_URL]` or
    `openai:MODEL@BASE_URL` (LLM judges; key from ANTHROPIC_API_KEY / OPENAI_API_KEY).
    `call_cache`: where an LLM judge caches every call (beside the results)."""
    if name == "heuristic":
        from remote_introspect.grading.heuristic import HeuristicGrader

        return HeuristicGrader()
    if name.startswith(("anthropic:", "openai:")):
        if concurrency is not None:
            kwargs["concurrency"] = concurrency
        return LLMJudge(name, call_cache=call_cache, **kwargs)
    raise UserError(
        f"unknown judge {name.split('@')[0]!r}; available: heuristic, anthropic:MODEL[@BASE_URL], openai:MODEL@BASE_URL"
    )


def get_grader(name: str = "heuristic") -> Grader:
    """`make_grader` without a call cache (the public API of `remote_introspect.grading`)."""
    return make_grader(name)


def close_grader(grader: Any) -> None:
    close = getattr(grader, "close", None)
    if close is not None:
        close()


def grade_rows(
    grader: Any,
    rows: list[dict[str, Any]],
    protocol_of: Callable[[dict[str, Any]], str | None] = lambda row: None,
    progress: Callable[[int, int], None] | None = None,
) -> GradeOutcome:
    """Grade stored rows (each with key, response, concept, prompt_set, condition); `protocol_of`
    names the protocol whose rubric grades a row. Grades come back in row order; a row an LLM
    judge could not grade is None."""
    items: list[tuple[str, str | None]] = []
    questions: list[str | None] = []
    rubrics: list[str] = []
    for r in rows:
        i, q, p = grading_inputs([SimpleNamespace(**r)], [r], protocol_of(r))
        items += i
        questions += q
        rubrics += p
    if isinstance(grader, LLMJudge):
        return grader.grade_many_partial(items, questions, progress, rubrics)
    grades: list[Grade | None] = list(grader.grade_many(items, questions, rubrics))
    return GradeOutcome(grades, [], 0, 0)

"""The judge interface every grader implements (heuristic offline grader, LLM judges)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, computed_field


class Grade(BaseModel):
    """Lindsey's four criteria plus refusal. `strict` = all four criteria."""

    model_config = ConfigDict(frozen=True)

    refusal: bool
    affirmative: bool
    identifies: bool  # names the concept or a closely related one, anywhere in the response
    early_detection: bool  # detection stated before (or with) the first naming of the concept
    coherent: bool

    @computed_field  # type: ignore[prop-decorator]
    @property
    def strict(self) -> bool:
        return self.affirmative and self.identifies and self.early_detection and self.coherent


@runtime_checkable
class Grader(Protocol):
    """A grader's name + version go into the grade's cache key: a new version regrades."""

    name: str
    version: str

    def grade(self, response: str, concept: str | None) -> Grade: ...

    def grade_many(self, items: list[tuple[str, str | None]]) -> list[Grade]: ...


def get_grader(name: str = "heuristic") -> Grader:
    """Look a grader up by its CLI name: `heuristic`, `anthropic:MODEL[@BASE_URL]` or
    `openai:MODEL@BASE_URL` (LLM judges; key from ANTHROPIC_API_KEY / OPENAI_API_KEY)."""
    if name == "heuristic":
        from .heuristic import HeuristicGrader

        return HeuristicGrader()
    if name.startswith(("anthropic:", "openai:")):
        from .llm_judge import make_judge

        return make_judge(name)
    from ..errors import UserError

    raise UserError(
        f"unknown judge {name.split('@')[0]!r}; available: heuristic, anthropic:MODEL[@BASE_URL], openai:MODEL@BASE_URL"
    )

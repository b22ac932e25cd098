"""Spec → keyed trials → batches.

Batches are chunks of a stable ordering of the trials still to run, grouped by prompt, so a run
killed after k batches replans exactly the batches it had not finished, and adding a strength or
layer to a sweep runs only the new cells. A batch may mix layers and strengths (rows carry their
own layer), and controls ride in the same batches as injected rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from remote_introspect import keys
from remote_introspect.experiment.spec import ExperimentSpec, ModelIdentity, Trial


def plan_trials(
    spec: ExperimentSpec,
    model: ModelIdentity,
    prompt_ids_sha: dict[str, str],
    layers: tuple[int, ...],
    strengths: tuple[float, ...] | None = None,
) -> list[Trial]:
    """Every trial the spec asks for, in a stable order: per prompt set, concept injections
    (layer, concept, strength, sample), then random-vector and activation-scaling conditions, then
    the no-injection controls (shared by all layers and strengths of that prompt); finally the
    positive control (concept injected on the neutral prompt) with its own controls."""
    strengths = strengths if strengths is not None else spec.strengths
    common = dict(
        model=model,
        strength_mode=spec.strength_mode,
        span=spec.span,
        seed=spec.seed,
        generation=spec.generation,
    )

    def trial(
        prompt: str, condition: str, concept: str | None, layer: int | None, strength: float, sample: int, **over: object
    ) -> Trial:
        # A trial carries the vector recipe exactly when it injects a concept's vector.
        return Trial(
            condition=condition,  # type: ignore[arg-type]
            concept=concept,
            recipe_id=spec.recipe.id if concept is not None else None,
            layer=layer,
            strength=float(strength),
            sample=sample,
            prompt_set=prompt,
            prompt_ids_sha=prompt_ids_sha[prompt],
            **{**common, **over},  # type: ignore[arg-type]
        )

    def injected(prompt: str, condition: str, span: str | None = None) -> list[Trial]:
        over = {"span": span} if span is not None else {}
        return [
            trial(prompt, condition, concept, layer, strength, sample, **over)
            for layer in layers
            for concept in spec.concepts
            for strength in strengths
            for sample in range(spec.samples)
        ]

    def controls(prompt: str) -> list[Trial]:
        # A control injects nothing, so strength mode and span cannot change it: they are fixed
        # to canonical values so every protocol variant on the same prompt shares its controls.
        fixed = {"strength_mode": "absolute", "span": "from-trial"}
        return [trial(prompt, "control", None, None, 0.0, sample, **fixed) for sample in range(spec.controls)]

    trials: list[Trial] = []
    for prompt in spec.prompt_sets:
        trials += injected(prompt, "concept")
        if "random" in spec.conditions:
            trials += injected(prompt, "random")
        if "scale" in spec.conditions:
            trials += [
                trial(prompt, "scale", None, layer, factor, sample, strength_mode="absolute")
                for layer in layers
                for factor in spec.scale_factors
                for sample in range(spec.samples)
            ]
        trials += controls(prompt)
    if "positive" in spec.conditions:
        # Lindsey's positive control injects on every position ("all"), whatever the main span.
        trials += injected(spec.positive_prompt, "positive", spec.positive_span)
        if spec.positive_prompt not in spec.prompt_sets:
            trials += controls(spec.positive_prompt)
    return trials


def prompt_sets_used(spec: ExperimentSpec) -> list[str]:
    names = list(spec.prompt_sets)
    if "positive" in spec.conditions and spec.positive_prompt not in names:
        names.append(spec.positive_prompt)
    return names


class Keyed(Protocol):
    """Anything a batch can hold: every protocol's trial has a key (`keys.trial_key`)."""

    @property
    def key(self) -> str: ...


T = TypeVar("T", bound=Keyed)


@dataclass(frozen=True)
class Batch(Generic[T]):
    id: str
    trials: tuple[T, ...]
    seed: int

    @property
    def keys(self) -> list[str]:
        return [t.key for t in self.trials]


def make_batch(trials: list[T]) -> Batch[T]:
    """A batch's id and sampling seed come from its trial keys: a retried batch is identical."""
    digest = keys.batch_id([t.key for t in trials])
    return Batch(id=digest, trials=tuple(trials), seed=int(digest[:15], 16))


def plan_batches(pending: list[Trial], max_rows: int) -> list[Batch[Trial]]:
    if max_rows < 1:
        raise ValueError("batch size must be at least 1")
    groups: dict[str, list[Trial]] = {}
    for t in pending:
        groups.setdefault(t.prompt_ids_sha, []).append(t)
    batches: list[Batch[Trial]] = []
    for group in groups.values():
        for i in range(0, len(group), max_rows):
            batches.append(make_batch(group[i : i + max_rows]))
    return batches

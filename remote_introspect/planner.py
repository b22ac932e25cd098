"""Spec → keyed trials → batches.

Batches are chunks of a stable ordering of the trials still to run, grouped by prompt, so a run
killed after k batches replans exactly the batches it had not finished, and adding a strength or
layer to a sweep runs only the new cells. A batch may mix layers and strengths (rows carry their
own layer), and controls ride in the same batches as injected rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import ExperimentSpec, ModelIdentity, Trial, canonical_json, sha256_hex


def plan_trials(
    spec: ExperimentSpec,
    model: ModelIdentity,
    prompt_ids_sha: str,
    layers: tuple[int, ...],
) -> list[Trial]:
    """Every trial the spec asks for, in a stable order (layer, concept, strength, sample), then
    the no-injection controls (shared by all layers and strengths of the prompt)."""
    common = dict(
        model=model,
        prompt_set=spec.prompt_set,
        prompt_ids_sha=prompt_ids_sha,
        strength_mode=spec.strength_mode,
        span=spec.span,
        seed=spec.seed,
        generation=spec.generation,
    )
    trials: list[Trial] = []
    for layer in layers:
        for concept in spec.concepts:
            for strength in spec.strengths:
                for sample in range(spec.samples):
                    trials.append(
                        Trial(
                            condition="concept",
                            concept=concept,
                            recipe_id=spec.recipe.id,
                            layer=layer,
                            strength=float(strength),
                            sample=sample,
                            **common,
                        )
                    )
    for sample in range(spec.controls):
        # A control injects nothing, so strength mode and span cannot change it: they are fixed
        # to canonical values so every protocol variant on the same prompt shares its controls.
        control_common = {**common, "strength_mode": "absolute", "span": "from-trial"}
        trials.append(
            Trial(
                condition="control",
                concept=None,
                recipe_id=None,
                layer=None,
                strength=0.0,
                sample=sample,
                **control_common,
            )
        )
    return trials


@dataclass(frozen=True)
class Batch:
    id: str
    trials: tuple[Trial, ...]
    seed: int

    @property
    def keys(self) -> list[str]:
        return [t.key for t in self.trials]


def make_batch(trials: list[Trial]) -> Batch:
    """A batch's id and sampling seed come from its trial keys: a retried batch is identical."""
    keys = sorted(t.key for t in trials)
    digest = sha256_hex(canonical_json(keys))
    return Batch(id=digest, trials=tuple(trials), seed=int(digest[:15], 16))


def plan_batches(pending: list[Trial], max_rows: int) -> list[Batch]:
    if max_rows < 1:
        raise ValueError("batch size must be at least 1")
    groups: dict[str, list[Trial]] = {}
    for t in pending:
        groups.setdefault(t.prompt_ids_sha, []).append(t)
    batches: list[Batch] = []
    for group in groups.values():
        for i in range(0, len(group), max_rows):
            batches.append(make_batch(group[i : i + max_rows]))
    return batches

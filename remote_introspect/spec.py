"""Experiment specs and trials (pydantic), and the canonical trial key.

`ExperimentSpec` is what a user asks for (CLI flags or a TOML file, identical fields).
`Trial` is one planned generation row, with everything that changes its outcome resolved; its
`key` is the sha256 of the canonical JSON of exactly those fields (DESIGN.md invariant 1).
Transport settings (backend, host, timeouts, retries, batch size) are deliberately not in it.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .prompts import BASELINE_WORDS, CONCEPT_WORDS, PROMPT_SETS, SPAN_MODES, VECTOR_PROMPT_TEMPLATE

StrengthMode = Literal["absolute", "norm-matched", "mlp-norm-matched", "relative"]
Condition = Literal["concept", "control", "random", "scale"]
VectorKind = Literal["mean-baseline", "contrast-pairs"]
VectorPosition = Literal["end-of-prompt", "end-of-user"]


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class GenerationParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(100, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


class VectorRecipe(BaseModel):
    """How a concept vector is made. Its hash (with model and layer) names the stored vector."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: VectorKind = "mean-baseline"
    template: str = VECTOR_PROMPT_TEMPLATE
    position: VectorPosition = "end-of-prompt"
    baseline_words: tuple[str, ...] = BASELINE_WORDS
    normalize: bool = False

    def identity(self) -> dict:
        d = self.model_dump()
        d["baseline_words"] = sha256_hex(canonical_json(list(self.baseline_words)))
        return d

    @property
    def id(self) -> str:
        return sha256_hex(canonical_json(self.identity()))[:16]


def _finite_nonneg(values: list[float], what: str) -> list[float]:
    for v in values:
        if not isinstance(v, int | float) or math.isnan(v) or math.isinf(v):
            raise ValueError(f"{what} must be finite numbers, got {v!r}")
        if v < 0:
            raise ValueError(f"{what} must be non-negative, got {v!r}")
    return values


class ExperimentSpec(BaseModel):
    """Everything a run asks for. Layers may be absolute or fractions of depth (resolved later)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "lindsey"
    model: str = "gemma-270m"
    concepts: tuple[str, ...] = CONCEPT_WORDS[:5]
    strengths: tuple[float, ...] = (2.0, 8.0)
    layers: tuple[int, ...] | None = None
    layer_fractions: tuple[float, ...] | None = None
    samples: int = Field(2, ge=1, le=10_000)
    controls: int = Field(4, ge=0, le=100_000)
    seed: int = 0
    generation: GenerationParams = GenerationParams()
    prompt_set: str = "lindsey"
    span: str = "from-trial"
    strength_mode: StrengthMode = "absolute"
    recipe: VectorRecipe = VectorRecipe()

    @field_validator("concepts")
    @classmethod
    def _concepts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        words = tuple(w.strip() for w in v if w.strip())
        if not words:
            raise ValueError("the concept list is empty")
        return words

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError("the strength list is empty")
        return tuple(_finite_nonneg(list(v), "strengths"))

    @field_validator("layer_fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None:
            _finite_nonneg(list(v), "layer fractions")
            if any(f > 1 for f in v) or not v:
                raise ValueError("layer fractions must be in [0, 1]")
        return v

    @field_validator("prompt_set")
    @classmethod
    def _prompt_set(cls, v: str) -> str:
        if v not in PROMPT_SETS:
            raise ValueError(f"unknown prompt set {v!r}; choose one of {', '.join(PROMPT_SETS)}")
        return v

    @field_validator("span")
    @classmethod
    def _span(cls, v: str) -> str:
        if v not in SPAN_MODES:
            raise ValueError(f"unknown span {v!r}; choose one of {', '.join(SPAN_MODES)}")
        return v

    @model_validator(mode="after")
    def _one_layer_kind(self) -> ExperimentSpec:
        if self.layers is not None and self.layer_fractions is not None:
            raise ValueError("give layers or layer fractions, not both")
        return self

    def resolve_layers(self, num_layers: int) -> tuple[int, ...]:
        """Absolute decoder-layer indices; default: Lindsey's ~2/3 of depth."""
        if self.layers is not None:
            bad = [layer for layer in self.layers if not 0 <= layer < num_layers]
            if bad:
                raise ValueError(f"layer {bad[0]} is out of range: the model has layers 0..{num_layers - 1}")
            return tuple(sorted(set(self.layers)))
        fractions = self.layer_fractions or (2 / 3,)
        return tuple(sorted({min(num_layers - 1, round(f * num_layers)) for f in fractions}))


class ModelIdentity(BaseModel):
    """What identifies the model in a trial key: weights and numerics, not where it runs."""

    model_config = ConfigDict(frozen=True)

    repo_id: str
    weights_id: str
    dtype: str
    tokenizer_sha: str


class Trial(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: ModelIdentity
    prompt_set: str
    prompt_ids_sha: str
    condition: Condition
    concept: str | None
    recipe_id: str | None  # vector recipe (None for controls and scaling)
    layer: int | None
    strength: float
    strength_mode: StrengthMode
    span: str
    sample: int
    seed: int
    generation: GenerationParams

    @property
    def key(self) -> str:
        return sha256_hex(canonical_json(self.model_dump(mode="json")))

    @property
    def vector_ref(self) -> tuple[str, int, str] | None:
        """(recipe id, layer, concept) of the stored vector this trial injects, if any."""
        if self.condition in ("concept", "random") and self.concept is not None:
            assert self.recipe_id is not None and self.layer is not None
            return (self.recipe_id, self.layer, self.concept)
        return None

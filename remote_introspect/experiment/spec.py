"""Experiment specs and trials (pydantic), and the canonical trial key.

`ExperimentSpec` is what a user asks for (CLI flags or a TOML file, identical fields).
`Trial` is one planned generation row, with everything that changes its outcome resolved; its
`key` is the sha256 of the canonical JSON of exactly those fields (DESIGN.md invariant 1).
Transport settings (backend, host, timeouts, retries, batch size) are deliberately not in it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from remote_introspect import keys
from remote_introspect.experiment import validators
from remote_introspect.experiment.prompts import (
    BASELINE_WORDS,
    CONCEPT_WORDS,
    PROMPT_SETS,
    SPAN_MODES,
    VECTOR_PROMPT_TEMPLATE,
)
from remote_introspect.experiment.validators import (
    MAX_CONCEPT_CHARS,
    MAX_CONCEPTS,
    MAX_GRID_VALUES,
    Concepts,
    LayerFractions,
    Layers,
    Strengths,
)
from remote_introspect.keys import canonical_json, sha256_hex

__all__ = ["MAX_CONCEPT_CHARS", "MAX_CONCEPTS", "MAX_GRID_VALUES"]  # re-exported: specs import them from here

StrengthMode = Literal["absolute", "norm-matched", "mlp-norm-matched", "relative"]
# concept: the injected concept on the experiment's prompt; control: no injection; random: a
# random direction norm-matched to the concept vector; scale: the residual stream multiplied by a
# factor (no vector); positive: the concept injected on a neutral prompt ("What are you thinking
# about?") — the positive control that shows the injection reaches the output at that cell.
Condition = Literal["concept", "control", "random", "scale", "positive"]
EXTRA_CONDITIONS = ("control", "random", "scale", "positive")
VectorKind = Literal["mean-baseline", "contrast-pairs"]
CrossoverMode = Literal["rise-through", "threshold"]
# How the summary, report and crossover group injected trials into cells: "pooled" over concepts
# (layer × strength; Lindsey's 50 words × 1 sample) or per "concept" (layer × concept × strength;
# Merrill's pre-registered test and crossover are per vector × magnitude).
CellKey = Literal["pooled", "concept"]
VectorPosition = Literal["end-of-prompt", "end-of-user"]


# Input bounds (README "Reliability"; the concept and grid bounds are in `validators`): anything
# past them is refused before any work or write.
MAX_TEMPERATURE = 100.0
# |strength| per strength mode: absolute h + s·v (v a raw concept vector); the other modes scale
# a unit direction by s times a norm of the model's own activations, so 1e3 is already 1000×.
MAX_STRENGTH = {"absolute": 1e6, "norm-matched": 1e3, "mlp-norm-matched": 1e3, "relative": 1e3}
MAX_SCALE_FACTOR = 1e3


class GenerationParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(100, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    # Filled on the client by the runner (not user knobs): the ids that end a response (the
    # model's generation-config EOS ids + the chat format's end-of-turn token), and the dtype the
    # injected vectors are shipped in (the model's).
    stop_ids: tuple[int, ...] = ()
    vector_dtype: str | None = None

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
    # contrast-pairs: "builtin:merrill" (shipped data/merrill_pairs.json) or a JSON file path with
    # {"concepts": {name: [[positive, negative], ...]}}; its content hash is in the identity.
    pairs: str | None = None
    # Prepend a second BOS to the templated prompt, as vLLM did in Merrill's run. Mirrors
    # `ExperimentSpec.double_bos` (set there; one knob for vectors and trials alike).
    double_bos: bool = False

    def identity(self) -> dict:
        d = self.model_dump()
        d["baseline_words"] = sha256_hex(canonical_json(list(self.baseline_words)))
        if self.kind == "contrast-pairs":
            from remote_introspect.experiment.prompts import load_pairs

            d["pairs"] = sha256_hex(canonical_json(load_pairs(self.pairs)))
            d.pop("baseline_words")
            d.pop("template")
        else:
            # Words are written in lowercase in the template (Lindsey's appendix): vectors made
            # before that fix (capitalised words) have another id and are never reused.
            d["words"] = "lowercase"
        return d

    @property
    def id(self) -> str:
        return keys.recipe_id(self.identity())


class ConfirmatoryCell(BaseModel):
    """The one cell an experiment file names in advance for its confirmatory test."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layer: int
    strength: float
    concept: str | None = None
    prompt_set: str | None = None


class ExperimentSpec(BaseModel):
    """Everything a run asks for. Layers may be absolute or fractions of depth (resolved later).

    `protocol` names the preset the knobs came from (informational: trial keys hash the knobs
    themselves, so a preset and the same knobs given by hand are the same experiment)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "lindsey"
    protocol: str = "lindsey"
    model: str = "gemma-270m"
    concepts: Concepts = Field(CONCEPT_WORDS[:5], validate_default=True)
    strengths: Strengths = (2.0, 8.0)
    layers: Layers = None
    layer_fractions: LayerFractions = None
    samples: int = Field(2, ge=1, le=10_000)
    controls: int = Field(4, ge=0, le=100_000)  # per prompt set
    seed: int = 0
    generation: GenerationParams = GenerationParams()
    prompt_sets: tuple[str, ...] = ("lindsey",)
    span: str = "from-trial"
    strength_mode: StrengthMode = "absolute"
    recipe: VectorRecipe = VectorRecipe()
    conditions: tuple[str, ...] = ("control",)
    scale_factors: tuple[float, ...] = (2.0, 4.0)
    # Lindsey's positive control: "What are you thinking about right now?", injected on every
    # position (span "all"), graded with her "thinking about word" question.
    positive_prompt: str = "lindsey-thinking"
    positive_span: str = "all"
    # Prepend a second BOS to every templated prompt (trials and vector prompts): vLLM did this to
    # Merrill's already-templated text (his logged prompt: 173 tokens; single BOS: 172).
    double_bos: bool = False
    cells: CellKey = "pooled"
    dense_grid: bool = False
    dense_points: int = Field(10, ge=2, le=50)
    crossover_mode: CrossoverMode = "rise-through"
    confirmatory: ConfirmatoryCell | None = None

    @model_validator(mode="before")
    @classmethod
    def _sync_double_bos(cls, data: object) -> object:
        """One knob for trials and vectors: the recipe's `double_bos` follows the spec's."""
        if isinstance(data, dict):
            recipe = data.get("recipe") or {}
            if isinstance(recipe, VectorRecipe):
                recipe = recipe.model_dump()
            if isinstance(recipe, dict):
                data = {**data, "recipe": {**recipe, "double_bos": bool(data.get("double_bos", False))}}
        return data

    @field_validator("scale_factors")
    @classmethod
    def _scale_factors(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        v = validators.strength_grid(v, "scale factors")
        if max(v) > MAX_SCALE_FACTOR:
            raise ValueError(f"scale factor {max(v):g} is above the limit of {MAX_SCALE_FACTOR:g}")
        return v

    @field_validator("prompt_sets")
    @classmethod
    def _prompt_sets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("the prompt set list is empty")
        for name in v:
            if name not in PROMPT_SETS:
                raise ValueError(f"unknown prompt set {name!r}; choose one of {', '.join(PROMPT_SETS)}")
        return tuple(dict.fromkeys(v))

    @field_validator("positive_prompt")
    @classmethod
    def _positive_prompt(cls, v: str) -> str:
        if v not in PROMPT_SETS:
            raise ValueError(f"unknown prompt set {v!r}; choose one of {', '.join(PROMPT_SETS)}")
        return v

    @field_validator("conditions")
    @classmethod
    def _conditions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if "all" in v:
            return EXTRA_CONDITIONS
        bad = [c for c in v if c not in EXTRA_CONDITIONS]
        if bad:
            raise ValueError(
                f"unknown condition {bad[0]!r}; choose from {', '.join(EXTRA_CONDITIONS)} or all"
            )
        return tuple(c for c in EXTRA_CONDITIONS if c in v)

    @field_validator("span", "positive_span")
    @classmethod
    def _span(cls, v: str) -> str:
        if v not in SPAN_MODES:
            raise ValueError(f"unknown span {v!r}; choose one of {', '.join(SPAN_MODES)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        if self.layers is not None and self.layer_fractions is not None:
            raise ValueError("give layers or layer fractions, not both")
        bound = MAX_STRENGTH[self.strength_mode]
        big = [s for s in self.strengths if abs(s) > bound]
        if big:
            raise ValueError(
                f"strength {big[0]:g} is above the limit of {bound:g} for strength mode {self.strength_mode}"
            )
        if self.recipe.kind == "contrast-pairs":
            from remote_introspect.experiment.prompts import load_pairs

            pairs = load_pairs(self.recipe.pairs)
            missing = [c for c in self.concepts if c not in pairs]
            if missing:
                raise ValueError(
                    f"concept {missing[0]!r} has no contrast pairs; available: {', '.join(sorted(pairs))}"
                )
        return self

    def resolve_layers(self, num_layers: int) -> tuple[int, ...]:
        """Absolute decoder-layer indices; default: Lindsey's ~2/3 of depth."""
        return validators.resolve_layers(self.layers, self.layer_fractions, num_layers, 2 / 3)


class ModelIdentity(BaseModel):
    """What identifies the model in a trial key: weights and numerics, not where it runs."""

    model_config = ConfigDict(frozen=True)

    repo_id: str
    weights_id: str
    dtype: str
    tokenizer_sha: str


# Bumped when the meaning of a stored result changes under the same fields, so old results are
# never mixed with new ones. 2: responses end at the first stop id (no forced length), and each
# trial samples from its own key's uniforms (not a per-batch seed).
TRIAL_KEY_VERSION = 2


class Trial(BaseModel):
    model_config = ConfigDict(frozen=True)

    key_version: int = TRIAL_KEY_VERSION

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
        return keys.trial_key(self.model_dump(mode="json"))

    @property
    def vector_ref(self) -> tuple[str, int, str] | None:
        """(recipe id, layer, concept) of the stored vector this trial injects, if any."""
        if self.condition in ("concept", "random", "positive") and self.concept is not None:
            assert self.recipe_id is not None and self.layer is not None
            return (self.recipe_id, self.layer, self.concept)
        return None

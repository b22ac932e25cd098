"""What a probe–report run asks for (PROTOCOLS.md §6), validated before anything loads."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from remote_introspect.experiment import validators
from remote_introspect.experiment.probe_prompts import CONCEPTS
from remote_introspect.experiment.validators import Concepts, LayerFractions, Layers

STRENGTH_MODES = ("absolute", "norm-matched", "relative")
# relative: h + s·r·v̂ with r the mean residual norm over the steered span, so one grid suits
# every model width. 0 is always part of the grid: the unsteered trials validate the probe on
# the held-out statements and anchor the causal slope.
DEFAULT_STRENGTHS: tuple[float, ...] = (-0.4, -0.2, -0.1, 0.0, 0.1, 0.2, 0.4)
MAX_ABS_STRENGTH = {"absolute": 1e6, "norm-matched": 1e3, "relative": 1e3}


class ProbeReportSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "probe-report"
    protocol: str = "probe-report"
    model: str = "gemma-270m"
    concepts: Concepts = CONCEPTS
    layers: Layers = None
    layer_fractions: LayerFractions = None
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    strength_mode: str = "relative"
    seed: int = 0  # the held-out split and the bootstrap
    l2: float = Field(1.0, gt=0, le=1e6)  # the probe's penalty on scaled features
    bootstrap: int = Field(2000, ge=100, le=100_000)
    prompt_sets: tuple[str, ...] = ("probe-report",)

    @field_validator("concepts")
    @classmethod
    def _concepts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [w for w in v if w not in CONCEPTS]
        if bad:
            raise ValueError(f"no probe prompts for {', '.join(bad)}; choose from {', '.join(CONCEPTS)}")
        return v

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        out = tuple(sorted(set(validators.finite(v, "strengths", non_negative=False)) | {0.0}))
        if len(out) < 3:
            raise ValueError("give at least two non-zero strengths (0 is always added)")
        if len(out) > 100:
            raise ValueError(f"{len(out)} strengths is more than the limit of 100")
        return out

    @model_validator(mode="after")
    def _check(self) -> ProbeReportSpec:
        if self.strength_mode not in STRENGTH_MODES:
            raise ValueError(
                f"strength mode must be one of {', '.join(STRENGTH_MODES)}, got {self.strength_mode!r}"
            )
        bound = MAX_ABS_STRENGTH[self.strength_mode]
        if any(abs(s) > bound for s in self.strengths):
            raise ValueError(f"|strength| above {bound:g} in {self.strength_mode} mode")
        if self.layers is not None and self.layer_fractions is not None:
            raise ValueError("give layers or layer fractions, not both")
        return self

    def resolve_layers(self, num_layers: int) -> tuple[int, ...]:
        """Absolute decoder layers; default: half of depth."""
        return validators.resolve_layers(self.layers, self.layer_fractions, num_layers, 0.5)

"""What a probe–report run asks for (PROTOCOLS.md §6), validated before anything loads."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from remote_introspect.experiment.probe_prompts import CONCEPTS

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
    concepts: tuple[str, ...] = CONCEPTS
    layers: tuple[int, ...] | None = None
    layer_fractions: tuple[float, ...] | None = None
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    strength_mode: str = "relative"
    seed: int = 0  # the held-out split and the bootstrap
    l2: float = Field(1.0, gt=0, le=1e6)  # the probe's penalty on scaled features
    bootstrap: int = Field(2000, ge=100, le=100_000)
    prompt_sets: tuple[str, ...] = ("probe-report",)

    @field_validator("concepts")
    @classmethod
    def _concepts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        words = tuple(dict.fromkeys(w.strip().lower() for w in v if w.strip()))
        if not words:
            raise ValueError("the concept list is empty")
        bad = [w for w in words if w not in CONCEPTS]
        if bad:
            raise ValueError(f"no probe prompts for {', '.join(bad)}; choose from {', '.join(CONCEPTS)}")
        return words

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        for x in v:
            if not isinstance(x, int | float) or math.isnan(x) or math.isinf(x):
                raise ValueError(f"strengths must be finite numbers, got {x!r}")
        out = tuple(sorted(set(float(x) for x in v) | {0.0}))
        if len(out) < 3:
            raise ValueError("give at least two non-zero strengths (0 is always added)")
        if len(out) > 100:
            raise ValueError(f"{len(out)} strengths is more than the limit of 100")
        return out

    @field_validator("layer_fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None:
            for f in v:
                if not 0.0 <= f <= 1.0 or math.isnan(f):
                    raise ValueError(f"layer fractions must be between 0 and 1, got {f}")
            v = tuple(dict.fromkeys(v))
        return v

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
        if self.layers is not None:
            bad = [x for x in self.layers if not 0 <= x < num_layers]
            if bad:
                raise ValueError(
                    f"layer {bad[0]} is out of range: the model has {num_layers} layers (0-{num_layers - 1})"
                )
            return tuple(sorted(set(self.layers)))
        fractions = self.layer_fractions or (0.5,)
        return tuple(sorted({min(num_layers - 1, round(f * num_layers)) for f in fractions}))

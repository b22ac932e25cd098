"""The field checks every protocol's spec shares (concepts, strength grids, layers and layer
fractions), so that `run`, `localize` and `probe-report` accept and refuse the same values with
the same lines: plain functions raising ValueError, and the annotated field types (`Concepts`,
`Strengths`, `Layers`, `LayerFractions`) the specs declare their fields with."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator

# Input bounds (README "Reliability"): anything past them is refused before any work or write.
MAX_CONCEPT_CHARS = 100
MAX_CONCEPTS = 500
MAX_GRID_VALUES = 100  # strengths, scale factors, layers, layer fractions


def concept_words(values: Iterable[str]) -> tuple[str, ...]:
    """Lowercase (Lindsey writes the word in lowercase; the judge gets it so): "Dust" and "dust"
    are one concept, one vector, one set of trials (duplicates run once)."""
    words = tuple(dict.fromkeys(w.strip().lower() for w in values if w.strip()))
    if not words:
        raise ValueError("the concept list is empty")
    if len(words) > MAX_CONCEPTS:
        raise ValueError(f"{len(words)} concepts is more than the limit of {MAX_CONCEPTS} per experiment")
    for w in words:
        if len(w) > MAX_CONCEPT_CHARS:
            raise ValueError(f"concept {w[:20]!r}… is {len(w):,} characters long; the limit is {MAX_CONCEPT_CHARS}")
        if any(not ch.isprintable() for ch in w):
            raise ValueError(f"concept {w!r} contains a control character")
    return words


def finite(values: Iterable[Any], what: str, *, non_negative: bool = True) -> list[float]:
    """`values` as floats, each a finite number (and not negative, unless told)."""
    out = []
    for v in values:
        if not isinstance(v, int | float) or math.isnan(v) or math.isinf(v):
            raise ValueError(f"{what} must be finite numbers, got {v!r}")
        if non_negative and v < 0:
            raise ValueError(f"{what} must be non-negative, got {v!r}")
        out.append(float(v))
    return out


def grid(values: Iterable[Any], what: str) -> tuple[Any, ...]:
    """A grid axis with duplicates dropped (a value runs once), within MAX_GRID_VALUES."""
    v = tuple(dict.fromkeys(values))
    if len(v) > MAX_GRID_VALUES:
        raise ValueError(f"{len(v)} {what} is more than the limit of {MAX_GRID_VALUES}")
    return v


def strength_grid(values: Iterable[Any], what: str = "strengths") -> tuple[float, ...]:
    """A non-empty grid of finite, non-negative strengths (or scale factors)."""
    v = grid(finite(values, what), what)
    if not v:
        raise ValueError(f"the {what} list is empty")
    return v


def layer_fractions(values: Iterable[Any] | None) -> tuple[float, ...] | None:
    """Fractions of the model's depth: a non-empty grid of numbers in [0, 1] (None: not given)."""
    if values is None:
        return None
    v = grid(finite(values, "layer fractions"), "layer fractions")
    if not v or any(f > 1 for f in v):
        raise ValueError("layer fractions must be in [0, 1]")
    return v


def layer_list(values: Iterable[Any] | None) -> tuple[int, ...] | None:
    """Absolute layers as given (checked against the model by `resolve_layers`; None: not given)."""
    return None if values is None else grid((int(x) for x in values), "layers")


def resolve_layers(
    layers: tuple[int, ...] | None, fractions: tuple[float, ...] | None, num_layers: int, default: float
) -> tuple[int, ...]:
    """Absolute decoder-layer indices: the layers given (each in range), else the fractions of
    depth (else `default`), each rounded to a layer."""
    if layers is not None:
        bad = [layer for layer in layers if not 0 <= layer < num_layers]
        if bad:
            raise ValueError(f"layer {bad[0]} is out of range: the model has layers 0..{num_layers - 1}")
        return tuple(sorted(set(layers)))
    return tuple(sorted({min(num_layers - 1, round(f * num_layers)) for f in fractions or (default,)}))


# The spec fields, validated alike in every spec that has them.
Concepts = Annotated[tuple[str, ...], AfterValidator(concept_words)]
Strengths = Annotated[tuple[float, ...], AfterValidator(strength_grid)]
Layers = Annotated[tuple[int, ...] | None, AfterValidator(layer_list)]
LayerFractions = Annotated[tuple[float, ...] | None, AfterValidator(layer_fractions)]

"""The knobs of an experiment spec that change its answer, and the diff between two specs.

`compare` names the knobs two experiments differ in; `ladder` checks that adjacent rungs differ in
exactly one. Both read specs as stored (the `experiments.spec_json` dicts), so experiments written
by older versions compare too. Fields that only name or analyse an experiment (name, `cells`,
crossover mode, confirmatory cell) are not knobs; the `protocol` field matters only through the
judge rubric it selects (`grading.base.rubric_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from remote_introspect.grading.base import rubric_for

# Knob id → what it is, in the order `compare` prints them. The first seven are the ones the two
# published 405B recipes differ in (the ladder's rungs); the rest define the grid.
KNOB_TITLES: dict[str, str] = {
    "vectors": "concept vectors (recipe)",
    "strength_mode": "strength semantics",
    "span": "injection span",
    "prompt": "prompt set",
    "bos": "BOS tokens",
    "sampling": "sampling (temperature, top_p, token cap)",
    "rubric": "judge rubric",
    "model": "model",
    "strengths": "strengths",
    "layers": "layers",
    "concepts": "concepts",
    "samples": "samples per cell",
    "controls": "controls per prompt",
    "seed": "seed",
    "conditions": "conditions",
    "scale_factors": "scale factors",
    "positive": "positive control",
    "dense_grid": "dense grid",
}
# The spec fields a ladder rung may set for each of its knobs (experiment files name them so).
RUNG_FIELDS: dict[str, str] = {
    "vectors": "recipe",
    "strength_mode": "strength_mode",
    "span": "span",
    "prompt": "prompt_sets",
    "bos": "double_bos",
    "sampling": "generation",
    "rubric": "protocol",
}
# Knobs that change what a strength means (the injected norm a given strength produces).
STRENGTH_SEMANTICS: frozenset[str] = frozenset({"vectors", "strength_mode"})


@dataclass(frozen=True)
class KnobChange:
    knob: str
    a: str
    b: str

    def line(self) -> str:
        title = KNOB_TITLES.get(self.knob, self.knob)
        name = title if title.startswith(self.knob) else f"{self.knob} ({title})"
        return f"{name}: {self.a} → {self.b}"


def _tuple(v: Any) -> Any:
    return tuple(_tuple(x) for x in v) if isinstance(v, list | tuple) else v


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, int | float) and not isinstance(x, bool) else str(x)


def _vectors(recipe: dict[str, Any]) -> tuple[Any, str]:
    r = {k: _tuple(v) for k, v in recipe.items() if k != "double_bos"}
    kind = r.get("kind", "mean-baseline")
    text = f"{kind}{'(' + str(r.get('pairs')) + ')' if kind == 'contrast-pairs' else ''}, "
    text += "unit" if r.get("normalize") else "raw"
    if kind == "contrast-pairs":  # template and baseline words do not enter contrast-pair vectors
        r.pop("template", None)
        r.pop("baseline_words", None)
    return tuple(sorted(r.items())), text


def knob_values(spec: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """Each knob of a stored spec dict: (comparable value, text)."""
    g = spec.get("generation") or {}
    prompts = _tuple(spec.get("prompt_sets") or ("lindsey",))
    conditions = _tuple(spec.get("conditions") or ())
    layers = spec.get("layers")
    fractions = spec.get("layer_fractions")
    where = (
        ("layers", _tuple(layers))
        if layers is not None
        else ("fractions", _tuple(fractions) if fractions is not None else (2 / 3,))
    )
    sampling = (g.get("temperature", 1.0), g.get("top_p", 1.0), g.get("max_new_tokens", 100))
    rubrics = tuple(dict.fromkeys(rubric_for(spec.get("protocol"), p) for p in prompts))
    positive = (
        (spec.get("positive_prompt"), spec.get("positive_span")) if "positive" in conditions else None
    )
    dense = (spec.get("dense_grid"), spec.get("dense_points")) if spec.get("dense_grid") else None
    scale = _tuple(spec.get("scale_factors")) if "scale" in conditions else None
    return {
        "vectors": _vectors(spec.get("recipe") or {}),
        "strength_mode": (spec.get("strength_mode", "absolute"),) * 2,
        "span": (spec.get("span", "from-trial"),) * 2,
        "prompt": (prompts, ",".join(prompts)),
        "bos": (bool(spec.get("double_bos")), "double" if spec.get("double_bos") else "single"),
        "sampling": (
            sampling,
            f"temperature {_num(sampling[0])}, top_p {_num(sampling[1])}, ≤{sampling[2]} tokens",
        ),
        "rubric": (rubrics, ",".join(rubrics)),
        "model": (spec.get("model"), str(spec.get("model"))),
        "strengths": (_tuple(spec.get("strengths")), ",".join(_num(s) for s in spec.get("strengths") or ())),
        "layers": (where, f"{where[0]} {','.join(_num(x) for x in where[1])}"),
        "concepts": (_tuple(spec.get("concepts")), ",".join(spec.get("concepts") or ())),
        "samples": (spec.get("samples"), str(spec.get("samples"))),
        "controls": (spec.get("controls"), str(spec.get("controls"))),
        "seed": (spec.get("seed"), str(spec.get("seed"))),
        "conditions": (conditions, ",".join(conditions) or "-"),
        "scale_factors": (scale, ",".join(_num(s) for s in scale) if scale else "-"),
        "positive": (positive, f"{positive[0]} on span {positive[1]}" if positive else "-"),
        "dense_grid": (dense, f"{dense[1]} points" if dense else "off"),
    }


def spec_diff(a: dict[str, Any], b: dict[str, Any]) -> list[KnobChange]:
    """The knobs whose values differ between two stored specs, in `KNOB_TITLES` order."""
    va, vb = knob_values(a), knob_values(b)
    return [KnobChange(k, va[k][1], vb[k][1]) for k in KNOB_TITLES if va[k][0] != vb[k][0]]

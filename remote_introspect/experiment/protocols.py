"""Protocol presets (PROTOCOLS.md §1–3) and experiment files.

A protocol is a named set of ExperimentSpec fields; flags and experiment-file fields override
them one knob at a time. Both paths go through `build_spec`, so a TOML file and the equivalent
flags give the same spec, hence the same trial keys.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from remote_introspect.errors import UserError
from remote_introspect.experiment.prompts import CONCEPT_WORDS
from remote_introspect.experiment.spec import ExperimentSpec

LINDSEY: dict[str, Any] = dict(
    name="lindsey",
    concepts=CONCEPT_WORDS,
    strengths=(1.0, 2.0, 4.0, 8.0),
    layer_fractions=(2 / 3,),
    samples=1,
    controls=50,
    prompt_sets=("lindsey",),
    span="from-trial",
    strength_mode="absolute",
    recipe={"kind": "mean-baseline", "normalize": False},
    generation={"max_new_tokens": 100, "temperature": 1.0, "top_p": 1.0},
)

PROTOCOLS: dict[str, dict[str, Any]] = {
    # Lindsey (2025): mean-baseline vectors, absolute strengths 1-8 from the newline before
    # "Trial 1", ~2/3 depth, temperature 1, ~100 tokens. `--protocol lindsey` uses the full grid;
    # `replicate-lindsey`'s own defaults are a small CPU-sized subset of it.
    "lindsey": LINDSEY,
    # Merrill (May 2026), the 405B null replication: unit contrast-pair vectors, vllm-lens steering
    # h_i + s·‖m_i‖·v̂ on every position, magnitudes 5-18 at layer 84 of 126, two prompts, 20 trials
    # per cell, 40 controls per prompt, 200 tokens, temperature 1, top_p 1.
    "merrill-405b": dict(
        name="merrill-405b",
        concepts=("love", "all_caps"),
        strengths=(5.0, 10.0, 12.0, 15.0, 18.0),
        layer_fractions=(84 / 126,),
        samples=20,
        controls=40,
        prompt_sets=("merrill", "thinking"),
        span="all",
        strength_mode="mlp-norm-matched",
        recipe={"kind": "contrast-pairs", "normalize": True, "pairs": "builtin:merrill"},
        generation={"max_new_tokens": 200, "temperature": 1.0, "top_p": 1.0},
        # vLLM added a BOS to his already-templated text: 173 prompt tokens, not 172.
        double_bos=True,
        # His pre-registered test and crossover are per vector × magnitude (× prompt).
        cells="concept",
        conditions=("control",),
    ),
    # The NDIF 405B run (Dec 2025): Lindsey's prompt and vectors at layer 84, absolute strengths
    # 0.5-16, with random (norm-matched) and activation-scaling conditions beside the controls.
    # Its `model.generate(...)` passed no sampling arguments, so Hugging Face sampled with the
    # model's generation_config.json (Llama-3.1-405B-Instruct: temperature 0.6, top_p 0.9; shipped
    # in presets/llama-3.1-405b-instruct/); its battery scaled activations by 0.5-16.
    "ndif-405b": dict(
        LINDSEY,
        name="ndif-405b",
        strengths=(0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
        layer_fractions=(84 / 126,),
        conditions=("control", "random", "scale"),
        scale_factors=(0.5, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0),
        generation={"max_new_tokens": 100, "temperature": 0.6, "top_p": 0.9},
    ),
}

# `replicate-lindsey` without --protocol (and experiment files without one): Lindsey's knobs on
# the spec's small CPU-sized grid, with her positive control ("What are you thinking about right
# now?", injected on every position) so a first run shows the injection reaching the output
# before it shows the detection null.
EMBEDDED_DEFAULT: dict[str, Any] = dict(conditions=("control", "positive"))

# Merrill's coarse grid and a geometric one for `--strengths auto`, per strength mode.
AUTO_STRENGTHS = {"absolute": (0.5, 16.0), "mlp-norm-matched": (4.0, 24.0)}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        elif isinstance(v, dict) and hasattr(out.get(k), "model_dump"):
            out[k] = _merge(out[k].model_dump(), v)
        else:
            out[k] = v
    return out


def validation_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def build_spec(
    protocol: str | None, overrides: dict[str, Any], base: dict[str, Any] | None = None
) -> ExperimentSpec:
    """Protocol defaults (or `base`), then overrides, validated. Raises UserError with one line."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    fields = dict(base if base is not None else (EMBEDDED_DEFAULT if protocol is None else {}))
    if protocol is not None:
        fields = _merge(PROTOCOLS[protocol], fields)
        fields["protocol"] = protocol
    overrides = dict(overrides)
    if overrides.get("strengths") == "auto":
        from remote_introspect.stats.crossover import geometric_grid

        mode = overrides.get("strength_mode") or fields.get("strength_mode", "absolute")
        lo, hi = AUTO_STRENGTHS.get(mode, (1.0, 16.0))
        overrides["strengths"] = tuple(geometric_grid(lo, hi, 6))
    # Layers and fractions are alternatives: whichever is given last wins.
    if overrides.get("layers") is not None:
        fields.pop("layer_fractions", None)
    if overrides.get("layer_fractions") is not None:
        fields.pop("layers", None)
    fields = _merge(fields, {k: v for k, v in overrides.items() if v is not None})
    try:
        return ExperimentSpec(**fields)
    except ValidationError as exc:
        raise UserError(validation_line(exc)) from None
    except ValueError as exc:
        raise UserError(str(exc)) from None


def load_experiment_file(path: Path, overrides: dict[str, Any] | None = None) -> ExperimentSpec:
    """A TOML experiment file: `protocol = "..."` plus any ExperimentSpec fields."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read experiment file {path}: {err.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"experiment file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"experiment file {path} is not valid TOML: {err}") from None
    protocol = data.pop("protocol", None)
    if protocol is not None and not isinstance(protocol, str):
        raise UserError(f"experiment file {path}: protocol must be a string")
    if protocol == "localization":  # a readout experiment, not a generation one
        raise UserError(f"experiment file {path} is a localization experiment: run `localize {path}`")
    if "order" in data and ("from" in data or "to" in data):  # one experiment per rung
        raise UserError(f"experiment file {path} is a ladder: run `ladder {path}`")
    for key in (
        "concepts",
        "strengths",
        "layers",
        "layer_fractions",
        "prompt_sets",
        "conditions",
        "scale_factors",
    ):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    try:
        spec = build_spec(protocol, {**data, **(overrides or {})})
    except UserError as err:
        raise UserError(f"experiment file {path}: {err}") from None
    return spec

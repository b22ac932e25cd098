"""Ladder files: from one recipe to another, one knob per rung.

A ladder file (TOML) holds the grid every rung shares (model, concepts, strengths of rung 0,
layers, samples, controls, ...), a `[from]` table and a `[to]` table giving the seven knobs of the
two recipes (`experiment.knobs.RUNG_FIELDS`: recipe, strength_mode, span, prompt_sets,
double_bos, generation, protocol — the last only for its judge rubric), and `order`: the knobs in
the order the rungs change them. Rung 0 is `[from]`; rung k is rung k−1 with `order[k−1]` set to
its `[to]` value; the last rung is `[to]`. Adjacent rungs must differ in exactly one knob (by
`knobs.spec_diff`, the same diff `compare` prints), and every knob in which the two recipes differ
must be in `order`.

Strengths: rung 0 uses the file's. A rung whose knob changes what a strength means (vectors,
strength semantics) gets strengths chosen at run time so that the injected norm at the injection
start matches the previous rung's (`execution.ladder`); the others keep the previous rung's.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remote_introspect.errors import UserError
from remote_introspect.experiment.knobs import RUNG_FIELDS, STRENGTH_SEMANTICS, spec_diff
from remote_introspect.experiment.protocols import build_spec
from remote_introspect.experiment.spec import ExperimentSpec

LADDER_FIELDS = ("name", "order", "from", "to", "match_injected_norm")
_LISTS = ("concepts", "strengths", "layers", "layer_fractions", "conditions", "scale_factors", "prompt_sets")


@dataclass(frozen=True)
class Rung:
    index: int
    knob: str | None  # None for rung 0
    spec: ExperimentSpec  # strengths as planned (re-chosen at run time when `calibrate`)
    calibrate: bool  # strengths matched to the previous rung's injected norm at run time


@dataclass(frozen=True)
class Ladder:
    name: str
    path: Path
    rungs: tuple[Rung, ...]
    match_injected_norm: bool


def _lists(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if k in _LISTS and isinstance(v, list) else v for k, v in d.items()}


def rung_name(ladder: str, index: int, knob: str | None) -> str:
    return f"{ladder}/rung{index}-{knob or 'from'}"


def load_ladder(path: Path, overrides: dict[str, Any] | None = None) -> Ladder:
    """Parse and validate a ladder file; `overrides` (CLI flags as spec fields) replace the shared
    grid's values. A knob may not be overridden (it would collapse the rungs). One-line errors."""
    try:
        data = tomllib.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as err:
        raise UserError(f"cannot read ladder file {path}: {err.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"ladder file {path} is not valid TOML: {err}") from None
    where = f"ladder file {path}"
    name = data.pop("name", None)
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: `name` (a string) is required")
    order = data.pop("order", None)
    if not isinstance(order, list) or not all(isinstance(k, str) for k in order) or not order:
        raise UserError(f"{where}: `order` must be a non-empty list of knobs ({', '.join(RUNG_FIELDS)})")
    unknown = [k for k in order if k not in RUNG_FIELDS]
    if unknown:
        raise UserError(f"{where}: unknown knob {unknown[0]!r} in order; knobs: {', '.join(RUNG_FIELDS)}")
    dup = [k for k in order if order.count(k) > 1]
    if dup:
        raise UserError(f"{where}: knob {dup[0]!r} appears twice in order")
    match = data.pop("match_injected_norm", True)
    if not isinstance(match, bool):
        raise UserError(f"{where}: match_injected_norm must be true or false")
    ends: dict[str, dict[str, Any]] = {}
    for end in ("from", "to"):
        table = data.pop(end, None)
        if not isinstance(table, dict):
            raise UserError(f"{where}: a [{end}] table with the recipe's knobs is required")
        extra = sorted(set(table) - set(RUNG_FIELDS.values()))
        if extra:
            raise UserError(
                f"{where}: [{end}] may set only the knobs {', '.join(RUNG_FIELDS.values())}; got {extra[0]!r}"
            )
        missing = [f for f in RUNG_FIELDS.values() if f not in table]
        if missing:
            raise UserError(f"{where}: [{end}] is missing {missing[0]!r} (every knob is given on both ends)")
        ends[end] = _lists(table)
    for k in data:
        if k in RUNG_FIELDS.values():
            raise UserError(f"{where}: {k!r} is a knob; set it in [from] and [to], not in the shared grid")
    shared = _lists(data)
    over = dict(overrides or {})
    for k in over:
        if k in RUNG_FIELDS.values() and k != "generation":
            raise UserError(f"{where}: {k} is a ladder knob; edit the file's [from]/[to] tables instead")
    gen_over = over.pop("generation", None) or {}
    bad = [k for k in gen_over if k != "max_new_tokens"]
    if bad:
        raise UserError(f"{where}: --{bad[0].replace('_', '-')} is part of the sampling knob; edit [from]/[to]")
    shared.update({k: v for k, v in over.items() if v is not None})
    if shared.get("dense_grid"):
        raise UserError(f"{where}: a ladder has no dense grid (each rung is one coarse grid)")
    if over.get("layers") is not None:
        shared.pop("layer_fractions", None)
    if over.get("layer_fractions") is not None:
        shared.pop("layers", None)

    def spec_of(knobs: dict[str, Any], index: int, knob: str | None) -> ExperimentSpec:
        fields = {**shared, **knobs, "name": rung_name(name, index, knob)}
        if gen_over:
            fields["generation"] = {**fields["generation"], **gen_over}
        try:
            return build_spec(None, fields, base={})
        except UserError as err:
            raise UserError(f"{where}: rung {index} ({knob or 'from'}): {err}") from None

    current = dict(ends["from"])
    rungs = [Rung(0, None, spec_of(current, 0, None), False)]
    for i, knob in enumerate(order, start=1):
        field = RUNG_FIELDS[knob]
        current = {**current, field: ends["to"][field]}
        spec = spec_of(current, i, knob)
        spec = spec.model_copy(update={"strengths": rungs[-1].spec.strengths})
        changed = [c.knob for c in spec_diff(rungs[-1].spec.model_dump(mode="json"), spec.model_dump(mode="json"))]
        if changed != [knob]:
            what = "changes nothing" if not changed else f"changes {', '.join(changed)}"
            raise UserError(
                f"{where}: rung {i} must change exactly one knob ({knob}) from rung {i - 1}, but it {what}"
            )
        rungs.append(Rung(i, knob, spec, match and knob in STRENGTH_SEMANTICS))
    last = spec_of(ends["to"], len(order), order[-1]).model_copy(update={"strengths": rungs[-1].spec.strengths})
    left = [c.knob for c in spec_diff(rungs[-1].spec.model_dump(mode="json"), last.model_dump(mode="json"))]
    if left:
        raise UserError(f"{where}: [from] and [to] differ in {left[0]}, which is not in order")
    return Ladder(name, Path(path), tuple(rungs), match)

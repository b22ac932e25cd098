"""Run a ladder (`experiment.ladder`): each rung an ordinary cached experiment through the runner.

Rungs run in order with one model load (or one NDIF executor). A rung whose knob changes what a
strength means gets strengths that match the previous rung's injected norm at the injection start:
target_j = mean injected norm at the start over the previous rung's concept trials at its j-th
strength (stored per trial in `diagnostics_json`), unit = mean injected norm per unit strength of
the new rung, measured by a probe (the new rung at strength 1, one sample, one generated token,
no controls: its own small cached experiment), s_j = target_j / unit, rounded to 4 significant
digits so a rerun reproduces the same keys. Matching is on the mean over concepts and layers.

`plan_ladder` counts trials, requests and an estimate of server time without loading anything
(the structural plan: trial keys with a placeholder model identity, so rungs that share trials —
controls across vector/strength rungs, everything across a rubric rung — are counted once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from remote_introspect.errors import UserError
from remote_introspect.execution import runner
from remote_introspect.execution.runner import RunOptions, RunReport
from remote_introspect.experiment.ladder import Ladder, Rung
from remote_introspect.experiment.planner import plan_trials, prompt_sets_used
from remote_introspect.experiment.spec import ExperimentSpec, ModelIdentity
from remote_introspect.models.loading import resolve_model

# Server-time assumption for the estimate (not a measurement): per request a fixed overhead for
# dispatch and (de)serialisation, plus one decode step per generated token for the whole batch.
# For a 405B deployment with nnsight interventions on every step, 0.25 s per step is a guess of the
# right order; the printed estimate says it is one.
REQUEST_OVERHEAD_S = 10.0
DECODE_STEP_S = 0.25
PROBE_TOKENS = 1


@dataclass
class RungPlan:
    rung: Rung
    trials: int  # trials the rung's experiment holds
    new_trials: int  # not shared with an earlier rung
    requests: int  # generate requests for its new trials (+ the probe's, + vector extraction)
    probe_trials: int
    server_s: float


@dataclass
class LadderPlan:
    rungs: list[RungPlan]
    backend: str
    batch_rows: int

    @property
    def total_trials(self) -> int:
        return sum(r.new_trials + r.probe_trials for r in self.rungs)

    @property
    def total_requests(self) -> int:
        return sum(r.requests for r in self.rungs)

    @property
    def total_server_s(self) -> float:
        return sum(r.server_s for r in self.rungs)


def _structural_keys(spec: ExperimentSpec, layers: tuple[int, ...], repo_id: str) -> list[tuple[str, str]]:
    """(trial key, prompt group) per planned trial with a placeholder model identity: keys equal
    exactly when the real ones would (same model), which is what sharing between rungs needs."""
    ident = ModelIdentity(repo_id=repo_id, weights_id="plan", dtype="plan", tokenizer_sha="plan")
    shas = {p: f"{p}|double_bos={spec.double_bos}" for p in prompt_sets_used(spec)}
    trials = plan_trials(spec, ident, shas, layers)
    return list({t.key: (t.key, t.prompt_ids_sha) for t in trials}.values())


def probe_spec(spec: ExperimentSpec) -> ExperimentSpec:
    gen = spec.generation.model_copy(update={"max_new_tokens": PROBE_TOKENS})
    return spec.model_copy(
        update={
            "name": f"{spec.name}/probe",
            "strengths": (1.0,),
            "samples": 1,
            "controls": 0,
            "conditions": ("control",),
            "generation": gen,
        }
    )


def plan_ladder(ladder: Ladder, opts: RunOptions) -> LadderPlan:
    """Trials, requests and estimated server time per rung, assuming nothing is cached yet."""
    ref = resolve_model(ladder.rungs[0].spec.model)
    backend = opts.backend or ref.default_backend
    seen: set[str] = set()
    out: list[RungPlan] = []
    rows = 1
    for rung in ladder.rungs:
        spec = rung.spec
        try:
            layers = spec.resolve_layers(ref.num_layers)
        except ValueError as err:
            raise UserError(str(err)) from None
        # The runner's rows per request, from the preset's budget (prompt length ~172 tokens).
        tokens = 175 + spec.generation.max_new_tokens
        rows = opts.batch_rows or max(1, min(ref.batch_rows, ref.batch_rows * 350 // tokens))
        keyed = _structural_keys(spec, layers, ref.repo_id)
        new = [(k, g) for k, g in keyed if k not in seen]
        seen.update(k for k, _ in keyed)
        groups: dict[str, int] = {}
        for _, g in new:
            groups[g] = groups.get(g, 0) + 1
        requests = sum(math.ceil(n / rows) for n in groups.values())
        server = requests * (REQUEST_OVERHEAD_S + spec.generation.max_new_tokens * DECODE_STEP_S)
        probe = 0
        if rung.calibrate:
            probe = len(spec.concepts) * len(layers) * len(spec.prompt_sets)
            probe_requests = len(spec.prompt_sets) * math.ceil(probe / (len(spec.prompt_sets) * rows))
            requests += probe_requests
            server += probe_requests * (REQUEST_OVERHEAD_S + PROBE_TOKENS * DECODE_STEP_S)
        if rung.knob in (None, "vectors", "bos"):  # a new vector recipe: one extraction pass
            requests += 1
            server += REQUEST_OVERHEAD_S
        out.append(RungPlan(rung, len(keyed), len(new), requests, probe, server))
    return LadderPlan(out, backend, rows)


def format_plan(plan: LadderPlan, ladder: Ladder) -> list[str]:
    lines = [f"ladder {ladder.name}: {len(ladder.rungs)} rungs on {ladder.rungs[0].spec.model} ({plan.backend})"]
    for r in plan.rungs:
        what = "from (rung 0)" if r.rung.knob is None else f"changes {r.rung.knob}"
        note = "; strengths matched to the previous rung's injected norm (probe)" if r.rung.calibrate else ""
        lines.append(
            f"  rung {r.rung.index} {what}: {r.trials} trials ({r.new_trials} not shared with an earlier rung"
            f"{f', +{r.probe_trials} probe' if r.probe_trials else ''}), {r.requests} request(s){note}"
        )
    est = (
        f"; server time ≈ {plan.total_server_s / 60:.0f} min (estimate: {REQUEST_OVERHEAD_S:g} s per request + "
        f"{DECODE_STEP_S:g} s per generated token per batch; an assumption, not a measurement)"
        if plan.backend == "ndif"
        else " (local: no remote cost)"
    )
    lines.append(
        f"  total: {plan.total_trials} trials in ≈{plan.total_requests} request(s) of ≤{plan.batch_rows} rows{est}; "
        "trials already in the cache are not run again"
    )
    return lines


# --------------------------------------------------------------------------- strength matching


def _round_sig(x: float, sig: int = 4) -> float:
    return float(f"{x:.{sig - 1}e}")


def _concept_norms(report: RunReport, judge: str) -> list[tuple[float, float]]:
    """(strength, injected norm at the start) of a run's done, intact concept trials."""
    import polars as pl

    from remote_introspect.store.database import Store
    from remote_introspect.store.results_frame import load_frame

    store = Store(report.cache_root)
    try:
        df = load_frame(store.conn, judge, (t.key for t in report.trials)).df
    finally:
        store.close()
    df = df.filter(
        (pl.col("condition") == "concept")
        & (pl.col("status") == "done")
        & (pl.col("integrity") == "ok")
        & pl.col("diag_injected_norm").is_not_null()
    )
    return list(zip(df["strength"].to_list(), df["diag_injected_norm"].to_list(), strict=True))


def matched_strengths(previous: RunReport, probe: RunReport, judge: str) -> tuple[tuple[float, ...], str]:
    """The new rung's strengths (one per previous strength) and a line saying how they were chosen."""
    prev = _concept_norms(previous, judge)
    unit_rows = [n / s for s, n in _concept_norms(probe, judge) if s > 0]
    if not unit_rows:
        raise UserError("strength matching: the probe left no injected-norm diagnostics")
    unit = sum(unit_rows) / len(unit_rows)
    if not unit > 0:
        raise UserError("strength matching: the probe's injected norm per unit strength is 0")
    out, parts = [], []
    for s in previous.spec.strengths:
        norms = [n for st, n in prev if st == s]
        if not norms:
            raise UserError(f"strength matching: no injected-norm diagnostics at strength {s:g} of the previous rung")
        target = sum(norms) / len(norms)
        new = _round_sig(target / unit)
        out.append(new)
        parts.append(f"{s:g}→{new:g} (‖Δh‖≈{target:.4g})")
    line = (
        f"strengths matched to the previous rung's mean injected norm at the injection start "
        f"(new rung: {unit:.4g} per unit strength): {', '.join(parts)}"
    )
    return tuple(out), line


# --------------------------------------------------------------------------- running


@dataclass
class RungRun:
    rung: Rung
    spec: ExperimentSpec  # as run (matched strengths)
    report: RunReport
    matching: str = ""  # how its strengths were chosen, if matched


@dataclass
class LadderRun:
    ladder: Ladder
    runs: list[RungRun] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.runs) == len(self.ladder.rungs) and all(r.report.complete for r in self.runs)


def run_ladder(
    ladder: Ladder,
    opts: RunOptions,
    progress: runner.Progress | None = None,
    notice: Callable[[str], None] | None = None,
    request_status: Callable[[str], None] | None = None,
) -> LadderRun:
    """Run every rung in order (cached: a rerun does no model work). Stops at the first rung that
    does not complete (a later matched rung needs its diagnostics); rerunning resumes there."""
    notice = notice or (lambda line: None)
    refs = [runner.validate(r.spec, opts)[0] for r in ladder.rungs]  # every rung before any work
    bundle = runner.make_executor(refs[0], opts)
    out = LadderRun(ladder)
    previous: RunReport | None = None
    for rung in ladder.rungs:
        spec, line = rung.spec, ""
        if rung.calibrate and previous is not None:
            probe = runner.run(probe_spec(spec), opts, runner.Hooks.of(progress, notice, request_status), bundle)
            if not probe.complete:
                out.runs.append(RungRun(rung, spec, probe))
                return out
            strengths, line = matched_strengths(previous, probe, opts.judge)
            try:
                spec = ExperimentSpec(**{**spec.model_dump(), "strengths": strengths})
            except ValueError as err:
                raise UserError(f"rung {rung.index} ({rung.knob}): matched strengths rejected: {err}") from None
            notice(f"rung {rung.index} ({rung.knob}): {line}")
        elif previous is not None:  # the knob keeps strength semantics: the previous rung's strengths
            spec = spec.model_copy(update={"strengths": previous.spec.strengths})
        report = runner.run(spec, opts, runner.Hooks.of(progress, notice, request_status), bundle)
        out.runs.append(RungRun(rung, spec, report, line))
        if not report.complete:
            return out
        previous = report
    return out


def rung_summary(run: LadderRun) -> list[dict[str, Any]]:
    """(rung index, knob, experiment id, strengths, matching line) per rung run."""
    return [
        {
            "index": r.rung.index,
            "knob": r.rung.knob,
            "experiment_id": r.report.experiment_id,
            "strengths": r.spec.strengths,
            "matching": r.matching,
        }
        for r in run.runs
    ]

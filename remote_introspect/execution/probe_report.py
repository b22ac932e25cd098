"""Probe–report coupling (Martorell & Bianchi; PROTOCOLS.md §6), end to end:
validate → probes (extract, fit, store) → steered readout trials → store → statistics.

1. **Probes**, once per (model, probe recipe, layer, concept): the decoder-layer output at the last
   position of each TRAINING statement's self-report prompt (`executor.extract`, all layers in one
   pass), an L2 logistic regression high-vs-low pole (`stats.coupling.fit_probe`), stored like a
   concept vector (safetensors, sha256-checked) as [w, b] under a recipe id that hashes the shipped
   prompts, the split seed and the penalty.
2. **Trials**, one per concept × held-out statement × layer × strength: ONE steered forward pass
   (`executor.readout`, the readout primitive) adds s·(unit probe direction) on the statement and
   every later position of the prompt at that layer and brings back only the ten digit tokens'
   log-probabilities and the projection of the steered last-position residual onto the probe. The
   self-report is the probability-weighted mean digit (`report_from_logprobs`); the probe readout
   is w·h + b. Keyed, batched (one request per batch), stored with `store.readout_done` (the readout
   is in the result hash), failures recorded as failed and retried on the next run, never counted.
3. **Statistics** from the verified frame (`results_frame.load_frame`): per layer × concept,
   `stats.coupling.coupling`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from remote_introspect import keys
from remote_introspect.errors import UserError
from remote_introspect.execution import runner
from remote_introspect.execution.backends.base import Executor
from remote_introspect.execution.batch_loop import BatchLoop, Decoded, chunk_batches, extract, not_done
from remote_introspect.execution.concept_vectors import left_pad
from remote_introspect.execution.runner import RunOptions
from remote_introspect.execution.traces.readout import ReadoutBatch
from remote_introspect.execution.validation import check_cache, check_options, model_and_layers
from remote_introspect.experiment.planner import Batch, make_batch
from remote_introspect.experiment.probe_prompts import (
    TRAIN_PAIRS,
    Example,
    RenderedReport,
    load_probe_prompts,
    render_report,
    split,
)
from remote_introspect.experiment.probe_spec import ProbeReportSpec
from remote_introspect.experiment.spec import ModelIdentity
from remote_introspect.keys import canonical_json
from remote_introspect.models.loading import ModelRef
from remote_introspect.stats.coupling import Coupling, couplings, fit_probe, report_from_logprobs
from remote_introspect.store.database import Store

TRIAL_VERSION = 1
_MODE_COLUMN = {"absolute": 0, "norm-matched": 1, "relative": 3}
_BUDGET_TOKENS = 350  # as the runner: presets' row counts are sized for ~350 tokens per row


@dataclass
class ProbeReportResult:
    experiment_id: str
    spec: ProbeReportSpec
    layers: tuple[int, ...]
    model_label: str
    instruct: bool
    trials: int
    rows: list[Coupling] = field(default_factory=list)
    probe_train_accuracy: dict[tuple[int, str], float] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    nonfinite: int = 0
    errors: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.done == self.trials


Progress = Callable[[str, int, int], None]


def validate(spec: ProbeReportSpec, opts: RunOptions) -> tuple[ModelRef, tuple[int, ...]]:
    """Everything that can be rejected before loading a model or writing a byte."""
    ref, layers = model_and_layers(spec)
    check_options(opts, [ref])
    check_cache(opts.cache_root)
    return ref, layers


def probe_recipe(spec: ProbeReportSpec) -> dict[str, Any]:
    """What determines a probe besides the model and the layer: its key in the vectors table."""
    return {
        "kind": "probe-logistic",
        "version": 1,
        "prompts_sha": load_probe_prompts().sha,
        "split_seed": spec.seed,
        "train_pairs": TRAIN_PAIRS,
        "l2": spec.l2,
        "position": "last",
        "features": "decoder-layer output",
    }


@dataclass(frozen=True)
class _Trial:
    key: str
    data: dict[str, Any]
    example: Example
    context: int
    layer: int
    strength: float


def plan(
    spec: ProbeReportSpec,
    identity: ModelIdentity,
    layers: tuple[int, ...],
    rendered: dict[tuple[str, str], RenderedReport],
    recipe_id: str,
) -> list[_Trial]:
    out = []
    for concept in spec.concepts:
        _, heldout = split(concept, spec.seed)
        for j, ex in enumerate(heldout):
            r = rendered[(concept, ex.statement)]
            for layer in layers:
                for s in spec.strengths:
                    data = {
                        "kind": "probe-report", "version": TRIAL_VERSION, "condition": "probe-report",
                        "model": identity.model_dump(mode="json"), "concept": concept, "pole": ex.pole,
                        "sample": j, "layer": layer, "strength": s, "strength_mode": spec.strength_mode,
                        "span": "statement", "seed": spec.seed, "prompt_set": "probe-report",
                        "prompt_ids_sha": r.ids_hash, "candidates": list(r.candidates), "recipe_id": recipe_id,
                    }  # fmt: skip
                    out.append(_Trial(keys.trial_key(data), data, ex, j, layer, s))
    return out


def fit_probes(
    executor: Executor,
    opts: RunOptions,
    spec: ProbeReportSpec,
    rendered: dict[tuple[str, str], RenderedReport],
    missing: list[tuple[int, str]],
    pad_id: int,
    rows: int,
) -> tuple[dict[tuple[int, str], torch.Tensor], dict[tuple[int, str], float]]:
    """Extract the training prompts' last-position activations (all missing layers in one pass per
    chunk) and fit one probe per (layer, concept): {(layer, concept): [w, b]}, train accuracies."""
    concepts = sorted({c for _, c in missing})
    layers = sorted({layer for layer, _ in missing})
    examples = [ex for c in concepts for ex in split(c, spec.seed)[0]]
    prompts = [list(rendered[(ex.concept, ex.statement)].input_ids) for ex in examples]
    acts = torch.cat(
        [
            extract(executor, opts.retry, *left_pad(prompts[i : i + rows], pad_id), layers)
            for i in range(0, len(prompts), rows)
        ],
        dim=1,
    )  # [L, N, H]
    out: dict[tuple[int, str], torch.Tensor] = {}
    acc: dict[tuple[int, str], float] = {}
    for layer, concept in missing:
        idx = [i for i, ex in enumerate(examples) if ex.concept == concept]
        x = acts[layers.index(layer), idx].detach().double().numpy()
        try:
            probe = fit_probe(x, [examples[i].pole for i in idx], spec.l2)
        except ValueError as err:
            raise UserError(f"cannot fit the {concept} probe at layer {layer}: {err}") from None
        out[(layer, concept)] = torch.cat(
            [torch.from_numpy(probe.weight), torch.tensor([probe.bias])]
        ).float()
        acc[(layer, concept)] = probe.train_accuracy
    return out, acc


def build_batch(
    trials: list[_Trial],
    rendered: dict[tuple[str, str], RenderedReport],
    probes: dict[tuple[int, str], torch.Tensor],
    mode: str,
    vector_dtype: torch.dtype,
    pad_id: int,
) -> tuple[ReadoutBatch, list[int]]:
    """The readout rows of `trials`, and each row's column in the projections."""
    reps = [rendered[(t.example.concept, t.example.statement)] for t in trials]
    ids, mask = left_pad([list(r.input_ids) for r in reps], pad_id)
    width = ids.shape[1]
    pairs = sorted({(t.layer, t.example.concept) for t in trials})
    col = {p: i for i, p in enumerate(pairs)}
    weights = torch.stack([probes[p][:-1] for p in pairs])  # [P, H]
    units = weights / weights.norm(dim=1, keepdim=True).clamp(min=1e-12)
    B = len(trials)
    coefs = torch.zeros(B, 4)
    for i, t in enumerate(trials):
        coefs[i, _MODE_COLUMN[mode]] = t.strength
    batch = ReadoutBatch(
        input_ids=ids,
        attention_mask=mask,
        starts=torch.tensor([r.span_start + width - len(r.input_ids) for r in reps]),
        ends=torch.full((B,), width),
        row_layers=torch.tensor([t.layer for t in trials]),
        vectors=units.to(vector_dtype),
        coefs=coefs,
        scale=torch.ones(B),
        candidates=torch.tensor([list(r.candidates) for r in reps]),
        vector_index=torch.tensor([col[(t.layer, t.example.concept)] for t in trials]),
        probes=weights.float(),
        probe_layers=torch.tensor([t.layer for t in trials]),
    )
    return batch, [col[(t.layer, t.example.concept)] for t in trials]


def _results(
    trials: list[_Trial],
    rendered: dict[tuple[str, str], RenderedReport],
    probes: dict[tuple[int, str], torch.Tensor],
    cols: list[int],
    out: Any,
) -> tuple[dict[str, tuple[list[int], str, dict[str, Any], dict[str, Any]]], list[str]]:
    results: dict[str, tuple[list[int], str, dict[str, Any], dict[str, Any]]] = {}
    bad: list[str] = []
    logprobs = out.logprobs.detach().float().cpu()
    projections = out.projections.detach().float().cpu()
    for i, t in enumerate(trials):
        lp = [float(x) for x in logprobs[i].tolist()]
        proj = float(projections[i, cols[i]])
        if bool(out.nonfinite[i]) or not all(map(_finite, [*lp, proj])):
            bad.append(t.key)
            continue
        r = rendered[(t.example.concept, t.example.statement)]
        report, mass = report_from_logprobs(lp)
        bias = float(probes[(t.layer, t.example.concept)][-1])
        top = max(range(10), key=lambda d: lp[d])
        # Nine significant digits, not fixed decimals: a probe's readout is on the scale of its
        # weights (tiny for a model with residual norms in the thousands), and rounding it to a
        # fixed number of decimals would turn distinct readouts into ties.
        readout = {
            "digit_logprobs": [_sig(x) for x in lp],
            "report": _sig(report),
            "digit_mass": _sig(mass),
            "probe_projection": _sig(proj),
            "probe_bias": _sig(bias),
            "probe_readout": _sig(proj + bias),
        }
        diag = {"prompt_len": len(r.input_ids), "start": r.span_start}
        results[t.key] = ([r.candidates[top]], str(top), diag, readout)
    return results, bad


def _sig(x: float) -> float:
    return float(f"{x:.9g}")


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def run_probe_report(spec: ProbeReportSpec, opts: RunOptions, hooks: runner.Hooks | None = None) -> ProbeReportResult:
    hooks = hooks or runner.Hooks.of()
    progress, notice, request_status = hooks.progress, hooks.notice, hooks.request_status
    ref, layers = validate(spec, opts)
    executor, identity = runner.load_model(ref, opts, progress, request_status)
    tok = executor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    model_key = keys.model_key(identity.model_dump(mode="json"))
    try:
        rendered = {
            (ex.concept, ex.statement): render_report(tok, ex)
            for c in spec.concepts
            for part in split(c, spec.seed)
            for ex in part
        }
    except ValueError as err:
        raise UserError(f"{ref.name}: {err}") from None
    recipe = probe_recipe(spec)
    recipe_id = keys.recipe_id(recipe)
    trials = plan(spec, identity, layers, rendered, recipe_id)
    exp_id = keys.experiment_id(spec.model_dump(mode="json"), identity.model_dump(mode="json"))
    longest = max(len(r.input_ids) for r in rendered.values())
    rows = opts.batch_rows or max(1, min(ref.batch_rows, ref.batch_rows * _BUDGET_TOKENS // longest))
    result = ProbeReportResult(
        exp_id, spec, layers, ref.name, ref.preset.instruct if ref.preset else True, len(trials)
    )
    wanted = {(layer, c) for layer in layers for c in spec.concepts}
    store, check = runner.open_store(opts.cache_root, executor, notice)
    try:
        pending = not_done(store, trials)
        for name, n in store.drop_broken_vector_files(model_key, recipe_id, wanted):
            notice(f"probe file {name} is missing or corrupt (sha256 mismatch): refitting its {n} probe(s)")
        missing = sorted(store.missing_vectors(model_key, recipe_id, wanted))
        if pending or missing:
            check()  # a refused preflight registers nothing
        store.register(
            exp_id, spec.name, spec.model_dump_json(), {t.key: canonical_json(t.data) for t in trials}
        )
        if missing:
            progress("fitting probes", 0, len(missing))
            fitted, acc = fit_probes(executor, opts, spec, rendered, missing, pad_id, rows)
            store.save_vectors(model_key, recipe_id, canonical_json(recipe), fitted)
            result.probe_train_accuracy = acc
            progress("fitting probes", len(missing), len(missing))
        probes = store.load_vectors(model_key, recipe_id, wanted)
        if pending:
            _run_trials(
                executor,
                opts,
                store,
                spec,
                pending,
                rendered,
                probes,
                identity.dtype,
                pad_id,
                rows,
                result,
                progress,
                notice,
            )
        store.settle_batches()
        store.prune_claims()  # as every protocol's run ends: no stale leases left behind
    finally:
        store.close()
    read_results(result, opts.cache_root, [t.key for t in trials])
    return result


def _run_trials(
    executor: Executor,
    opts: RunOptions,
    store: Store,
    spec: ProbeReportSpec,
    pending: list[_Trial],
    rendered: dict[tuple[str, str], RenderedReport],
    probes: dict[tuple[int, str], torch.Tensor],
    dtype_label: str,
    pad_id: int,
    rows: int,
    result: ProbeReportResult,
    progress: Progress,
    notice: Callable[[str], None],
) -> None:
    """Every pending trial through the shared batch loop (reattach, claims, retries, splitting)."""
    vdtype = runner._VECTOR_DTYPES[runner.vector_dtype_for(dtype_label)]

    def make(trials: list[_Trial]) -> Batch[_Trial]:
        return replace(make_batch(trials), seed=spec.seed)  # the batches table records the run's seed

    def build(batch: Batch[_Trial]) -> tuple[ReadoutBatch, list[int]]:
        return build_batch(list(batch.trials), rendered, probes, spec.strength_mode, vdtype, pad_id)

    def decode(batch: Batch[_Trial], request: tuple[ReadoutBatch, list[int]], out: Any) -> Decoded:
        return _results(list(batch.trials), rendered, probes, request[1], out)  # type: ignore[return-value]

    tally = BatchLoop(
        store, executor, opts, build, lambda request, cb: executor.readout(request[0], cb), decode,
        lambda trials: chunk_batches(trials, rows, make), executor.reattach_readout,
        readout=True, progress=progress, notice=notice, stage="readout", make=make,
    ).run(pending)  # fmt: skip
    result.failed += tally.failed_trials
    result.nonfinite += tally.nonfinite_trials
    result.errors += tally.errors


def read_results(result: ProbeReportResult, cache_root: Path, trial_keys: list[str]) -> None:
    """Statistics per layer × concept from the verified frame (what `audit` counts)."""
    import polars as pl

    from remote_introspect.store.results_frame import load_frame, open_readonly

    conn = open_readonly(cache_root)
    try:
        frame = load_frame(conn, "heuristic", trial_keys)
    finally:
        conn.close()
    df = frame.df
    result.excluded = [p.line() for p in frame.problems]
    ok = df.filter(pl.col("usable") & pl.col("readout_json").is_not_null())
    result.done = ok.height
    # The same function `audit` and `report` read the cache back with: one analysis path.
    pairs = [(json.loads(tj), json.loads(rj)) for tj, rj in ok.select("trial_json", "readout_json").iter_rows()]
    spec = result.spec
    result.rows.extend(couplings(pairs, result.layers, spec.concepts, n_boot=spec.bootstrap, seed=spec.seed))

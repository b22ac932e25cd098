"""Run localization / the position control end to end: validate → plan → vectors → readout
batches → store (PROTOCOLS.md §5; the prompts and trials are `experiment/localization.py`).

The same machinery as `runner` wherever it applies: one-line errors before anything is written,
keyed trials (`keys.py`), Lindsey's mean-baseline vectors (`runner.ensure_vectors`), SQLite claims
so concurrent runs never read the same row twice, one request per batch through
`Executor.readout` with the shared retry policy, batch splitting on "too large", reattachment of
jobs a killed run left, and failures recorded as failed (never as a wrong answer). Each row stores
its candidates' log-probabilities (`trials.readout_json`); the prediction is their argmax.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from remote_introspect import keys
from remote_introspect.errors import UserError
from remote_introspect.execution import concept_vectors, runner
from remote_introspect.execution.backends.base import Executor, ReadoutOutput
from remote_introspect.execution.batch_loop import BatchLoop, chunk_batches, not_done
from remote_introspect.execution.runner import RunOptions
from remote_introspect.execution.traces.readout import ReadoutBatch
from remote_introspect.execution.validation import check_cache, check_options, model_and_layers
from remote_introspect.experiment.localization import (
    LocalizationSpec,
    LocalizationTrial,
    RenderedLocalization,
    plan_localization,
    render_trial_prompt,
)
from remote_introspect.experiment.planner import Batch
from remote_introspect.experiment.spec import ExperimentSpec
from remote_introspect.models.loading import ModelRef
from remote_introspect.store.database import Store

_MODE_COLUMN = {"absolute": 0, "norm-matched": 1, "relative": 3}
# Rows per request: a readout row is one forward pass of its prompt (no generated tokens), so the
# preset's row budget (sized for ~350 tokens per row) is scaled by the prompt length.
_BUDGET_TOKENS = 350
MAX_ROWS = 1_000_000

Progress = Callable[[str, int, int], None]


@dataclass
class LocalizationReport(runner.ExperimentRun[LocalizationSpec, LocalizationTrial]):
    model_label: str
    instruct: bool
    cache_root: Path
    executed_batches: int = 0
    failed_trials: int = 0
    nonfinite_trials: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [t.key for t in self.trials]


def validate(spec: LocalizationSpec, opts: RunOptions) -> tuple[ModelRef, tuple[int, ...]]:
    """Everything that can be rejected without loading a model or writing a byte."""
    ref, layers = model_and_layers(spec)
    check_options(opts, [ref])
    n = spec.n_rows(len(layers))
    if n > MAX_ROWS:
        raise UserError(f"this grid plans {n:,} rows; the limit per run is {MAX_ROWS:,}")
    vector_spec(spec)  # contrast pairs must exist for every concept
    check_cache(opts.cache_root)
    return ref, layers


def vector_spec(spec: LocalizationSpec) -> ExperimentSpec:
    """The vector side of the spec as the shared vector code reads it (recipe and concepts)."""
    try:
        return ExperimentSpec(model=spec.model, concepts=spec.concepts, recipe=spec.recipe)
    except ValueError as err:
        raise UserError(str(err).splitlines()[-1].removeprefix("  Value error, ")) from None


def _row_vector(t: LocalizationTrial, vectors: dict[tuple[int, str], torch.Tensor]) -> torch.Tensor:
    v = vectors[(t.layer, t.concept)].float()
    if t.condition == "random":
        # One random direction per trial (its rows share it, as they share the concept vector),
        # norm-matched to the concept vector, seeded by what identifies the trial.
        digest = hashlib.sha256(f"random:{t.seed}:{t.sample}:{t.layer}:{t.concept}".encode()).hexdigest()
        v = concept_vectors.random_vector(v, seed=int(digest[:8], 16))
    if t.strength_mode != "absolute":
        v = v / v.norm().clamp(min=1e-12)
    return v


def build_readout_batch(
    batch: Batch,
    prompts: dict[str, RenderedLocalization],
    vectors: dict[tuple[int, str], torch.Tensor],
    pad_id: int,
    vdtype: torch.dtype,
) -> ReadoutBatch:
    trials: list[LocalizationTrial] = list(batch.trials)  # type: ignore[arg-type]
    rows = [list(prompts[t.prompt_ids_sha].input_ids) for t in trials]
    ids, mask = concept_vectors.left_pad(rows, pad_id)
    width = ids.shape[1]
    B = len(trials)
    starts = torch.zeros(B, dtype=torch.long)
    ends = torch.zeros(B, dtype=torch.long)
    row_layers = torch.full((B,), -1, dtype=torch.long)
    coefs = torch.zeros(B, 4)
    table = concept_vectors.VectorTable(vdtype)
    vector_index = torch.zeros(B, dtype=torch.long)
    for i, t in enumerate(trials):
        pad = width - len(rows[i])
        starts[i], ends[i] = t.span[0] + pad, t.span[1] + pad
        row_layers[i] = t.layer
        coefs[i, _MODE_COLUMN[t.strength_mode]] = t.strength
        vector_index[i] = table.index(_row_vector(t, vectors))
    return ReadoutBatch(
        input_ids=ids,
        attention_mask=mask,
        starts=starts,
        ends=ends,
        row_layers=row_layers,
        vectors=table.stacked(),
        coefs=coefs,
        scale=torch.ones(B),
        candidates=torch.tensor([list(t.candidates) for t in trials], dtype=torch.long),
        vector_index=vector_index,
    )


def _finite(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else round(float(x), 6)


def decode_readout(
    batch: Batch, rb: ReadoutBatch, out: ReadoutOutput, tokenizer: Any
) -> tuple[dict[str, tuple[list[int], str, dict[str, Any], dict[str, Any]]], list[str]]:
    """(results per done key, keys whose row was non-finite)."""
    results: dict[str, tuple[list[int], str, dict[str, Any], dict[str, Any]]] = {}
    bad: list[str] = []
    for i, t in enumerate(batch.trials):
        assert isinstance(t, LocalizationTrial)
        if bool(out.nonfinite[i]):
            bad.append(t.key)
            continue
        logp = [float(x) for x in out.logprobs[i].tolist()]
        pred = max(range(len(logp)), key=lambda j: logp[j])
        answer = int(t.candidates[pred])
        diag = {
            "prompt_len": int(rb.attention_mask[i].sum()),
            "start": int(t.span[0]),
            "end": int(t.span[1]),
            "vector_norm": _finite(float(rb.vectors[int(rb.vector_index[i])].float().norm())),
        }
        readout = {
            "candidates": list(t.candidates),
            "logprobs": [round(x, 6) for x in logp],
            "prediction": pred + 1,
            "target": t.target,
        }
        results[t.key] = ([answer], tokenizer.decode([answer]), diag, readout)
    return results, bad


def run_localization(
    spec: LocalizationSpec, opts: RunOptions, hooks: runner.Hooks | None = None, executor_bundle: Any = None
) -> LocalizationReport:
    hooks = hooks or runner.Hooks.of()
    progress, notice, request_status = hooks.progress, hooks.notice, hooks.request_status
    ref, layers = validate(spec, opts)
    vspec = vector_spec(spec)
    executor, identity = runner.load_model(ref, opts, progress, request_status, executor_bundle)
    tok = executor.tokenizer
    prompts: dict[str, RenderedLocalization] = {}
    by_request: dict[tuple[bool, tuple[int, ...]], RenderedLocalization] = {}

    def render(prefer: bool, sentence_ids: tuple[int, ...]) -> RenderedLocalization:
        if (prefer, sentence_ids) not in by_request:
            try:
                r = render_trial_prompt(tok, spec.regions, sentence_ids, prefer)
            except ValueError as err:
                raise UserError(f"{ref.name}: {err}") from None
            by_request[(prefer, sentence_ids)] = prompts[r.ids_hash] = r
        return by_request[(prefer, sentence_ids)]

    vdtype_label = runner.vector_dtype_for(identity.dtype)
    trials = plan_localization(spec, identity, layers, render, vdtype_label)
    context = ref.config.get("max_position_embeddings")
    longest = max(len(r.input_ids) for r in prompts.values())
    if isinstance(context, int) and longest > context:
        raise UserError(f"the {longest}-token prompt exceeds the model's context of {context} tokens")
    exp_id = keys.experiment_id(spec.model_dump(mode="json"), identity.model_dump(mode="json"))
    store, check = runner.open_store(opts.cache_root, executor, notice)
    try:
        pending = not_done(store, trials)
        if pending:
            check()  # a refused preflight registers nothing
        store.register(exp_id, spec.name, spec.model_dump_json(), {t.key: t.model_dump_json() for t in trials})
        report = LocalizationReport(
            exp_id, spec, layers, trials, {}, ref.name, ref.preset.instruct if ref.preset else True,
            Path(opts.cache_root),
        )  # fmt: skip
        model_key = keys.model_key(identity.model_dump(mode="json"))
        wanted = {t.vector_ref for t in trials}
        before = check if not pending else None
        runner.ensure_vectors(vspec, opts, executor, store, model_key, wanted, progress, notice, before)
        if pending:
            vectors = store.load_vectors(model_key, spec.recipe.id, {t.vector_ref for t in pending})
            _execute(_Context(opts, ref, executor, store, progress, notice), prompts, vectors, pending, report)
        store.settle_batches()
        store.prune_claims()
        report.statuses = store.statuses(t.key for t in trials)
        return report
    finally:
        store.close()


@dataclass(frozen=True)
class _Context:
    """What the batch loop of one localization run works with."""

    opts: RunOptions
    ref: ModelRef
    executor: Executor
    store: Store
    progress: Progress
    notice: Callable[[str], None]


def batch_rows(opts: RunOptions, ref: ModelRef, prompts: dict[str, RenderedLocalization]) -> int:
    if opts.batch_rows:
        return opts.batch_rows
    longest = max(len(r.input_ids) for r in prompts.values())
    return max(1, ref.batch_rows * _BUDGET_TOKENS // max(longest, 1))


def _execute(
    ctx: _Context,
    prompts: dict[str, RenderedLocalization],
    vectors: dict[tuple[int, str], torch.Tensor],
    pending: list[LocalizationTrial],
    report: LocalizationReport,
) -> None:
    """Every pending trial through the shared batch loop (reattach, claims, retries, splitting)."""
    executor = ctx.executor
    tok = executor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    vdtype = runner._VECTOR_DTYPES[pending[0].vector_dtype]
    rows = batch_rows(ctx.opts, ctx.ref, prompts)

    def build(batch: Batch[LocalizationTrial]) -> ReadoutBatch:
        return build_readout_batch(batch, prompts, vectors, pad_id, vdtype)

    tally = BatchLoop(
        ctx.store, executor, ctx.opts, build, executor.readout,
        lambda batch, rb, out: decode_readout(batch, rb, out, tok),  # type: ignore[arg-type]
        lambda trials: chunk_batches(trials, rows), executor.reattach_readout, readout=True,
        progress=ctx.progress, notice=ctx.notice, stage="reading out", unit="rows",
        failure_stage="failed (retried on the next run)",
    ).run(pending)  # fmt: skip
    report.executed_batches += tally.executed_batches
    report.failed_trials += tally.failed_trials
    report.nonfinite_trials += tally.nonfinite_trials
    report.errors += tally.errors

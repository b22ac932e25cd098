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
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from remote_introspect import keys
from remote_introspect.errors import BatchTooLargeError, UserError
from remote_introspect.execution import concept_vectors, runner
from remote_introspect.execution.backends.base import Executor, ReadoutOutput
from remote_introspect.execution.runner import RunOptions
from remote_introspect.execution.traces.readout import ReadoutBatch
from remote_introspect.experiment.localization import (
    LocalizationSpec,
    LocalizationTrial,
    RenderedLocalization,
    plan_localization,
    render_trial_prompt,
)
from remote_introspect.experiment.planner import Batch, make_batch
from remote_introspect.experiment.prompts import tokenizer_fingerprint
from remote_introspect.experiment.spec import ExperimentSpec, ModelIdentity
from remote_introspect.models.loading import ModelRef, resolve_model
from remote_introspect.retry_policy import call_with_retries
from remote_introspect.store.database import ClaimOwner, Store, check_writable, refuse_empty_database

log = logging.getLogger(__name__)

_MODE_COLUMN = {"absolute": 0, "norm-matched": 1, "relative": 3}
# Rows per request: a readout row is one forward pass of its prompt (no generated tokens), so the
# preset's row budget (sized for ~350 tokens per row) is scaled by the prompt length.
_BUDGET_TOKENS = 350
MAX_ROWS = 1_000_000

Progress = Callable[[str, int, int], None]


@dataclass
class LocalizationReport:
    experiment_id: str
    spec: LocalizationSpec
    layers: tuple[int, ...]
    trials: list[LocalizationTrial]
    statuses: dict[str, str]
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

    @property
    def complete(self) -> bool:
        return all(self.statuses.get(k) == "done" for k in self.keys)


def validate(spec: LocalizationSpec, opts: RunOptions) -> tuple[ModelRef, tuple[int, ...]]:
    """Everything that can be rejected without loading a model or writing a byte."""
    ref = resolve_model(spec.model)
    try:
        layers = spec.resolve_layers(ref.num_layers)
    except ValueError as err:
        raise UserError(str(err)) from None
    backend = opts.backend or ref.default_backend
    if backend not in ("local", "ndif"):
        raise UserError(f"unknown backend {backend!r}; choose local or ndif")
    if backend == "local" and ref.preset is not None and ref.preset.backend == "ndif":
        raise UserError(f"{ref.name} is a remote-only preset (too large for this machine); use --backend ndif")
    if opts.dtype is not None and opts.dtype not in ("fp32", "bf16", "fp16"):
        raise UserError(f"unknown dtype {opts.dtype!r}; choose one of fp32, bf16, fp16")
    if opts.batch_rows is not None and opts.batch_rows < 1:
        raise UserError("--batch-size must be at least 1")
    n = spec.n_rows(len(layers))
    if n > MAX_ROWS:
        raise UserError(f"this grid plans {n:,} rows; the limit per run is {MAX_ROWS:,}")
    vector_spec(spec)  # contrast pairs must exist for every concept
    refuse_empty_database(Path(opts.cache_root) / "results.sqlite")
    check_writable(Path(opts.cache_root))
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
    table: dict[bytes, int] = {}
    distinct: list[torch.Tensor] = []
    vector_index = torch.zeros(B, dtype=torch.long)
    for i, t in enumerate(trials):
        pad = width - len(rows[i])
        starts[i], ends[i] = t.span[0] + pad, t.span[1] + pad
        row_layers[i] = t.layer
        coefs[i, _MODE_COLUMN[t.strength_mode]] = t.strength
        v = _row_vector(t, vectors).to(vdtype).contiguous()
        k = v.view(torch.uint8).numpy().tobytes()
        if k not in table:  # each distinct vector travels once
            table[k] = len(distinct)
            distinct.append(v)
        vector_index[i] = table[k]
    return ReadoutBatch(
        input_ids=ids,
        attention_mask=mask,
        starts=starts,
        ends=ends,
        row_layers=row_layers,
        vectors=torch.stack(distinct),
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
    spec: LocalizationSpec,
    opts: RunOptions,
    progress: Progress | None = None,
    notice: Callable[[str], None] | None = None,
    request_status: Callable[[str], None] | None = None,
    executor_bundle: tuple[Executor, Any] | None = None,
) -> LocalizationReport:
    progress = progress or (lambda stage, done, total: None)
    notice = notice or (lambda line: log.info("%s", line))
    ref, layers = validate(spec, opts)
    vspec = vector_spec(spec)
    progress("loading model", 0, 1)
    executor, (weights_id, dtype_label) = executor_bundle or runner.make_executor(ref, opts)
    if request_status is not None:
        executor.on_status = request_status
    progress("loading model", 1, 1)
    tok = executor.tokenizer
    identity = ModelIdentity(
        repo_id=ref.repo_id, weights_id=weights_id, dtype=dtype_label, tokenizer_sha=tokenizer_fingerprint(tok)
    )
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

    vdtype_label = runner.vector_dtype_for(dtype_label)
    trials = plan_localization(spec, identity, layers, render, vdtype_label)
    context = ref.config.get("max_position_embeddings")
    longest = max(len(r.input_ids) for r in prompts.values())
    if isinstance(context, int) and longest > context:
        raise UserError(f"the {longest}-token prompt exceeds the model's context of {context} tokens")
    exp_id = keys.experiment_id(spec.model_dump(mode="json"), identity.model_dump(mode="json"))
    store = Store(opts.cache_root)
    try:
        statuses = store.statuses(t.key for t in trials)
        pending = [t for t in trials if statuses.get(t.key) != "done"]
        if pending:
            runner.preflight(executor, notice)  # a refused preflight registers nothing
        store.register(exp_id, spec.name, spec.model_dump_json(), {t.key: t.model_dump_json() for t in trials})
        report = LocalizationReport(
            exp_id, spec, layers, trials, {}, ref.name, ref.preset.instruct if ref.preset else True,
            Path(opts.cache_root),
        )  # fmt: skip
        model_key = keys.model_key(identity.model_dump(mode="json"))
        wanted = {t.vector_ref for t in trials}
        before = (lambda: runner.preflight(executor, notice)) if not pending else None
        runner.ensure_vectors(vspec, opts, executor, store, model_key, wanted, progress, notice, before)
        if pending:
            vectors = store.load_vectors(model_key, spec.recipe.id, {t.vector_ref for t in pending})
            _execute(spec, opts, ref, executor, store, prompts, vectors, pending, report, progress, notice)
        store.settle_batches()
        store.prune_claims()
        report.statuses = store.statuses(t.key for t in trials)
        return report
    finally:
        store.close()


def batch_rows(opts: RunOptions, ref: ModelRef, prompts: dict[str, RenderedLocalization]) -> int:
    if opts.batch_rows:
        return opts.batch_rows
    longest = max(len(r.input_ids) for r in prompts.values())
    return max(1, ref.batch_rows * _BUDGET_TOKENS // max(longest, 1))


def _execute(
    spec: LocalizationSpec,
    opts: RunOptions,
    ref: ModelRef,
    executor: Executor,
    store: Store,
    prompts: dict[str, RenderedLocalization],
    vectors: dict[tuple[int, str], torch.Tensor],
    pending: list[LocalizationTrial],
    report: LocalizationReport,
    progress: Progress,
    notice: Callable[[str], None],
) -> None:
    tok = executor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    vdtype = runner._VECTOR_DTYPES[pending[0].vector_dtype]
    total = len(pending)
    done_rows = [0]
    owner = ClaimOwner.this_process()
    progress("reading out", 0, total)

    def finish(batch: Batch, rb: ReadoutBatch, out: ReadoutOutput) -> None:
        results, bad = decode_readout(batch, rb, out, tok)
        store.readout_done(batch.id, results, executor.name, executor.versions())
        if bad:  # never an answer: failed with the reason (retried on the next run)
            store.batch_failed(batch.id, bad, runner.NONFINITE_ERROR, "NonFiniteError")
            report.failed_trials += len(bad)
            report.nonfinite_trials += len(bad)
        report.executed_batches += 1
        done_rows[0] += len(batch.trials)
        progress("reading out", done_rows[0], total)

    try:
        handled = _reattach(opts, executor, store, prompts, vectors, pending, owner, pad_id, vdtype, finish, notice)
        rows = batch_rows(opts, ref, prompts)
        todo = [t for t in pending if t.key not in handled]
        queue = [make_batch(todo[i : i + rows]) for i in range(0, len(todo), rows)]  # type: ignore[arg-type]
        deferred: list[Any] = []
        while queue or deferred:
            if not queue:
                freed = runner.wait_for_claims(store, owner, deferred, opts, progress, total, done_rows)
                deferred = []
                queue = [make_batch(freed[i : i + rows]) for i in range(0, len(freed), rows)]
                continue
            claimed, waiting = runner.claim_batch(store, owner, queue.pop(0), opts, notice)
            deferred += waiting
            if claimed is None:
                continue
            batch = claimed
            try:
                rb = build_readout_batch(batch, prompts, vectors, pad_id, vdtype)

                def submitted(job_id: str | None, batch: Batch = batch) -> None:
                    store.batch_submitted(batch.id, batch.keys, batch.seed, executor.name, job_id)

                try:
                    out = call_with_retries(lambda rb=rb, cb=submitted: executor.readout(rb, cb), opts.retry)
                except UserError:
                    raise
                except BatchTooLargeError as err:
                    if len(batch.trials) > 1:
                        half = len(batch.trials) // 2
                        notice(f"batch of {len(batch.trials)} too large for the server ({err}); splitting")
                        store.batch_failed(batch.id, [], f"split: {err}", "BatchTooLargeError")
                        queue[:0] = [make_batch(list(batch.trials[:half])), make_batch(list(batch.trials[half:]))]
                        continue
                    _record_failure(store, report, batch, err)
                    continue
                except Exception as err:  # noqa: BLE001 - recorded as failed (never as a wrong answer)
                    _record_failure(store, report, batch, err)
                    progress("failed (retried on the next run)", report.failed_trials, total)
                    continue
                finish(batch, rb, out)
            finally:
                store.release(owner, batch.keys)
    finally:
        try:
            store.release(owner)
        except UserError:
            pass


def _reattach(
    opts: RunOptions,
    executor: Executor,
    store: Store,
    prompts: dict[str, RenderedLocalization],
    vectors: dict[tuple[int, str], torch.Tensor],
    pending: list[LocalizationTrial],
    owner: ClaimOwner,
    pad_id: int,
    vdtype: torch.dtype,
    finish: Callable[[Batch, ReadoutBatch, ReadoutOutput], None],
    notice: Callable[[str], None],
) -> set[str]:
    """Collect readout jobs an earlier (killed) run submitted, instead of resubmitting them."""
    import json

    collect = getattr(executor, "reattach_readout", None)
    if not executor.supports_reattach or collect is None:
        return set()
    by_key = {t.key: t for t in pending}
    handled: set[str] = set()
    for row in store.open_batches():
        batch_keys = json.loads(row["trial_keys"])
        if row["backend"] != executor.name or not set(batch_keys) <= set(by_key):
            continue
        mine, others, _ = store.claim(batch_keys, owner, opts.claim_lease_s)
        if others or len(mine) != len(batch_keys):
            continue
        batch = make_batch([by_key[k] for k in batch_keys])  # type: ignore[misc]
        rb = build_readout_batch(batch, prompts, vectors, pad_id, vdtype)
        try:
            out = call_with_retries(lambda jid=row["job_id"]: collect(jid), opts.retry)
        except UserError:
            raise
        except Exception:  # noqa: BLE001 - fall back to resubmitting
            out = None
        if out is not None:
            notice(f"reattached job {row['job_id']} ({len(batch_keys)} rows)")
            finish(batch, rb, out)
            handled |= set(batch_keys)
        store.release(owner, batch_keys)
    return handled


def _record_failure(store: Store, report: LocalizationReport, batch: Batch, err: BaseException) -> None:
    report.failed_trials += len(batch.trials)
    msg = f"{type(err).__name__}: {err}".splitlines()[0][:500]
    log.error("batch %s failed: %s", batch.id[:12], msg)
    store.batch_failed(batch.id, batch.keys, msg, type(err).__name__)
    report.errors.append(msg)

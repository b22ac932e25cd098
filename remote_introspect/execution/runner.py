"""Run an experiment end to end: validate → plan → vectors → batches → store → grade.

Order matters for the "bad input writes nothing" rule: everything that can be rejected (model,
layers, strengths, concepts, cache directory) is checked before the first byte is written.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from remote_introspect import keys
from remote_introspect.errors import UserError
from remote_introspect.execution import batch_loop, concept_vectors
from remote_introspect.execution.backends.base import Executor
from remote_introspect.execution.batch_loop import BatchLoop, Decoded, nonfinite_rows, not_done
from remote_introspect.execution.traces import generation_batch, hf_generation
from remote_introspect.execution.traces.generation_batch import GenerationBatch
from remote_introspect.execution.validation import check_cache, check_options, model_and_layers
from remote_introspect.experiment.planner import (
    Batch,
    plan_batches,
    plan_trials,
    prompt_sets_used,
)
from remote_introspect.experiment.prompts import (
    PROMPT_SETS,
    RenderedPrompt,
    render_prompt,
    tokenizer_fingerprint,
)
from remote_introspect.experiment.spec import ExperimentSpec, ModelIdentity, Trial
from remote_introspect.keys import canonical_json
from remote_introspect.models.loading import ModelRef
from remote_introspect.retry_policy import RetrySettings
from remote_introspect.store.database import Store

log = logging.getLogger(__name__)

_MODE_COLUMN = {"absolute": 0, "norm-matched": 1, "mlp-norm-matched": 2, "relative": 3}
_EOS_TOKENS = ("<end_of_turn>", "<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<eos>")


@dataclass
class RunOptions:
    cache_root: Path = Path("cache")

    def __post_init__(self) -> None:
        self.cache_root = Path(self.cache_root)

    backend: str | None = None
    batch_rows: int | None = None
    dtype: str | None = None
    device: str | None = None
    judge: str = "heuristic"
    remote_simulation: bool = False  # local backend: round-trip every trace through serialisation
    ndif_host: str | None = None
    tokenizer_dir: Path | None = None
    retry: RetrySettings = field(default_factory=RetrySettings)
    job_timeout_s: float | None = None  # NDIF: longest a job may stay RUNNING (not queued)
    queue_timeout_s: float | None = None  # NDIF: queued this long unchanged -> probe the server
    poll_initial_s: float | None = None
    stale_probe_s: float | None = None
    share_prefix: bool = False  # NDIF only (unverified on the real service); local runs share
    allow_version_mismatch: bool = False
    # A claim (lease) on a batch's trials lasts this long when its owner cannot be checked (another
    # host); a claim of a dead process on this host is taken over at once.
    claim_lease_s: float = 6 * 3600.0
    claim_poll_s: float = 0.5  # how often a run waiting on another run's claims looks again


S = TypeVar("S")
T = TypeVar("T")


@dataclass
class ExperimentRun(Generic[S, T]):
    """What every protocol's run reports first: its experiment, layers, trials and their stored
    statuses (complete when every trial is done; failed ones are retried by the next run)."""

    experiment_id: str
    spec: S
    layers: tuple[int, ...]
    trials: list[T]
    statuses: dict[str, str]

    @property
    def complete(self) -> bool:
        return all(self.statuses.get(t.key) == "done" for t in self.trials)  # type: ignore[attr-defined]


@dataclass
class RunReport(ExperimentRun[ExperimentSpec, Trial]):
    grades: dict[str, dict[str, Any]]
    instruct: bool
    model_label: str
    executed_batches: int = 0
    failed_batches: int = 0
    errors: list[str] = field(default_factory=list)
    crossovers: list[str] = field(default_factory=list)  # one line per layer (dense-grid runs)
    failed_trials: int = 0  # this run's failures (the store's statuses are the record)
    nonfinite_trials: int = 0  # this run's trials failed for NaN/inf activations or logits
    # Trials left out of every count because they fail audit's integrity checks (one line each).
    excluded: list[str] = field(default_factory=list)
    # Where the summary reads the run's results (the same read-only frame as `report`).
    cache_root: Path = Path(".")
    judge: str = "heuristic"


Progress = Callable[[str, int, int], None]  # (stage, done, total)


def validate(spec: ExperimentSpec, opts: RunOptions) -> tuple[ModelRef, tuple[int, ...]]:
    """Everything that can be rejected without loading a model or writing a byte."""
    ref, layers = model_and_layers(spec)
    check_options(opts, [ref])
    validate_numerics(spec, opts, ref)
    if opts.judge != "heuristic":  # a bad judge spec or missing key fails before any model work
        from remote_introspect.grading.service import close_grader, make_grader

        close_grader(make_grader(opts.judge))
    check_cache(opts.cache_root)
    return ref, layers


# Bound on the number of trials one run may plan (a 3,000-word list once reached 12.9 GB).
MAX_TRIALS = 1_000_000


def validate_numerics(spec: ExperimentSpec, opts: RunOptions, ref: ModelRef) -> None:
    """Context length and the size of the grid: checked before anything is loaded."""
    context = ref.config.get("max_position_embeddings")
    if isinstance(context, int) and spec.generation.max_new_tokens >= context:
        raise UserError(
            f"--max-new-tokens {spec.generation.max_new_tokens} does not fit the model's context of "
            f"{context} tokens (the prompt needs room too)"
        )
    n = estimated_trials(spec, ref)
    if n > MAX_TRIALS:
        raise UserError(f"this grid plans about {n:,} trials; the limit per run is {MAX_TRIALS:,}")


def estimated_trials(spec: ExperimentSpec, ref: ModelRef) -> int:
    layers = len(spec.layers or spec.layer_fractions or (1,))
    prompts = len(spec.prompt_sets) + 1
    conditions = 1 + len(spec.conditions)
    per_prompt = layers * len(spec.concepts) * (len(spec.strengths) + len(spec.scale_factors)) * spec.samples
    return prompts * (conditions * per_prompt + spec.controls)


def check_context(spec: ExperimentSpec, ref: ModelRef, rendered: dict[str, RenderedPrompt]) -> None:
    """Prompt + generated tokens must fit the model's context (checked before the cache is opened)."""
    context = ref.config.get("max_position_embeddings")
    if not isinstance(context, int) or not rendered:
        return
    longest = max(len(r.input_ids) for r in rendered.values())
    if longest + spec.generation.max_new_tokens > context:
        raise UserError(
            f"--max-new-tokens {spec.generation.max_new_tokens} plus the {longest}-token prompt exceeds the "
            f"model's context of {context} tokens"
        )


def unique_trials(trials: list[Trial]) -> list[Trial]:
    """One trial per key, first occurrence kept: a duplicated knob never runs or counts twice."""
    return list({t.key: t for t in trials}.values())


def make_executor(ref: ModelRef, opts: RunOptions) -> tuple[Executor, Any]:
    backend = opts.backend or ref.default_backend
    if backend == "local":
        from remote_introspect.execution.backends.local import LocalExecutor
        from remote_introspect.models.loading import load_local

        loaded = load_local(ref, opts.cache_root, opts.dtype, opts.device)
        identity = (loaded.weights_id, loaded.dtype_label)
        return LocalExecutor(loaded, remote_simulation=opts.remote_simulation), identity
    from remote_introspect.execution.backends.ndif import DEFAULT_HOST, NDIFExecutor, NDIFSettings

    settings = NDIFSettings(
        host=opts.ndif_host or os.environ.get("NDIF_HOST") or DEFAULT_HOST,
        allow_version_mismatch=opts.allow_version_mismatch,
    )
    if opts.job_timeout_s is not None:
        settings.job_timeout_s = opts.job_timeout_s
    if opts.queue_timeout_s is not None:
        settings.queue_timeout_s = opts.queue_timeout_s
    if opts.poll_initial_s is not None:
        settings.poll_initial_s = opts.poll_initial_s
    if opts.stale_probe_s is not None:
        settings.stale_probe_s = opts.stale_probe_s
    settings.share_prefix = opts.share_prefix
    ex = NDIFExecutor(ref, settings, opts.tokenizer_dir)
    return ex, (ex.weights_id, ex.dtype_label)


def load_model(
    ref: ModelRef,
    opts: RunOptions,
    progress: Progress,
    request_status: Callable[[str], None] | None = None,
    executor_bundle: tuple[Executor, Any] | None = None,
    stage: str = "loading model",
) -> tuple[Executor, ModelIdentity]:
    """The executor (`executor_bundle`, from `make_executor`, reuses a loaded one) and the model
    identity that goes into every trial key; `request_status` hears the remote request's state."""
    progress(stage, 0, 1)
    executor, (weights_id, dtype_label) = executor_bundle or make_executor(ref, opts)
    if request_status is not None:
        executor.on_status = request_status
    progress(stage, 1, 1)
    identity = ModelIdentity(
        repo_id=ref.repo_id,
        weights_id=weights_id,
        dtype=dtype_label,
        tokenizer_sha=tokenizer_fingerprint(executor.tokenizer),
    )
    return executor, identity


def eos_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in _EOS_TOKENS if t in vocab)
    return ids


_VECTOR_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def vector_dtype_for(dtype_label: str) -> str:
    """The dtype vectors are shipped in: the model's (its label's last part: bf16, fp16, fp32)."""
    tail = dtype_label.rsplit("-", 1)[-1]
    return tail if tail in _VECTOR_DTYPES else "fp32"


def generation_for(spec: ExperimentSpec, executor: Executor, dtype_label: str) -> ExperimentSpec:
    """The spec with the client-computed generation fields that go into every trial key: the stop
    ids (model EOS + chat end-of-turn) and the vectors' dtype."""
    model_eos = executor.model_eos_ids()
    gen = spec.generation.model_copy(
        update={
            "stop_ids": hf_generation.stop_token_ids(executor.tokenizer, model_eos),
            "vector_dtype": vector_dtype_for(dtype_label),
        }
    )
    return spec.model_copy(update={"generation": gen})


def build_generation_batch(
    batch: Batch,
    rendered: dict[str, RenderedPrompt],
    vectors: dict[tuple[int, str], torch.Tensor],
    hidden: int,
    pad_id: int,
) -> tuple[GenerationBatch, list[int]]:
    """Rows of one generate call; returns the batch and each row's unpadded injection start.

    Each distinct vector is shipped once ([V, H] in the trial's vector dtype) with a per-row
    index; each row carries its own uniforms (drawn from its trial key) for sampling."""
    trials = batch.trials
    g = trials[0].generation
    vdtype = _VECTOR_DTYPES[g.vector_dtype or "fp32"]
    prompts = [rendered[t.prompt_set] for t in trials]
    ids, mask = concept_vectors.left_pad([list(p.input_ids) for p in prompts], pad_id)
    width = ids.shape[1]
    B = len(trials)
    starts = torch.zeros(B, dtype=torch.long)
    row_layers = torch.full((B,), -1, dtype=torch.long)
    table = concept_vectors.VectorTable(vdtype)
    vector_index = torch.zeros(B, dtype=torch.long)
    coefs = torch.zeros(B, 4)
    scale = torch.ones(B)
    raw_starts: list[int] = []

    for i, (t, p) in enumerate(zip(trials, prompts, strict=True)):
        raw = p.span_start(t.span)
        raw_starts.append(raw)
        starts[i] = raw + (width - len(p.input_ids))
        vector_index[i] = -1
        if t.condition == "control":
            continue
        assert t.layer is not None
        row_layers[i] = t.layer
        if t.condition == "scale":
            scale[i] = t.strength
            continue
        assert t.concept is not None
        v = vectors[(t.layer, t.concept)].float()
        if t.condition == "random":  # a direction of the concept vector's norm, seeded by the trial
            v = concept_vectors.random_vector(v, seed=int(t.key[:8], 16))
        if t.strength_mode != "absolute":
            v = v / v.norm().clamp(min=1e-12)
        vector_index[i] = table.index(v)
        coefs[i, _MODE_COLUMN[t.strength_mode]] = t.strength
    if (vector_index < 0).any():  # rows without a vector point at one zero row
        vector_index[vector_index < 0] = table.index(torch.zeros(hidden))
    uniforms = (
        torch.stack([generation_batch.row_uniforms(t.key, g.max_new_tokens) for t in trials])
        if g.do_sample
        else None
    )
    gb = GenerationBatch(
        input_ids=ids,
        attention_mask=mask,
        starts=starts,
        row_layers=row_layers,
        vectors=table.stacked(),
        coefs=coefs,
        scale=scale,
        max_new_tokens=g.max_new_tokens,
        do_sample=g.do_sample,
        temperature=g.temperature,
        top_p=g.top_p,
        vector_index=vector_index,
        uniforms=uniforms,
        stop_ids=tuple(g.stop_ids),
        pad_id=pad_id,
    )
    return gb, raw_starts


def _finite(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else round(float(x), 6)


def decode_rows(
    batch: Batch,
    gb: GenerationBatch,
    ids: torch.Tensor,
    diags: list[tuple[int, torch.Tensor]],
    raw_starts: list[int],
    tokenizer: Any,
    stop_ids: set[int],
) -> dict[str, tuple[list[int], str, dict[str, Any]]]:
    width = gb.input_ids.shape[1]
    by_layer = dict(diags)
    out: dict[str, tuple[list[int], str, dict[str, Any]]] = {}
    for i, t in enumerate(batch.trials):
        gen = [int(x) for x in ids[i, width:].tolist()]
        for j, tok_id in enumerate(gen):
            if tok_id in stop_ids:
                gen = gen[:j]
                break
        text = tokenizer.decode(gen, skip_special_tokens=True)
        diag: dict[str, Any] = {
            "prompt_len": int(gb.attention_mask[i].sum()),
            "start": raw_starts[i],
            "vector_norm": _finite(float(gb.row_vector(i).float().norm())),
        }
        layer = int(gb.row_layers[i])
        if layer >= 0 and layer in by_layer:
            resid, inj, ratio = (float(x) for x in by_layer[layer][i])
            diag.update(resid_norm=_finite(resid), injected_norm=_finite(inj), ratio=_finite(ratio))
        out[t.key] = (gen, text, diag)
    return out


def experiment_id(spec: ExperimentSpec, identity: ModelIdentity) -> str:
    return keys.experiment_id(spec.model_dump(mode="json"), identity.model_dump(mode="json"))


@dataclass(frozen=True)
class Hooks:
    """Where a run reports: stage progress, one-line notices, the remote request's state."""

    progress: Progress
    notice: Callable[[str], None]
    request_status: Callable[[str], None] | None

    @classmethod
    def of(
        cls,
        progress: Progress | None = None,
        notice: Callable[[str], None] | None = None,
        request_status: Callable[[str], None] | None = None,
    ) -> Hooks:
        """The caller's hooks; where it gives none, progress is dropped and notices are logged."""
        return cls(progress or (lambda stage, done, total: None), notice or (lambda line: log.info("%s", line)),
                   request_status)  # fmt: skip


def run(
    spec: ExperimentSpec, opts: RunOptions, hooks: Hooks | None = None, executor_bundle: tuple[Executor, Any] | None = None
) -> RunReport:
    """Run (or finish) an experiment. `notice` gets one-line messages (preflight, reattach...),
    `request_status` the state of the remote request in flight (queued, running, downloaded);
    `executor_bundle` (from `make_executor`) reuses a loaded model across phases.

    With `spec.dense_grid`: find the crossover on the coarse grid, then run a dense grid (fresh
    seed) bracketing it at each layer, on the same loaded model. Controls come from the coarse
    phase."""
    hooks = hooks or Hooks.of()
    if not spec.dense_grid:
        return _run_phase(spec, opts, hooks, executor_bundle)
    ref, _layers = validate(spec, opts)
    bundle = executor_bundle or make_executor(ref, opts)  # one model load for every phase
    from remote_introspect.stats.crossover import dense_grid

    report = coarse = _run_phase(spec, opts, hooks, bundle)
    for (layer, concept), result in crossover_by_layer(coarse).items():
        dense = dense_grid(result, spec.strengths, spec.dense_points)
        where = f"layer {layer}" + (f", {concept}" if concept is not None else "")
        line = f"{where}: {result.description}; dense grid {', '.join(f'{x:g}' for x in dense)}"
        report.crossovers.append(line)
        hooks.notice(line)
        phase = spec.model_copy(
            update={
                "strengths": tuple(dense),
                "layers": (layer,),
                "layer_fractions": None,
                "concepts": (concept,) if concept is not None else spec.concepts,
                "seed": spec.seed + 1_000_003,  # fresh samples, not the coarse grid's
                "controls": 0,
                "dense_grid": False,
            }
        )
        report = merge_reports(report, _run_phase(phase, opts, hooks, bundle))
    return report


# The CLI's name from before `run` ran the dense grid itself.
run_with_grid = run


def _run_phase(
    spec: ExperimentSpec, opts: RunOptions, hooks: Hooks, executor_bundle: tuple[Executor, Any] | None
) -> RunReport:
    """One grid of `run`: validate → plan → vectors → batches → store → grade."""
    progress, notice = hooks.progress, hooks.notice
    ref, layers = validate(spec, opts)
    executor, identity = load_model(ref, opts, progress, hooks.request_status, executor_bundle)
    tok = executor.tokenizer
    rendered = {
        name: render_prompt(tok, PROMPT_SETS[name], spec.double_bos) for name in prompt_sets_used(spec)
    }
    keyed = generation_for(spec, executor, identity.dtype)  # stop ids and vector dtype go into keys
    trials = unique_trials(plan_trials(keyed, identity, {k: r.ids_hash for k, r in rendered.items()}, layers))
    check_context(spec, ref, rendered)
    exp_id = experiment_id(spec, identity)
    store, check = open_store(opts.cache_root, executor, notice)
    try:
        pending = not_done(store, trials)
        if pending:
            check()  # a refused preflight registers nothing
        store.register(
            exp_id, spec.name, spec.model_dump_json(), {t.key: t.model_dump_json() for t in trials}
        )
        report = RunReport(
            exp_id, spec, layers, trials, {}, {}, ref.preset.instruct if ref.preset else True, ref.name,
            cache_root=Path(opts.cache_root), judge=opts.judge,
        )  # fmt: skip
        if pending:
            _execute(_Phase(spec, opts, ref, executor, store, rendered, report, hooks), identity, pending)
        else:  # every trial done: still verify (and repair) this experiment's vector files
            model_key = keys.model_key(identity.model_dump(mode="json"))
            ensure_vectors(spec, opts, executor, store, model_key, _vector_refs(trials), progress, notice,
                           before_extract=check)  # fmt: skip
        store.settle_batches()
        store.prune_claims()
        grade_trials(store, trials, opts.judge, progress, protocol=spec.protocol)
        report.statuses, report.grades, report.excluded = verified_results(store, trials, opts.judge)
        return report
    finally:
        store.close()


def open_store(root: Path, executor: Executor, notice: Callable[[str], None]) -> tuple[Store, Callable[[], None]]:
    """The store, and `check()`: the executor's preflight, run at most once. A new cache holds
    nothing, so every trial is pending: the preflight runs before the database is created, and a
    refused one (no API key, a model not hosted) leaves nothing behind, not even an empty cache."""
    checked = False

    def check() -> None:
        nonlocal checked
        if not checked:
            preflight(executor, notice)
            checked = True

    if not Store.exists(root):
        check()
    return Store(root), check


def preflight(executor: Executor, notice: Callable[[str], None]) -> None:
    for line in executor.preflight():  # GET-only; raises FatalRemoteError on a fatal finding
        notice(f"preflight: {line}")


def verified_results(
    store: Store, trials: list[Trial], judge: str
) -> tuple[dict[str, str], dict[str, dict[str, Any]], list[str]]:
    """Statuses and grades of a run's trials through audit's own checks (results_frame.load_frame):
    a trial whose stored result, key or grade fails them is reported as "corrupt", has no grade
    here, and is named in the returned lines, so the summary counts exactly what `audit` counts."""
    from remote_introspect.store.results_frame import load_frame

    frame = load_frame(store.conn, judge, (t.key for t in trials))
    df = frame.df
    statuses = dict(zip(df["key"].to_list(), df["status"].to_list(), strict=True))
    usable = set(df.filter(df["usable"])["key"].to_list())
    bad = {p.id for p in frame.problems if p.object in ("trial", "grade")}
    for key in bad:
        if key in statuses:
            statuses[key] = "corrupt"
    name, version = frame.judge
    grades = store.grades_for(usable, name, version)
    return statuses, grades, [p.line() for p in frame.problems]


def verified_ungraded(store: Store, keys: list[str], judge: str) -> list[dict[str, Any]]:
    """Done trials that pass audit's integrity checks and have no intact grade by `judge`:
    the only trials a run grades (an edited response is never regraded and counted)."""
    import polars as pl

    from remote_introspect.store.results_frame import load_frame

    df = load_frame(store.conn, judge, keys).df
    todo = df.filter(
        (pl.col("status") == "done") & (pl.col("integrity") == "ok") & pl.col("strict").is_null()
        & (pl.col("kind") == "introspection")
    )
    return todo.select("key", "response").to_dicts()


def _vector_refs(trials: list[Trial]) -> set[tuple[int, str]]:
    return {t.vector_ref[1:] for t in trials if t.vector_ref is not None}


def ensure_vectors(
    spec: ExperimentSpec,
    opts: RunOptions,
    executor: Executor,
    store: Store,
    model_key: str,
    wanted: set[tuple[int, str]],
    progress: Progress,
    notice: Callable[[str], None],
    before_extract: Callable[[], None] | None = None,
) -> None:
    """Verify the files holding `wanted` (all of this experiment's vectors, on every run, done or
    not): a missing or corrupt one is un-indexed and re-extracted (extraction is deterministic),
    with one notice line; so is any wanted vector not yet extracted."""
    tok = executor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    for name, n in store.drop_broken_vector_files(model_key, spec.recipe.id, wanted):
        notice(
            f"vector file {name} is missing or corrupt (sha256 mismatch): re-extracting its {n} vector(s)"
            " (extraction is deterministic)"
        )
    missing = store.missing_vectors(model_key, spec.recipe.id, wanted)
    if missing:
        if before_extract is not None:
            before_extract()
        progress("extracting concept vectors", 0, len(missing))
        miss_layers = sorted({layer for layer, _ in missing})
        miss_concepts = sorted({c for _, c in missing})

        def extract(ids: torch.Tensor, mask: torch.Tensor, layers: list[int]) -> torch.Tensor:
            return batch_loop.extract(executor, opts.retry, ids, mask, layers)

        vecs = concept_vectors.compute_vectors(extract, tok, spec.recipe, miss_concepts, miss_layers, pad_id)
        store.save_vectors(model_key, spec.recipe.id, canonical_json(spec.recipe.identity()), vecs)
        progress("extracting concept vectors", len(missing), len(missing))


@dataclass(frozen=True)
class _Phase:
    """What one grid of a run works with (the spec, its model, the open store, the report it fills)."""

    spec: ExperimentSpec
    opts: RunOptions
    ref: ModelRef
    executor: Executor
    store: Store
    rendered: dict[str, RenderedPrompt]
    report: RunReport
    hooks: Hooks


def _execute(ph: _Phase, identity: ModelIdentity, pending: list[Trial]) -> None:
    """Vectors, then every pending batch through the shared loop (reattach, claims, retries,
    splitting, failures recorded)."""
    spec, opts, ref, executor, store, report = ph.spec, ph.opts, ph.ref, ph.executor, ph.store, ph.report
    progress, notice = ph.hooks.progress, ph.hooks.notice
    tok = executor.tokenizer
    model_key = keys.model_key(identity.model_dump(mode="json"))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    # Vectors: once per (model, recipe, layer, concept), all layers in one pass.
    wanted = {t.vector_ref[1:] for t in pending if t.vector_ref is not None}
    ensure_vectors(spec, opts, executor, store, model_key, _vector_refs(report.trials), progress, notice)
    vectors = store.load_vectors(model_key, spec.recipe.id, wanted) if wanted else {}
    stop_ids = eos_ids(tok)
    rows = batch_rows(opts, ref, ph.rendered, spec)

    def build(batch: Batch[Trial]) -> tuple[GenerationBatch, list[int]]:
        return build_generation_batch(batch, ph.rendered, vectors, ref.hidden_size, pad_id)

    def decode(batch: Batch[Trial], request: tuple[GenerationBatch, list[int]], out: Any) -> Decoded:
        gb, raw_starts = request
        results = decode_rows(batch, gb, out.ids, out.diagnostics, raw_starts, tok, stop_ids | set(gb.stop_ids))
        return results, nonfinite_rows(batch.trials, out)  # type: ignore[return-value]

    tally = BatchLoop(
        store, executor, opts, build, lambda request, cb: executor.generate(request[0], cb), decode,
        lambda trials: plan_batches(trials, rows), executor.reattach, readout=False, progress=progress,
        notice=notice, stage="generating", failure_stage="failed (retried on the next run)",
    ).run(pending)  # fmt: skip
    report.executed_batches += tally.executed_batches
    report.failed_batches += tally.failed_batches
    report.failed_trials += tally.failed_trials
    report.nonfinite_trials += tally.nonfinite_trials
    report.errors += tally.errors


# The presets' row counts are sized for ~350 tokens per row (the Lindsey prompt + 200 new tokens).
_BUDGET_TOKENS = 350


def batch_rows(
    opts: RunOptions, ref: ModelRef, rendered: dict[str, RenderedPrompt], spec: ExperimentSpec
) -> int:
    """Rows per request: the user's --batch-size, else the preset's row budget scaled to this
    experiment's tokens per row (rows × tokens stays within the preset's KV-cache budget)."""
    if opts.batch_rows:
        return opts.batch_rows
    tokens = max(len(r.input_ids) for r in rendered.values()) + spec.generation.max_new_tokens
    return max(1, min(ref.batch_rows, ref.batch_rows * _BUDGET_TOKENS // max(tokens, 1)))


def crossover_by_layer(report: RunReport) -> dict[tuple[int, str | None], Any]:
    """Per cell curve: identification vs coherence over strength, from the usable concept trials
    of the experiment's first prompt (`cells.crossovers`: per layer pooled over concepts, or per
    (layer, concept) when `cells = "concept"`). Keys are (layer, concept or None); cells where no
    crossover can be computed are left out. A pure function of stored grades."""
    import polars as pl

    from remote_introspect.stats.cells import crossovers
    from remote_introspect.store.results_frame import load_frame

    spec = report.spec
    store = Store(report.cache_root)
    try:
        df = load_frame(store.conn, report.judge, (t.key for t in report.trials)).df
    finally:
        store.close()
    usable = df.filter(pl.col("usable") & (pl.col("prompt_set") == spec.prompt_sets[0]))
    found = crossovers(usable, spec.cells == "concept", spec.crossover_mode)
    return {cell: r for cell, r in found.items() if not isinstance(r, ValueError)}


def merge_reports(a: RunReport, b: RunReport) -> RunReport:
    seen = {t.key for t in a.trials}
    return RunReport(
        experiment_id=a.experiment_id,
        spec=a.spec,
        layers=a.layers,
        trials=a.trials + [t for t in b.trials if t.key not in seen],
        statuses={**a.statuses, **b.statuses},
        grades={**a.grades, **b.grades},
        instruct=a.instruct,
        model_label=a.model_label,
        executed_batches=a.executed_batches + b.executed_batches,
        failed_batches=a.failed_batches + b.failed_batches,
        errors=a.errors + b.errors,
        crossovers=a.crossovers + b.crossovers,
        failed_trials=a.failed_trials + b.failed_trials,
        nonfinite_trials=a.nonfinite_trials + b.nonfinite_trials,
        excluded=a.excluded + [line for line in b.excluded if line not in a.excluded],
        cache_root=a.cache_root,
        judge=a.judge,
    )


def grade_trials(
    store: Store, trials: list[Trial], judge: str, progress: Progress, protocol: str | None = None
) -> None:
    """Grade every done trial the judge has not graded. An LLM judge asks each prompt's own
    question, caches every call beside the results, and leaves a trial it could not grade
    ungraded (never a negative): `grade --cache` or the next run finishes it."""
    from remote_introspect.grading.service import close_grader, grade_rows, make_grader

    by_key = {t.key: t for t in trials}
    grader = make_grader(judge, call_cache=store.root / "judge_calls.sqlite")
    try:
        rows = [
            {**r, "concept": by_key[r["key"]].concept, "prompt_set": by_key[r["key"]].prompt_set,
             "condition": by_key[r["key"]].condition}
            for r in verified_ungraded(store, list(by_key), judge)
        ]  # fmt: skip
        if not rows:
            return
        progress("grading", 0, len(rows))
        outcome = grade_rows(grader, rows, lambda r: protocol, lambda d, n: progress("grading", d, n))
        store.save_grades(
            grader.name,
            grader.version,
            {r["key"]: g.model_dump() for r, g in zip(rows, outcome.grades, strict=True) if g is not None},
        )
        progress("grading", len(rows), len(rows))
    finally:
        close_grader(grader)

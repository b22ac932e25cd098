"""Run the self-prediction experiment: for each model, every object-level and hypothetical-level
prompt, greedily, in batches, through the same executors, store and keys as every other trial.

Per model: load (or connect) once, render each prompt in the model's chat format, plan keyed
`SelfPredictTrial`s, register them, then run only the ones not done: unsteered rows of the
standard batched generation trace (`steered_generation`, no layer steered, greedy), one generate
call — one NDIF request — per batch. A batch that fails is recorded failed (retried on the next
run) and its trials are never scored; a rerun with everything done generates nothing and sends no
request (a local model is still loaded: its weights id is part of every trial key).
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from remote_introspect import keys
from remote_introspect.errors import UserError
from remote_introspect.execution.backends.base import Executor
from remote_introspect.execution.batch_loop import BatchLoop, Decoded, nonfinite_rows, not_done
from remote_introspect.execution.concept_vectors import left_pad
from remote_introspect.execution.runner import (
    Hooks,
    RunOptions,
    eos_ids,
    load_model,
    open_store,
    vector_dtype_for,
)
from remote_introspect.execution.traces import hf_generation
from remote_introspect.execution.traces.generation_batch import GenerationBatch
from remote_introspect.execution.validation import check_cache, check_options
from remote_introspect.experiment import self_prediction as sp
from remote_introspect.experiment.planner import Batch, make_batch
from remote_introspect.experiment.prompts import encode_rendered, render_chat
from remote_introspect.experiment.spec import ModelIdentity
from remote_introspect.models.loading import ModelRef, resolve_model
from remote_introspect.store.database import Store

Progress = Callable[[str, int, int], None]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class SelfPredictConfig:
    models: tuple[str, ...]
    tasks: tuple[str, ...] = sp.TASKS
    n: int = 20
    seed: int = 0
    properties: tuple[str, ...] | None = None  # None: every property that applies to a task

    def spec(self) -> dict[str, Any]:
        """What the run asks for (the experiment row's spec; a model's entry is added per model)."""
        return {
            "kind": sp.TRIAL_KIND,
            "models": list(self.models),
            "tasks": list(self.tasks),
            "n": self.n,
            "seed": self.seed,
            "properties": None if self.properties is None else list(self.properties),
            "object_max_new_tokens": sp.OBJECT_MAX_NEW_TOKENS,
            "hypothetical_max_new_tokens": sp.HYPOTHETICAL_MAX_NEW_TOKENS,
        }


@dataclass
class PlannedTrial:
    trial: sp.SelfPredictTrial
    input_ids: tuple[int, ...]

    @property
    def key(self) -> str:
        return self.trial.key


@dataclass
class ModelRun:
    entry: str  # the --models entry
    experiment_id: str
    trials: list[sp.SelfPredictTrial]
    statuses: dict[str, str] = field(default_factory=dict)
    executed_batches: int = 0
    failed_batches: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class SelfPredictRun:
    config: SelfPredictConfig
    runs: list[ModelRun]
    items: dict[tuple[str, str], dict[str, Any]]  # (task, item id) -> item
    cache_root: Path

    @property
    def complete(self) -> bool:
        return all(r.statuses.get(t.key) == "done" for r in self.runs for t in r.trials)

    @property
    def errors(self) -> list[str]:
        return [e for r in self.runs for e in r.errors]


def validate(config: SelfPredictConfig, opts: RunOptions) -> list[ModelRef]:
    """Everything that can be rejected before a model is loaded or a byte written."""
    if not config.models:
        raise UserError("--models needs at least one model")
    if len(set(config.models)) != len(config.models):
        raise UserError(f"--models lists a model twice: {','.join(config.models)}")
    unknown = [t for t in config.tasks if t not in sp.TASKS]
    if unknown or not config.tasks:
        raise UserError(f"unknown task(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(sp.TASKS)}")
    if config.properties is not None:
        bad = [p for p in config.properties if p not in sp.PROPERTIES]
        if bad or not config.properties:
            raise UserError(
                f"unknown propert(y/ies) {', '.join(bad) or '(none)'}; choose from {', '.join(sp.PROPERTIES)}"
            )
        if not any(sp.properties_for(t, config.properties) for t in config.tasks):
            raise UserError("none of the chosen properties applies to the chosen tasks")
    if config.n < 1:
        raise UserError("--n must be at least 1")
    longest = max(len(sp.load_task(t)["items"]) for t in config.tasks)
    if config.n > longest:
        raise UserError(f"--n {config.n} exceeds the largest task ({longest} prompts)")
    refs = [resolve_model(m) for m in config.models]
    check_options(opts, refs)
    check_cache(opts.cache_root)
    return refs


def planned_items(config: SelfPredictConfig) -> dict[str, list[dict[str, Any]]]:
    return {t: sp.select_items(t, config.n, config.seed) for t in config.tasks}


def plan_model(
    config: SelfPredictConfig,
    ref: ModelRef,
    tokenizer: Any,
    identity: ModelIdentity,
    stop_ids: tuple[int, ...],
    items: dict[str, list[dict[str, Any]]],
) -> list[PlannedTrial]:
    """Every object- and hypothetical-level trial of one model, rendered in its chat format."""
    out: list[PlannedTrial] = []
    context = ref.config.get("max_position_embeddings")

    def add(text: str, task: str, item: dict[str, Any], level: str, prop: str | None, cap: int) -> None:
        rendered = render_chat(tokenizer, [{"role": "user", "content": text}])
        ids, _ = encode_rendered(tokenizer, rendered)
        if isinstance(context, int) and len(ids) + cap > context:
            raise UserError(f"{ref.name}: a {len(ids)}-token {task} prompt does not fit its context of {context}")
        trial = sp.SelfPredictTrial(
            model=identity,
            task=task,
            item_id=item["id"],
            level=level,  # type: ignore[arg-type]
            property=prop,
            prompt_ids_sha=hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
            max_new_tokens=cap,
            stop_ids=stop_ids,
        )
        out.append(PlannedTrial(trial, tuple(ids)))

    for task, chosen in items.items():
        props = sp.properties_for(task, config.properties)
        for item in chosen:
            add(sp.object_text(item), task, item, "object", None, sp.OBJECT_MAX_NEW_TOKENS)
            for prop in props:
                add(sp.hypothetical_text(item, prop), task, item, "hypothetical", prop, sp.HYPOTHETICAL_MAX_NEW_TOKENS)
    return list({p.trial.key: p for p in out}.values())


def experiment_id(config: SelfPredictConfig, entry: str, identity: ModelIdentity) -> str:
    return keys.experiment_id({**config.spec(), "model": entry}, identity.model_dump(mode="json"))


def run(config: SelfPredictConfig, opts: RunOptions, hooks: Hooks | None = None) -> SelfPredictRun:
    hooks = hooks or Hooks.of()
    progress, notice = hooks.progress, hooks.notice
    refs = validate(config, opts)
    items = planned_items(config)
    result = SelfPredictRun(
        config, [], {(t, i["id"]): i for t, chosen in items.items() for i in chosen}, Path(opts.cache_root)
    )
    for ref in refs:
        executor, identity = load_model(ref, opts, progress, stage=f"{ref.name}: loading model")
        try:
            result.runs.append(_run_model(config, opts, ref, executor, identity, items, progress, notice))
        finally:
            del executor  # one model in memory at a time
            gc.collect()
    return result


def _run_model(
    config: SelfPredictConfig,
    opts: RunOptions,
    ref: ModelRef,
    executor: Executor,
    identity: ModelIdentity,
    items: dict[str, list[dict[str, Any]]],
    progress: Progress,
    notice: Callable[[str], None],
) -> ModelRun:
    tok = executor.tokenizer
    stop_ids = hf_generation.stop_token_ids(tok, executor.model_eos_ids())
    planned = plan_model(config, ref, tok, identity, stop_ids, items)
    trials = [p.trial for p in planned]
    exp_id = experiment_id(config, ref.name, identity)
    report = ModelRun(ref.name, exp_id, trials)
    store, check = open_store(opts.cache_root, executor, notice)
    try:
        pending = not_done(store, planned)
        if pending:
            check()  # a refused preflight registers nothing
        spec_json = keys.canonical_json({**config.spec(), "model": ref.name})
        store.register(exp_id, f"self-predict {ref.name}", spec_json, {t.key: t.model_dump_json() for t in trials})
        if pending:
            _execute(opts, ref, executor, store, identity.dtype, pending, report, progress, notice)
        store.settle_batches()
        store.prune_claims()
        report.statuses = store.statuses(t.key for t in trials)
    finally:
        store.close()
    return report


def build_batch(
    rows: list[PlannedTrial], hidden: int, pad_id: int, dtype_label: str, stop_ids: tuple[int, ...]
) -> GenerationBatch:
    """Unsteered, greedy rows: no layer is steered (row_layers -1), one zero vector is shipped."""
    ids, mask = left_pad([list(r.input_ids) for r in rows], pad_id)
    B = len(rows)
    return GenerationBatch(
        input_ids=ids,
        attention_mask=mask,
        starts=torch.zeros(B, dtype=torch.long),
        row_layers=torch.full((B,), -1, dtype=torch.long),
        vectors=torch.zeros(1, hidden, dtype=_DTYPES[vector_dtype_for(dtype_label)]),
        coefs=torch.zeros(B, 4),
        scale=torch.ones(B),
        max_new_tokens=rows[0].trial.max_new_tokens,
        do_sample=False,
        temperature=1.0,
        top_p=1.0,
        vector_index=torch.zeros(B, dtype=torch.long),
        stop_ids=stop_ids,
        pad_id=pad_id,
    )


def decode(
    rows: list[PlannedTrial], gb: GenerationBatch, ids: torch.Tensor, tokenizer: Any, stops: set[int]
) -> dict[str, tuple[list[int], str, dict[str, Any]]]:
    """Each row's response: the generated ids before the first stop id, and their text."""
    width = gb.input_ids.shape[1]
    out = {}
    for i, r in enumerate(rows):
        gen = [int(x) for x in ids[i, width:].tolist()]
        stopped = False
        for j, tok_id in enumerate(gen):
            if tok_id in stops:
                gen, stopped = gen[:j], True
                break
        text = tokenizer.decode(gen, skip_special_tokens=True)
        out[r.trial.key] = (gen, text, {"prompt_len": len(r.input_ids), "stopped": stopped})
    return out


def _batches(pending: list[PlannedTrial], rows: int) -> list[list[PlannedTrial]]:
    """Rows of one level (one token cap) together, similar lengths together (less padding)."""
    groups: dict[int, list[PlannedTrial]] = {}
    for p in pending:
        groups.setdefault(p.trial.max_new_tokens, []).append(p)
    out = []
    for cap in sorted(groups):
        group = sorted(groups[cap], key=lambda p: (len(p.input_ids), p.trial.key))
        out += [group[i : i + rows] for i in range(0, len(group), rows)]
    return out


def _execute(
    opts: RunOptions,
    ref: ModelRef,
    executor: Executor,
    store: Store,
    dtype_label: str,
    pending: list[PlannedTrial],
    report: ModelRun,
    progress: Progress,
    notice: Callable[[str], None],
) -> None:
    """Every pending trial through the shared batch loop (reattach, claims, retries, splitting)."""
    tok = executor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    stop_ids = pending[0].trial.stop_ids
    stops = eos_ids(tok) | set(stop_ids)
    size = opts.batch_rows or ref.batch_rows

    def build(batch: Batch[PlannedTrial]) -> GenerationBatch:
        return build_batch(list(batch.trials), ref.hidden_size, pad_id, dtype_label, stop_ids)

    def decoded(batch: Batch[PlannedTrial], gb: GenerationBatch, out: Any) -> Decoded:
        return decode(list(batch.trials), gb, out.ids, tok, stops), nonfinite_rows(batch.trials, out)  # type: ignore[return-value]

    tally = BatchLoop(
        store, executor, opts, build, executor.generate, decoded,
        lambda trials: [make_batch(rows) for rows in _batches(trials, size)], executor.reattach,
        readout=False, progress=progress, notice=notice, stage=f"{ref.name}: generating",
    ).run(pending)  # fmt: skip
    report.executed_batches += tally.executed_batches
    report.failed_batches += tally.failed_batches
    report.errors += tally.errors

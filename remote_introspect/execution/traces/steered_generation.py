"""The steered, batched, open-loop generation trace (runs locally, under `remote="local"`, and on NDIF).

nnsight captures the `with` block by re-reading this file's source (registered under a neutral
file name, see `portable.relocate`); keep the block self-contained, reading only local names,
torch, nnsight and the portable copies of `interventions`' functions.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import nnsight
import torch

from remote_introspect.execution.traces import generation_batch as batch_math
from remote_introspect.execution.traces.generation_batch import GenerationBatch
from remote_introspect.execution.traces.hf_generation import (
    SESSION_OPTIONS,
    cache_kwarg,
    forward_accepts,
    generate_kwargs,
)
from remote_introspect.execution.traces.portable import PORTABLE, ensure_sources, relocate


def generate_steered(
    model: Any,
    batch: GenerationBatch,
    *,
    mlp_attr: str = "mlp",
    remote: Any = False,
    share_prefix: bool | None = None,
    **backend: Any,
) -> tuple[Any, Any, Any, Any]:
    """Run one steered, batched generation. Returns (ids, diagnostics list, non-finite flags,
    tracer).

    ids: [B, T + steps] (steps <= max_new_tokens: generation ends when every row has produced a
    stop id; HF pads finished rows); diagnostics: list of (layer, [B, 3]) from the prefill pass;
    non-finite flags: [B] bool, True where a steered hidden state or the logits were NaN/inf.
    With `blocking=False` remote submission the values arrive later ("ids", "diags", "bad"); the
    tracer carries the backend (and its job id).

    The steering runs on every step that happens (nnsight's open `tracer.iter[:]` loop); the
    statements after an open loop do not run, so the result is read in a second, empty invoke.
    Sampling is `interventions.sample_step` with the batch's per-row uniforms.

    share_prefix: compute the prompt prefix all rows share (`shared_prefix_length`) ONCE, expand
    its KV cache to every row, then generate (prefilling only each row's steered span). One
    `model.session` holds both traces. None (default): share when running here or under
    `remote="local"`; real remote runs keep the single-trace path unless asked (the cache
    argument's name is decided by the client's transformers, which the server's may not share).
    The steering block below is the same code for both paths.
    """
    ensure_sources()
    if share_prefix is None:
        share_prefix = remote is False or remote == "local"
    prefix_len = batch_math.shared_prefix_length(batch) if share_prefix else 0
    # Names the trace block reads: plain values and the portable functions (never a module).
    layers = batch.layers
    starts = batch.starts - prefix_len  # the prefill pass sees positions [prefix_len, T) only
    row_layers = batch.row_layers
    vector_index = batch.vector_index
    vectors = batch.vectors
    coefs = batch.coefs
    scale = batch.scale
    uniforms = batch.uniforms
    do_sample = batch.do_sample
    temperature = batch.temperature
    top_p = batch.top_p
    needs_mlp = batch.needs_mlp
    n_rows = batch.input_ids.shape[0]
    steer_layer = PORTABLE["steer_layer"]
    sample_step = PORTABLE["sample_step"]
    save = nnsight.save  # a function, not the nnsight module object, travels with the request
    gen_kwargs = generate_kwargs(batch)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}

    if prefix_len:
        hf = model._module
        prefix = {
            "input_ids": batch.input_ids[:1, :prefix_len],
            "attention_mask": batch.attention_mask[:1, :prefix_len],
        }
        prefix_kwargs: dict[str, Any] = {"use_cache": True}
        if forward_accepts(hf, "logits_to_keep"):
            prefix_kwargs["logits_to_keep"] = 1  # the prefix's logits are never read
        cache_kw = cache_kwarg(hf)  # also the output attribute holding the cache
        # Transport options go to the session (one request); the rest are generate's.
        session_kwargs = {k: backend.pop(k) for k in list(backend) if k in SESSION_OPTIONS}
        gen_kwargs.update(backend)
        outer: Any = model.session(remote=remote, **session_kwargs)
    else:
        gen_kwargs.update(remote=remote, **backend)
        outer = contextlib.nullcontext()

    # Non-blocking remote submission returns before the block runs: these stay None and the
    # saved values arrive later from the backend, under the same names.
    ids = diags = bad = None
    shipped = (starts, row_layers, vector_index, vectors, coefs, scale)
    # Keep every statement of the block on ONE line: under remote execution nnsight re-parses the
    # block, and a statement spread over several lines shifts the nested `with` it looks up.
    with warnings.catch_warnings():
        # An open loop ends "cut short" by design when generation stops (see the docstring).
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        with outer as session:
            if prefix_len:
                with model.trace(prefix, **prefix_kwargs):
                    past = getattr(model.output, cache_kw)
                past.batch_repeat_interleave(n_rows)
                gen_kwargs[cache_kw] = past
            with model.generate(**gen_kwargs) as tracer:
                with tracer.invoke(inputs):
                    diags = save([])
                    bad = save(torch.zeros(n_rows, dtype=torch.bool))
                    rel = torch.zeros(n_rows)
                    for step in tracer.iter[:]:
                        for layer in layers:
                            block = model.model.layers[layer]
                            mlp_out = getattr(block, mlp_attr).output if needs_mlp else None
                            h, rel, diag, bad_h = steer_layer(block.output, mlp_out, step == 0, layer, *shipped, rel)
                            if step == 0:
                                diags.append((layer, diag))
                            bad |= bad_h.cpu()
                            block.output = h
                        logits, bad_l = sample_step(model.lm_head.output, uniforms, step, do_sample, temperature, top_p)
                        bad |= bad_l.cpu()
                        if do_sample:
                            model.lm_head.output = logits
                with tracer.invoke():
                    ids = tracer.result.save()
    return ids, diags, bad, (session if prefix_len else tracer)


TRACE_FILE = "<remote_introspect.traces.steered_generation>"
generate_steered = relocate(generate_steered, TRACE_FILE, __file__)

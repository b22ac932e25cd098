"""The two nnsight traces the package runs: batched steered generation and vector extraction.

Both executors (local and NDIF) call these with a different `remote` argument, so the code that
runs on NDIF is exactly the code the tests run locally (and under `remote="local"`). nnsight
captures a `with` block by re-reading this file's source; keep each block self-contained and
reading only local names, torch, nnsight and the portable copies of `interventions`' functions
(`PORTABLE`: shipped by source, never as a module object).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import linecache
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nnsight
import torch

from . import interventions


@dataclass
class GenerationBatch:
    """Everything one generate call needs, as plain tensors (what travels to NDIF)."""

    input_ids: torch.Tensor  # [B, T] left-padded
    attention_mask: torch.Tensor  # [B, T]
    starts: torch.Tensor  # [B] first injected position, in padded coordinates (T = generated only)
    row_layers: torch.Tensor  # [B] decoder layer steered for the row; -1 = none (control)
    vectors: torch.Tensor  # [V, H] distinct directions, shipped once each (the model's dtype)
    coefs: torch.Tensor  # [B, 4] (abs, ‖h‖, ‖m‖, relative) coefficients, see interventions.py
    scale: torch.Tensor  # [B] activation-scaling factor (1 = none)
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    vector_index: torch.Tensor | None = None  # [B] row -> entry of `vectors` (None: row i -> i)
    uniforms: torch.Tensor | None = None  # [B, max_new_tokens] float64, one per row and step
    stop_ids: tuple[int, ...] = ()  # generation stops at any of these (EOS and end-of-turn ids)
    pad_id: int | None = None  # what HF writes after a row has stopped

    def __post_init__(self) -> None:
        B = self.input_ids.shape[0]
        if self.vector_index is None:
            self.vector_index = torch.arange(B)
        if self.uniforms is None:
            self.uniforms = torch.zeros(B, 0, dtype=torch.float64)
        if self.do_sample and tuple(self.uniforms.shape) != (B, self.max_new_tokens):
            raise ValueError(
                f"sampling needs one uniform per row and step: uniforms {tuple(self.uniforms.shape)}, "
                f"expected {(B, self.max_new_tokens)} (see trace_blocks.row_uniforms)"
            )

    @property
    def layers(self) -> list[int]:
        return sorted({int(x) for x in self.row_layers.tolist() if int(x) >= 0})

    @property
    def needs_mlp(self) -> bool:
        return bool((self.coefs[:, 2] != 0).any())

    def row_vector(self, i: int) -> torch.Tensor:
        assert self.vector_index is not None
        return self.vectors[int(self.vector_index[i])]


def row_uniforms(key: str, n: int) -> torch.Tensor:
    """A trial's own uniforms, one per generation step: float64 in [0, 1) from a generator seeded
    by the trial key (a sha256 hex digest). They depend on nothing else (batch, companions)."""
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:16], 16)
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


PORTABLE_FILE = "<remote_introspect.interventions>"
_SOURCES: dict[str, str] = {}  # neutral file name -> source, kept in linecache (see _ensure_sources)


def _ensure_sources() -> None:
    """(Re-)register our neutral file names in linecache: nnsight reads the trace blocks and the
    portable functions' source from there (a `linecache.clearcache()` elsewhere drops them)."""
    for name, source in _SOURCES.items():
        if name not in linecache.cache:
            linecache.cache[name] = (len(source), None, source.splitlines(keepends=True), name)


def _portable_functions() -> dict[str, Any]:
    """The functions of `interventions`, compiled from its source under a neutral file name in a
    namespace that is no importable module. nnsight ships such functions by source with only the
    globals they read (torch and each other): no module object, no `__spec__`/`__loader__`, no
    client file path, nothing the server must import from this package."""
    source = inspect.getsource(interventions)
    _SOURCES[PORTABLE_FILE] = source
    namespace: dict[str, Any] = {"__name__": "remote_introspect_portable"}
    exec(compile(source, PORTABLE_FILE, "exec"), namespace)  # noqa: S102 - our own module's source
    return {
        name: fn
        for name, fn in namespace.items()
        if inspect.isfunction(fn) and fn.__module__ == "remote_introspect_portable"
    }


PORTABLE = _portable_functions()
_ensure_sources()


def decoder_layers(model: Any) -> Any:
    """The decoder-layer list of a causal LM envoy (Llama, Gemma 3, Qwen 2 share this path)."""
    return model.model.layers


def shared_prefix_length(batch: GenerationBatch, min_len: int = 1) -> int:
    """Prompt positions every row of `batch` shares and nobody steers: computed once, then reused.

    Non-zero only when every row has the same ids and no padding (one prompt per batch, the
    runner's common case), there are at least two rows, and every row's injection starts at or
    after the prefix. At least one prompt position is left for the per-row prefill (it yields the
    first token's logits). Span "all" (start 0) gives 0: nothing to share.
    """
    ids, mask = batch.input_ids, batch.attention_mask
    B, T = ids.shape
    if B < 2 or T < 2 or not bool(mask.bool().all()) or not bool((ids == ids[:1]).all()):
        return 0
    prefix = min(int(batch.starts.min()), T - 1)
    return prefix if prefix >= min_len else 0


def _cache_kwarg(hf_model: Any) -> str:
    """transformers 5.x names the cache (argument and output field) `cache`; `past_key_values`
    before (still accepted, with a deprecation warning)."""
    return "cache" if _forward_accepts(hf_model, "cache") else "past_key_values"


def _forward_accepts(hf_model: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(hf_model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


_SESSION_OPTIONS = ("backend", "blocking", "job_id", "verbose")


def model_eos_ids(hf_model: Any) -> list[int]:
    """The model's own stop ids: its generation config's EOS id(s) (else the model config's)."""
    cfg = getattr(hf_model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(hf_model, "config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


# The chat formats' end-of-turn (and end-of-text) tokens: Gemma, Llama 3, Qwen/ChatML.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<eos>")


def stop_token_ids(tokenizer: Any, model_eos: list[int]) -> tuple[int, ...]:
    """Every id that ends a response, computed on the client: the model's generation-config EOS
    ids, the tokenizer's EOS and the chat format's end-of-turn token(s) present in its vocabulary.
    Passed to generate as `eos_token_id` and recorded in the trial key."""
    ids = {int(e) for e in model_eos}
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[t]) for t in END_OF_TURN_TOKENS if t in vocab)
    return tuple(sorted(ids))


def _generate_kwargs(batch: GenerationBatch) -> dict[str, Any]:
    """HF generate's arguments: greedy decoding always (sampling happens in the trace, see
    `interventions.sample_step`), nothing left for the model's generation config to add (no
    temperature/top-p/top-k warpers, no min length), and the batch's stop ids."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": batch.max_new_tokens,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }
    if batch.stop_ids:
        kwargs["eos_token_id"] = list(batch.stop_ids)
    if batch.pad_id is not None:
        kwargs["pad_token_id"] = int(batch.pad_id)
    return kwargs


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
    _ensure_sources()
    if share_prefix is None:
        share_prefix = remote is False or remote == "local"
    prefix_len = shared_prefix_length(batch) if share_prefix else 0
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
    gen_kwargs = _generate_kwargs(batch)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}

    if prefix_len:
        hf = model._module
        prefix = {
            "input_ids": batch.input_ids[:1, :prefix_len],
            "attention_mask": batch.attention_mask[:1, :prefix_len],
        }
        prefix_kwargs: dict[str, Any] = {"use_cache": True}
        if _forward_accepts(hf, "logits_to_keep"):
            prefix_kwargs["logits_to_keep"] = 1  # the prefix's logits are never read
        cache_kw = _cache_kwarg(hf)  # also the output attribute holding the cache
        # Transport options go to the session (one request); the rest are generate's.
        session_kwargs = {k: backend.pop(k) for k in list(backend) if k in _SESSION_OPTIONS}
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


def extract_last_token(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: list[int],
    *,
    remote: Any = False,
    **backend: Any,
) -> tuple[Any, Any]:
    """Decoder-layer outputs at the last token of each (left-padded) row, for all `layers` in ONE
    forward pass, stopped after the last of them (`layers` ascending). Returns ([L, B, H] stacked
    tensor, tracer). Only these rows come back."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    _ensure_sources()
    gather_rows = PORTABLE["gather_rows"]
    stacked = None  # filled by the trace, or (non-blocking remote) returned later as "stacked"
    with model.trace(inputs, remote=remote, **backend) as tracer:
        rows = []
        for layer in layers:
            rows.append(model.model.layers[layer].output[:, -1, :].float())
        # A model split over GPUs (device_map="auto") holds the layers on different devices.
        stacked = gather_rows(rows).save()
        # Nothing past the last requested layer is needed: skip the rest of the stack and the
        # lm_head (vocab × hidden per position: most of the pass on a small, wide-vocab model).
        tracer.stop()
    return stacked, tracer


# The functions above that open nnsight traces run under a neutral file name (their source is
# registered in linecache under it, line for line): nnsight records the trace's file name in
# every request, and the client's absolute paths have no business on the server.
TRACE_FILE = "<remote_introspect.trace_blocks>"


def _relocate_code(code: types.CodeType) -> types.CodeType:
    consts = tuple(_relocate_code(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=TRACE_FILE, co_consts=consts)


def _relocate(fn: Any) -> Any:
    moved = types.FunctionType(
        _relocate_code(fn.__code__), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    moved.__kwdefaults__ = fn.__kwdefaults__
    moved.__doc__, moved.__annotations__, moved.__qualname__ = fn.__doc__, fn.__annotations__, fn.__qualname__
    moved.__module__ = fn.__module__
    return moved


_SOURCES[TRACE_FILE] = Path(__file__).read_text(encoding="utf-8")
_ensure_sources()
generate_steered = _relocate(generate_steered)
extract_last_token = _relocate(extract_last_token)

"""The two nnsight traces the package runs: batched steered generation and vector extraction.

Both executors (local and NDIF) call these with a different `remote` argument, so the code that
runs on NDIF is exactly the code the tests run locally (and under `remote="local"`). nnsight
captures a `with` block by re-reading this file's source; keep each block self-contained and
reading only local names, torch, nnsight and `interventions` (registered for remote shipping).
"""

from __future__ import annotations

from dataclasses import dataclass
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
    vectors: torch.Tensor  # [B, H] direction per row (zeros for controls)
    coefs: torch.Tensor  # [B, 4] (abs, ‖h‖, ‖m‖, relative) coefficients, see interventions.py
    scale: torch.Tensor  # [B] activation-scaling factor (1 = none)
    seed: int
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float

    @property
    def layers(self) -> list[int]:
        return sorted({int(x) for x in self.row_layers.tolist() if int(x) >= 0})

    @property
    def needs_mlp(self) -> bool:
        return bool((self.coefs[:, 2] != 0).any())


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


class InverseCdfSampler:
    """Draw each row's next token from HF's sampling distribution with ONE uniform per row.

    `torch.multinomial(probs, 1)` draws an exponential variate for every vocabulary entry (an
    exponential race): ~0.15 s per step for 24 rows × 262k vocab on 2 CPU cores, a quarter of the
    step. This inverts the CDF of the same probabilities instead (HF's order: EOS suppression
    while under `min_new_tokens`, HF's own temperature and top-p warpers, softmax): pick a block of
    `block` vocabulary entries by its float32 mass (float64 running sum), then the token inside
    the block by an exact float64 CDF of its entries. Same distribution (up to float32 rounding of
    the block masses, ~1e-7 relative), a different random stream, ~10× cheaper.

    It runs as the LAST logits processor under greedy decoding and returns a one-hot score (0 at
    the drawn token, -inf elsewhere), so HF's argmax picks the drawn token; HF's stopping, padding
    and streamer are untouched. `suppress` ids are set to -inf first (every step, as
    min_new_tokens = max_new_tokens does), which lets the caller drop HF's two min-length
    processors (a clone and a `where` over the logits each, every step). Local execution only.
    """

    def __init__(
        self,
        temperature: float,
        top_p: float,
        seed: int,
        suppress: list[int] | None = None,
        block: int = 1024,
    ) -> None:
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.warpers: list[Any] = []
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
        self.seed = seed
        self.suppress = sorted(set(suppress or []))
        self.block = block
        self.generator: torch.Generator | None = None

    def _block_size(self, vocab: int) -> int:
        k = self.block
        while k > 1 and vocab % k:
            k //= 2
        return k if k >= 64 else 0  # 0: no power-of-two block divides the vocabulary

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.suppress:  # in place: `scores` is generate's own float32 copy of this step's logits
            scores[:, self.suppress] = float("-inf")
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        B, V = scores.shape
        probs = torch.softmax(scores, dim=-1)  # what HF hands torch.multinomial
        u = torch.rand((B, 1), generator=self.generator, dtype=torch.float64, device=scores.device)
        k = self._block_size(V)
        if k == 0:
            token = _invert_cdf(probs, u)
        else:
            blocks = probs.view(B, V // k, k)
            mass = blocks.sum(dim=-1).double()  # [B, V/k]
            which = _invert_cdf(mass, u)  # [B, 1]
            cdf = mass.cumsum(dim=-1)
            before = torch.where(which > 0, cdf.gather(1, (which - 1).clamp(min=0)), torch.zeros_like(u))
            # Where u fell inside the chosen block, as a fraction of that block's mass.
            frac = ((u * cdf[:, -1:] - before) / mass.gather(1, which)).clamp(0.0, 1.0)
            inner = blocks[torch.arange(B, device=scores.device), which[:, 0]]  # [B, k]
            token = which * k + _invert_cdf(inner, frac)
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


def _invert_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """[B, 1] index i with cdf[i-1] <= u·total < cdf[i] (float64 running sums of `weights`
    [B, N] >= 0, u [B, 1] in [0, 1)); never an index of zero weight."""
    cdf = weights.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    index = torch.searchsorted(cdf, u * total, right=True)
    # u·total can round up to total: take the last entry with positive weight instead.
    return torch.minimum(index, (cdf < total).sum(dim=-1, keepdim=True))


SAMPLERS = ("hf", "inverse-cdf")
_SESSION_OPTIONS = ("backend", "blocking", "job_id", "verbose")


def _sampling_kwargs(batch: GenerationBatch, sampler: str, eos: list[int]) -> dict[str, Any]:
    """HF generate's sampling arguments, min_new_tokens included (every row makes exactly n)."""
    n = batch.max_new_tokens
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not batch.do_sample:
        return {"min_new_tokens": n, "do_sample": False}
    if sampler == "hf":
        return {
            "min_new_tokens": n,
            "do_sample": True,
            "temperature": batch.temperature,
            "top_p": batch.top_p,
            "top_k": None,
        }
    from transformers import LogitsProcessorList

    proc = InverseCdfSampler(batch.temperature, batch.top_p, batch.seed, suppress=eos)
    # Greedy decoding: HF adds no warpers of its own, so the model's generation defaults cannot
    # add a top-k (or temperature) behind our back; ours are applied inside the sampler, and so
    # is min_new_tokens' EOS suppression (the sampler never draws an EOS id).
    return {
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "logits_processor": LogitsProcessorList([proc]),
    }


def _eos_ids(hf_model: Any) -> list[int]:
    """The ids HF's min-length processors suppress: the generation config's EOS id(s)."""
    cfg = getattr(hf_model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    if eos is None:
        eos = getattr(hf_model.config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def generate_steered(
    model: Any,
    batch: GenerationBatch,
    *,
    mlp_attr: str = "mlp",
    remote: Any = False,
    share_prefix: bool | None = None,
    sampler: str = "hf",
    **backend: Any,
) -> tuple[Any, Any, Any]:
    """Run one steered, seeded, batched generation. Returns (ids, diagnostics list, tracer).

    ids: [B, T + max_new_tokens]; diagnostics: list of (layer, [B, 3]) from the prefill pass.
    With `blocking=False` remote submission the values arrive later; the tracer carries the
    backend (and its job id).

    share_prefix: compute the prompt prefix all rows share (`shared_prefix_length`) ONCE, expand
    its KV cache to every row, then generate (prefilling only each row's steered span). One
    `model.session` holds both traces, so it is one request remotely too. None (default): share
    when running here or under `remote="local"`; real remote runs keep the single-trace path
    unless asked. The steering is the same formula on the same positions either way.
    sampler: "hf" (torch.multinomial, HF's own) or "inverse-cdf" (`InverseCdfSampler`; local only).
    """
    if share_prefix is None:
        share_prefix = remote is False or remote == "local"
    if sampler != "hf" and remote is not False:
        raise ValueError("the inverse-cdf sampler is for local execution only (remote uses HF's sampler)")
    prefix_len = shared_prefix_length(batch) if share_prefix else 0
    layers = batch.layers
    n = batch.max_new_tokens
    row_layers = batch.row_layers
    vectors = batch.vectors
    coefs = batch.coefs
    scale = batch.scale
    seed = batch.seed
    needs_mlp = batch.needs_mlp
    eos = _eos_ids(model._module) if sampler != "hf" else []
    gen_kwargs = {"max_new_tokens": n, **_sampling_kwargs(batch, sampler, eos)}
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}

    # Non-blocking remote submission returns before the block runs: these stay None and the
    # saved values arrive later from the backend, under the same names ("ids", "diags").
    ids = diags = None
    if prefix_len == 0:
        starts = batch.starts
        with model.generate(inputs, remote=remote, **gen_kwargs, **backend) as tracer:
            # Seeding inside the block makes the server sample exactly as a local run does.
            torch.manual_seed(seed)
            diags = nnsight.save([])
            rel = torch.zeros(row_layers.shape[0], device=row_layers.device)
            for step in tracer.iter[:n]:
                for layer in layers:
                    rows = row_layers == layer
                    sel_coefs = coefs * rows[:, None].to(coefs.dtype)
                    sel_scale = torch.where(rows, scale, torch.ones_like(scale))
                    block = model.model.layers[layer]
                    mlp_out = getattr(block, mlp_attr).output if needs_mlp else None
                    h = block.output
                    mask = interventions.span_mask(h.shape[1], starts, step == 0, h.dtype)
                    if step == 0:
                        rel = torch.where(rows, interventions.prompt_span_norm(h, starts), rel)
                    new = interventions.steer(h, mask, vectors, sel_coefs, sel_scale, rel, mlp_out)
                    if step == 0:
                        diags.append((layer, interventions.start_diagnostics(h, new, starts, rows)))
                    block.output = new
            ids = tracer.result.save()
        return ids, diags, tracer

    # Shared prefix: the generate's prefill pass sees only positions [prefix_len, T), so the
    # starts move by prefix_len (the injection begins at or after the prefix by construction).
    starts = batch.starts - prefix_len
    n_rows = batch.input_ids.shape[0]
    prefix = {
        "input_ids": batch.input_ids[:1, :prefix_len],
        "attention_mask": batch.attention_mask[:1, :prefix_len],
    }
    hf = model._module
    prefix_kwargs: dict[str, Any] = {"use_cache": True}
    if _forward_accepts(hf, "logits_to_keep"):
        prefix_kwargs["logits_to_keep"] = 1  # the prefix's logits are never read
    cache_kw = _cache_kwarg(hf)  # also the output attribute holding the cache
    # Transport options go to the session (one request); the rest are generate's.
    session_kwargs = {k: backend.pop(k) for k in list(backend) if k in _SESSION_OPTIONS}
    gen_kwargs.update(backend)
    with model.session(remote=remote, **session_kwargs) as session:
        with model.trace(prefix, **prefix_kwargs):
            past = getattr(model.output, cache_kw)
        past.batch_repeat_interleave(n_rows)
        with model.generate(inputs, **{cache_kw: past}, **gen_kwargs) as tracer:
            # The same block as above (kept textually identical; tests/test_shared_prefix.py).
            torch.manual_seed(seed)
            diags = nnsight.save([])
            rel = torch.zeros(row_layers.shape[0], device=row_layers.device)
            for step in tracer.iter[:n]:
                for layer in layers:
                    rows = row_layers == layer
                    sel_coefs = coefs * rows[:, None].to(coefs.dtype)
                    sel_scale = torch.where(rows, scale, torch.ones_like(scale))
                    block = model.model.layers[layer]
                    mlp_out = getattr(block, mlp_attr).output if needs_mlp else None
                    h = block.output
                    mask = interventions.span_mask(h.shape[1], starts, step == 0, h.dtype)
                    if step == 0:
                        rel = torch.where(rows, interventions.prompt_span_norm(h, starts), rel)
                    new = interventions.steer(h, mask, vectors, sel_coefs, sel_scale, rel, mlp_out)
                    if step == 0:
                        diags.append((layer, interventions.start_diagnostics(h, new, starts, rows)))
                    block.output = new
            ids = tracer.result.save()
    return ids, diags, session


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
    stacked = None  # filled by the trace, or (non-blocking remote) returned later as "stacked"
    with model.trace(inputs, remote=remote, **backend) as tracer:
        rows = []
        for layer in layers:
            rows.append(model.model.layers[layer].output[:, -1, :].float())
        stacked = torch.stack(rows).save()
        # Nothing past the last requested layer is needed: skip the rest of the stack and the
        # lm_head (vocab × hidden per position: most of the pass on a small, wide-vocab model).
        tracer.stop()
    return stacked, tracer

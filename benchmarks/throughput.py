"""Trials per second of the package's batched steered generation vs one trial per generate call.

    python benchmarks/throughput.py --model tiny          # CPU, seconds
    python benchmarks/throughput.py --model 8b            # one GPU: random-init Llama-3.1-8B shape, bf16

Both paths run in the same process on the same random-init model through the package's own code
(`LocalExecutor.generate` -> `steered_generation.generate_steered`): the batched path (one generate call
for `--batch` rows, each with its own vector/strength, controls included; the shared-prompt prefix
computed once unless `--no-share`) and the per-call loop existing tools use (one row per call). A
timer in HF's stopping criteria splits each call into prefill (up to the first token) and decode
steps. The floor is what the hardware allows for the batched workload: per step the larger of
FLOPs / measured matmul rate and bytes moved / measured copy bandwidth (weights + KV cache +
logits), with the shared prefix computed once. Prints a table; asserts nothing (see
tests/integration/test_benchmark_smoke.py for the CI smoke run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from remote_introspect.execution.backends.local import LocalExecutor  # noqa: E402
from remote_introspect.execution.traces import generation_batch  # noqa: E402
from remote_introspect.execution.traces.generation_batch import GenerationBatch  # noqa: E402
from remote_introspect.models.loading import LoadedModel, resolve_model  # noqa: E402

# The workload: the 147-token Lindsey prompt, injection from token 120, 100 new tokens.
DEFAULTS = {
    "tiny": dict(batch=64, per_call=8, layer=2, device="cpu", dtype="fp32"),
    "8b": dict(batch="auto", per_call=4, layer=21, device="cuda", dtype="bf16"),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- the model -----------------------------------------------------------------------------------------


def random_model_from_config(config: Any, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random-init causal LM of `config`'s shape: built on the meta device (no memory, no init),
    materialised with `to_empty` on `device`, then initialised by HF's own `init_weights` (normal
    weights, unit norms, RoPE buffers recomputed: `to_empty` leaves buffers as garbage too)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to_empty(device=device)
    for module in model.modules():  # from_config may have flagged the meta tensors as initialised
        module._is_hf_initialized = False
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if hasattr(tensor, "_is_hf_initialized"):
                tensor._is_hf_initialized = False
    torch.manual_seed(seed)
    with torch.no_grad():
        model.init_weights()
    return model.eval()


def load(model_name: str, device: str, dtype_name: str) -> LoadedModel:
    """The preset's shape with random weights: `tiny`, or a preset's shipped config.json. The
    benchmark feeds token ids, so the tiny test tokenizer stands in for the (gated) real one: nnsight
    only needs a tokenizer object to build its pipeline."""
    from transformers import AutoConfig

    from remote_introspect.models.tiny import build_tiny_tokenizer, tiny_config

    ref = resolve_model(model_name)
    tok = build_tiny_tokenizer()
    if model_name == "tiny":
        return loaded_from_config(ref, tiny_config("llama", len(tok)), tok, device, dtype_name)
    assert ref.preset is not None and ref.preset.shipped_config_path() is not None
    config = AutoConfig.from_pretrained(str(ref.preset.shipped_config_path()))
    return loaded_from_config(ref, config, tok, device, dtype_name)


def loaded_from_config(ref: Any, config: Any, tok: Any, device: str, dtype_name: str) -> LoadedModel:
    from nnsight import TransformersModel

    hf = random_model_from_config(config, device, DTYPES[dtype_name])
    return LoadedModel(ref, TransformersModel(hf, tokenizer=tok), tok, dtype_name, "random-init", device)


# -- the workload --------------------------------------------------------------------------------------


def make_batch(
    hf: Any, rows: int, prompt_tokens: int, start: int, new_tokens: int, layer: int, seed: int = 0
) -> GenerationBatch:
    """`rows` trials of ONE prompt (random ids), as the runner builds them: every 8th row a
    control, the others an absolute-strength concept vector at `layer` (strengths 2/4/8/16)."""
    cfg = hf.config
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(16, cfg.vocab_size, (prompt_tokens,), generator=gen)
    ids = prompt.expand(rows, -1).clone()
    mask = torch.ones_like(ids)
    row_layers = torch.full((rows,), layer)
    vectors = torch.randn(rows, cfg.hidden_size, generator=gen)
    vectors = vectors / vectors.norm(dim=-1, keepdim=True)
    coefs = torch.zeros(rows, 4)
    coefs[:, 0] = torch.tensor([2.0, 4.0, 8.0, 16.0]).repeat(rows // 4 + 1)[:rows]
    controls = torch.arange(rows) % 8 == 7
    row_layers[controls] = -1
    vectors[controls] = 0
    coefs[controls] = 0
    return GenerationBatch(
        input_ids=ids,
        attention_mask=mask,
        starts=torch.full((rows,), start),
        row_layers=row_layers,
        vectors=vectors,
        coefs=coefs,
        scale=torch.ones(rows),
        max_new_tokens=new_tokens,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        uniforms=torch.rand(rows, new_tokens, generator=gen, dtype=torch.float64),
    )


def one_row(batch: GenerationBatch, i: int) -> GenerationBatch:
    fields = {k: (v[i : i + 1] if isinstance(v, torch.Tensor) else v) for k, v in batch.__dict__.items()}
    fields["vectors"] = batch.row_vector(i)[None]
    fields["vector_index"] = torch.zeros(1, dtype=torch.long)
    return GenerationBatch(**fields)


class StepTimer:
    """A stopping criterion that never stops: records when each step's token is chosen."""

    def __init__(self, device: str) -> None:
        self.sync = device.startswith("cuda")
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: Any, **_: Any) -> torch.Tensor:
        if self.sync:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@dataclass
class Timing:
    label: str
    rows: int
    trials: int
    wall_s: float
    prefill_s: float  # up to the first token, summed over calls
    decode_ms_per_step: float  # decode steps only (prefill excluded), mean over calls

    @property
    def trials_per_s(self) -> float:
        return self.trials / self.wall_s


def run_calls(executor: LocalExecutor, batches: list[GenerationBatch], label: str) -> Timing:
    from transformers import StoppingCriteriaList

    device = executor.loaded.device
    wall = prefill = 0.0
    step_ms: list[float] = []
    for b in batches:
        timer = StepTimer(device)
        # A fixed-length workload (trials stop at their end-of-turn token; a benchmark must not).
        executor.generate_kwargs = {
            "stopping_criteria": StoppingCriteriaList([timer]),
            "min_new_tokens": batches[0].max_new_tokens,
        }
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        executor.generate(b, lambda _job: None)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall += time.perf_counter() - t0
        prefill += timer.times[0] - t0
        if len(timer.times) > 1:
            step_ms.append(1000 * (timer.times[-1] - timer.times[0]) / (len(timer.times) - 1))
    executor.generate_kwargs = {}
    rows = batches[0].input_ids.shape[0]
    trials = sum(b.input_ids.shape[0] for b in batches)
    return Timing(label, rows, trials, wall, prefill, sum(step_ms) / max(len(step_ms), 1))


# -- the floor -----------------------------------------------------------------------------------------


def _best_time(fn: Any, device: str, repeats: int = 5) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def measure_hardware(device: str, dtype: torch.dtype) -> tuple[float, float]:
    """(matmul FLOP/s, copy bytes/s) measured here, in the model's dtype."""
    n = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    rate = 2 * n**3 / _best_time(lambda: a @ b, device)
    elems = (1 << 28) if device.startswith("cuda") else (1 << 24)
    src = torch.empty(elems, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.nbytes / _best_time(lambda: dst.copy_(src), device)  # read + write
    return rate, bandwidth


def floor_seconds(cfg: Any, rows: int, prompt: int, start: int, new: int, bytes_per_param: int,
                  rate: float, bandwidth: float) -> float:  # fmt: skip
    """Lower bound on one batched call: shared prefix once, per-row span, then decode steps."""
    H, L, V, inter = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.intermediate_size
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or H // heads
    kv_dim = cfg.num_key_value_heads * head_dim
    body = L * (2 * H * heads * head_dim + 2 * H * kv_dim + 3 * H * inter)  # matmul params per token
    params = body + H * V * (1 if cfg.tie_word_embeddings else 2) + 2 * H * L  # + embeddings, norms
    kv_per_token = L * 2 * kv_dim * bytes_per_param

    def attn_flops(tokens: int, ctx: float) -> float:
        return 4 * tokens * ctx * heads * head_dim * L

    prefix = min(start, prompt - 1)
    span = prompt - prefix
    prefill_flops = 2 * body * (prefix + rows * span) + 2 * H * V * rows
    prefill_flops += attn_flops(prefix, prefix / 2) + attn_flops(rows * span, prefix + span / 2)
    t = prefill_flops / rate
    for step in range(1, new):
        ctx = prompt + step
        flops = 2 * rows * (body + H * V) + attn_flops(rows, ctx)
        moved = params * bytes_per_param + rows * ctx * kv_per_token + rows * V * 4
        t += max(flops / rate, moved / bandwidth)
    return t


# -- main ----------------------------------------------------------------------------------------------


def auto_batch(loaded: LoadedModel, prompt: int, new: int, bytes_per_param: int) -> int:
    """Rows that fit in free GPU memory: KV cache, fp32 logits (×4 live copies while sampling) and
    the per-row prefill activations, with 25% headroom; a multiple of 64."""
    cfg = loaded.nn_model._module.config
    free, _ = torch.cuda.mem_get_info()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * (prompt + new) * bytes_per_param
    logits = 4 * cfg.vocab_size * 4
    acts = prompt * (3 * cfg.intermediate_size + 6 * cfg.hidden_size) * bytes_per_param
    rows = int(0.75 * free / (kv + logits + acts))
    return max(64, min(4096, rows // 64 * 64))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=list(DEFAULTS), default="tiny")
    p.add_argument("--batch", default=None, help="rows per batched call, or 'auto' (free GPU memory)")
    p.add_argument("--calls", type=int, default=1, help="batched calls to time (after one warm-up)")
    p.add_argument("--per-call-trials", type=int, default=None, help="trials in the one-per-call loop")
    p.add_argument("--prompt-tokens", type=int, default=147)
    p.add_argument("--start", type=int, default=120, help="first injected prompt position")
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=list(DTYPES), default=None)
    p.add_argument("--no-share", action="store_true", help="prefill the whole prompt for every row")
    p.add_argument("--compare-unshared", action="store_true", help="also time the batched path unshared")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    d = DEFAULTS[args.model]
    device = args.device or d["device"]
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--model {args.model} needs a CUDA GPU (none here); try --model tiny", file=sys.stderr)
        return 2
    dtype_name = args.dtype or d["dtype"]
    layer = d["layer"] if args.layer is None else args.layer

    t0 = time.perf_counter()
    loaded = load(args.model, device, dtype_name)
    load_s = time.perf_counter() - t0
    hf = loaded.nn_model._module
    bpp = torch.empty(0, dtype=DTYPES[dtype_name]).element_size()
    batch_arg = args.batch or d["batch"]
    rows = (
        auto_batch(loaded, args.prompt_tokens, args.new_tokens, bpp)
        if batch_arg == "auto"
        else int(batch_arg)
    )
    per_call = args.per_call_trials or d["per_call"]
    # share_prefix None: the package default (shared when the rows allow it).
    executor = LocalExecutor(loaded, share_prefix=False if args.no_share else None)
    batch = make_batch(hf, rows, args.prompt_tokens, args.start, args.new_tokens, layer)
    warm = make_batch(
        hf, min(rows, 4), args.prompt_tokens, args.start, min(args.new_tokens, 4), layer, seed=1
    )
    if not args.no_warmup:
        executor.generate(warm, lambda _job: None)
        executor.generate(one_row(warm, 0), lambda _job: None)

    results = [run_calls(executor, [batch] * args.calls, "batched (one call)")]
    if args.compare_unshared and not args.no_share:
        executor.share_prefix = False
        results.append(run_calls(executor, [batch] * args.calls, "batched, prefix not shared"))
        executor.share_prefix = None
    single = run_calls(executor, [one_row(batch, i) for i in range(per_call)], "one trial per call")
    results.append(single)

    rate, bandwidth = measure_hardware(device, DTYPES[dtype_name])
    floor_s = floor_seconds(
        hf.config, rows, args.prompt_tokens, args.start, args.new_tokens, bpp, rate, bandwidth
    )
    floor_tps = rows / floor_s

    name = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"CPU × {torch.get_num_threads()} threads"
    )
    prefix = generation_batch.shared_prefix_length(batch) if executor.share_prefix is not False else 0
    print(
        f"model {args.model} (random init, {dtype_name}) on {name}; load {load_s:.1f}s; prompt {args.prompt_tokens} "
        f"tokens, injection from {args.start}, {args.new_tokens} new tokens, sampling (per-trial inverse CDF in the trace); "
        f"layer {layer}; shared prefix {prefix} tokens"
    )
    header = f"{'path':<28} {'rows':>5} {'trials':>6} {'wall s':>8} {'trials/s':>9} {'prefill s':>9} {'ms/step':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.label:<28} {r.rows:>5} {r.trials:>6} {r.wall_s:>8.2f} {r.trials_per_s:>9.2f} "
            f"{r.prefill_s / (r.trials // r.rows):>9.3f} {r.decode_ms_per_step:>8.1f}"
        )
    best = results[0]
    ratio = best.trials_per_s / single.trials_per_s
    print(f"batched / one-per-call: {ratio:.1f}x")
    print(
        f"floor at {rows} rows: {floor_tps:.1f} trials/s (matmul {rate / 1e12:.2f} TFLOP/s, copy "
        f"{bandwidth / 1e9:.1f} GB/s measured); batched reaches {100 * best.trials_per_s / floor_tps:.0f}% of it"
    )
    if args.model == "8b":
        print(
            f"targets: >=200x the per-call loop: {'met' if ratio >= 200 else 'MISSED'}; "
            f">=120 trials/s: {'met' if best.trials_per_s >= 120 else 'MISSED'}"
        )
    if args.json:
        out = {
            "model": args.model,
            "device": name,
            "rows": rows,
            "sampler": "per-trial-inverse-cdf",
            "shared_prefix_tokens": prefix,
            "results": [{**r.__dict__, "trials_per_s": r.trials_per_s} for r in results],
            "ratio": ratio,
            "floor_trials_per_s": floor_tps,
            "matmul_flops": rate,
            "copy_bytes_per_s": bandwidth,
        }
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""benchmarks/throughput.py runs end to end on the tiny model (minimal sizes) and prints its table.

No timing is asserted: the numbers depend on the machine. The GPU (`--model 8b`) path's model
construction — meta device, `to_empty`, HF's `init_weights`, bf16, a stand-in tokenizer — is exercised
here on CPU with the tiny config.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("throughput_bench", ROOT / "benchmarks" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tiny_benchmark_prints_its_table(capsys, tmp_path) -> None:
    bench = _bench()
    out_json = tmp_path / "t.json"
    args = ["--model", "tiny", "--batch", "4", "--new-tokens", "4", "--per-call-trials", "2"]
    args += [
        "--prompt-tokens",
        "24",
        "--start",
        "18",
        "--no-warmup",
        "--compare-unshared",
        "--json",
        str(out_json),
    ]
    assert bench.main(args) == 0
    text = capsys.readouterr().out
    for needle in ("batched (one call)", "batched, prefix not shared", "one trial per call", "trials/s",
                   "prefill s", "ms/step", "batched / one-per-call:", "floor at 4 rows", "shared prefix 18 tokens"):  # fmt: skip
        assert needle in text, needle
    data = json.loads(out_json.read_text())
    assert data["rows"] == 4 and len(data["results"]) == 3
    assert all(r["trials_per_s"] > 0 and r["decode_ms_per_step"] > 0 for r in data["results"])


def test_gpu_model_path_builds_on_cpu_with_the_tiny_config() -> None:
    """`random_model_from_config` (meta → to_empty → init_weights) gives a sane model: weights
    initialised, RoPE buffers recomputed, and the package's executor generates with it (bf16)
    through the shared-prefix path."""
    from remote_introspect.execution.backends.local import LocalExecutor
    from remote_introspect.models.loading import resolve_model
    from remote_introspect.models.tiny import build_tiny_model, tiny_config

    bench = _bench()
    reference, tok = build_tiny_model("llama")
    cfg = tiny_config("llama", reference.config.vocab_size)
    loaded = bench.loaded_from_config(resolve_model("tiny"), cfg, tok, "cpu", "bf16")
    hf = loaded.nn_model._module
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in hf.parameters())
    assert all(p.float().std() > 0 for n, p in hf.named_parameters() if p.dim() == 2)
    assert all((p == 1).all() for n, p in hf.named_parameters() if n.endswith("norm.weight"))
    assert torch.allclose(hf.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
    batch = bench.make_batch(hf, rows=6, prompt_tokens=20, start=15, new_tokens=3, layer=2)
    ex = LocalExecutor(loaded)
    out = ex.generate(batch, lambda _job: None)
    assert out.ids.shape == (6, 23)
    floor = bench.floor_seconds(hf.config, 6, 20, 15, 3, 2, 1e10, 1e9)
    assert floor > 0

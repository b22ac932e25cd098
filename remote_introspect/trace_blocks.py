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


def generate_steered(
    model: Any, batch: GenerationBatch, *, mlp_attr: str = "mlp", remote: Any = False, **backend: Any
) -> tuple[Any, Any, Any]:
    """Run one steered, seeded, batched generation. Returns (ids, diagnostics list, tracer).

    ids: [B, T + max_new_tokens]; diagnostics: list of (layer, [B, 3]) from the prefill pass.
    With `blocking=False` remote submission the values arrive later; the tracer carries the
    backend (and its job id).
    """
    layers = batch.layers
    n = batch.max_new_tokens
    row_layers = batch.row_layers
    starts = batch.starts
    vectors = batch.vectors
    coefs = batch.coefs
    scale = batch.scale
    seed = batch.seed
    needs_mlp = batch.needs_mlp
    sampling = {"do_sample": batch.do_sample}
    if batch.do_sample:
        sampling.update(temperature=batch.temperature, top_p=batch.top_p, top_k=None)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    # Non-blocking remote submission returns before the block runs: these stay None and the
    # saved values arrive later from the backend, under the same names ("ids", "diags").
    ids = diags = None
    with model.generate(
        inputs, max_new_tokens=n, min_new_tokens=n, remote=remote, **sampling, **backend
    ) as tracer:
        # Seeding inside the block makes the server sample exactly as a local run does.
        torch.manual_seed(seed)
        diags = nnsight.save([])
        rel = torch.zeros(row_layers.shape[0])
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
    forward pass. Returns ([L, B, H] stacked tensor, tracer). Only these rows come back."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    stacked = None  # filled by the trace, or (non-blocking remote) returned later as "stacked"
    with model.trace(inputs, remote=remote, **backend) as tracer:
        rows = []
        for layer in layers:
            rows.append(model.model.layers[layer].output[:, -1, :].float())
        stacked = torch.stack(rows).save()
    return stacked, tracer

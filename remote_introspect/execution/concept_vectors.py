"""Concept vectors: Lindsey's mean-baseline recipe and Merrill's contrast pairs.

mean-baseline: v(word, L) = h_L(last token of the chat-rendered "Tell me about {word}") − mean over
the baseline words of the same quantity. Not normalised (Lindsey).
contrast-pairs: v(concept, L) = mean over the concept's pairs of h_L(last token of the
chat-rendered positive sentence) − the same mean over the negatives, unit-normalised (Merrill).
h_L is the decoder layer's output, i.e. the true residual stream. All requested layers come from
ONE forward pass per chunk of prompts; results are stored once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from remote_introspect.experiment.prompts import encode_rendered, load_pairs, render_chat
from remote_introspect.experiment.spec import VectorRecipe


def recipe_prompt(tokenizer: object, recipe: VectorRecipe, word: str) -> list[int]:
    """Token ids of the vector prompt. `end-of-prompt`: through the generation header (default);
    `end-of-user`: the rendered text cut at the end of the user's words. The word (concept and
    baseline alike) is written in lowercase (Lindsey's appendix: "the word is always written in
    lowercase"), so "Dust" and "dust" give the same vector."""
    word = word.lower()
    messages = [{"role": "user", "content": recipe.template.format(word=word)}]
    text = render_chat(tokenizer, messages, add_generation_prompt=True)
    ids, offsets = encode_rendered(tokenizer, text, recipe.double_bos)
    if recipe.position == "end-of-user":
        end = text.rindex(messages[0]["content"]) + len(messages[0]["content"])
        ids = [i for i, (a, _b) in zip(ids, offsets, strict=True) if a < end]
    return ids


class VectorTable:
    """A batch's distinct vectors, each shipped once ([V, H] in the shipped dtype); each row of
    the batch carries its entry's index. Vectors are the same when their bytes are."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._index: dict[bytes, int] = {}
        self.rows: list[torch.Tensor] = []

    def index(self, v: torch.Tensor) -> int:
        v = v.to(self.dtype).contiguous()
        key = v.view(torch.uint8).numpy().tobytes()
        if key not in self._index:
            self._index[key] = len(self.rows)
            self.rows.append(v)
        return self._index[key]

    def stacked(self) -> torch.Tensor:
        return torch.stack(self.rows)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def last_token_states(
    extract,  # Callable[[Tensor, Tensor, list[int]], Tensor [L, B, H]]
    prompts: list[list[int]],
    layers: list[int],
    pad_id: int,
    chunk: int,
) -> torch.Tensor:
    """[L, len(prompts), H]: each prompt's last-token decoder-layer outputs, `chunk` rows a pass."""
    acts = [extract(*left_pad(prompts[i : i + chunk], pad_id), layers) for i in range(0, len(prompts), chunk)]
    return torch.cat(acts, dim=1)


Rows = list[list[int]]
Diffs = Callable[[torch.Tensor], torch.Tensor]  # [L, rows, H] states -> [L, words, H] differences


def _mean_baseline_rows(tokenizer: object, recipe: VectorRecipe, words: list[str]) -> tuple[Rows, Diffs]:
    """The words' prompts, then the baseline words' (duplicates kept: the published recipe); a
    word's difference is its state minus the baseline mean, computed in the same passes."""
    prompts = [recipe_prompt(tokenizer, recipe, w) for w in words + list(recipe.baseline_words)]

    def diffs(stacked: torch.Tensor) -> torch.Tensor:
        return stacked[:, : len(words)] - stacked[:, len(words) :].mean(dim=1, keepdim=True)

    return prompts, diffs


def _contrast_pair_rows(tokenizer: object, recipe: VectorRecipe, words: list[str]) -> tuple[Rows, Diffs]:
    """Per word, its positive sentences then its negatives; a word's difference is the mean over
    its positives minus the mean over its negatives."""
    pairs = load_pairs(recipe.pairs)
    texts: list[str] = []
    for w in words:
        texts += [p for p, _n in pairs[w]] + [n for _p, n in pairs[w]]
    prompts = [
        encode_rendered(tokenizer, render_chat(tokenizer, [{"role": "user", "content": t}]), recipe.double_bos)[0]
        for t in texts
    ]

    def diffs(stacked: torch.Tensor) -> torch.Tensor:
        out, offset = [], 0
        for w in words:
            n = len(pairs[w])
            pos = stacked[:, offset : offset + n].mean(dim=1)
            neg = stacked[:, offset + n : offset + 2 * n].mean(dim=1)
            out.append(pos - neg)
            offset += 2 * n
        return torch.stack(out, dim=1)

    return prompts, diffs


def compute_vectors(
    extract,  # Callable[[Tensor, Tensor, list[int]], Tensor [L, B, H]]
    tokenizer: object,
    recipe: VectorRecipe,
    concepts: list[str],
    layers: list[int],
    pad_id: int,
    chunk: int = 160,
) -> dict[tuple[int, str], torch.Tensor]:
    """Vectors for `concepts` at `layers` by the recipe's kind, every prompt in the same passes;
    unit-normalised when the recipe says so."""
    words = list(dict.fromkeys(concepts))  # unique, ordered
    rows = _contrast_pair_rows if recipe.kind == "contrast-pairs" else _mean_baseline_rows
    prompts, diffs = rows(tokenizer, recipe, words)
    per_word = diffs(last_token_states(extract, prompts, layers, pad_id, chunk))  # [L, words, H]
    out: dict[tuple[int, str], torch.Tensor] = {}
    for li, layer in enumerate(layers):
        for wi, word in enumerate(words):
            v = per_word[li, wi]
            if recipe.normalize:
                v = v / v.norm().clamp(min=1e-12)
            out[(layer, word)] = v.clone()
    return out


def random_vector(like: torch.Tensor, seed: int) -> torch.Tensor:
    """A Gaussian direction with the same norm as `like` (the norm-matched random control)."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(like.shape, generator=gen, dtype=torch.float32)
    return r / r.norm() * like.float().norm()

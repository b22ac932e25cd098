"""`localize` on the command line: bad input is one `error:` line, a non-zero exit, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import invoke

CASES = {
    "unknown model": (["--model", "no-such-model"], "unknown model"),
    "layer out of range": (["--model", "gemma-270m", "--layers", "99"], "out of range"),
    "NaN strength": (["--strengths", "nan"], "finite"),
    "negative strength": (["--strengths", "2,-1"], "non-negative"),
    "bad strengths text": (["--strengths", "two"], "comma-separated numbers"),
    "bad fraction": (["--layer-fractions", "1.5"], "layer fractions"),
    "unknown regions": (["--regions", "thirds"], "regions"),
    "unknown condition": (["--conditions", "scale"], "unknown condition"),
    "zero trials": (["--trials", "0"], "trials"),
    "remote-only preset locally": (["--model", "405b", "--backend", "local"], "remote-only"),
    "unknown vectors": (["--vectors", "pca"], "recipe"),
    "halves trials beyond concepts": (["--regions", "halves", "--trials", "5"], "would repeat identical rows"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_nonzero_nothing_written(case: str, tmp_path: Path) -> None:
    args, expected = CASES[case]
    cache = tmp_path / "cache"
    code, out, err = invoke("localize", *args, "--cache", cache)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err
    assert out == "" and not cache.exists()


def test_malformed_experiment_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.toml"
    for text, expected in (
        ("regions = [", "not valid TOML"),
        ('protocol = "lindsey"\n', "protocol must be"),
        ("unknown_knob = 1\n", "unknown_knob"),
    ):
        bad.write_text(text)
        code, out, err = invoke("localize", bad, "--cache", tmp_path / "c")
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0 and len(lines) == 1 and expected in lines[0], err
        assert not (tmp_path / "c").exists()


def test_answers_that_are_not_one_token_are_one_line(tmp_path: Path) -> None:
    """The `tiny` preset's test tokenizer splits " 2" into two tokens: the argmax would be over
    the wrong tokens, so the run stops with one line before any row is stored."""
    code, out, err = invoke("localize", "--model", "tiny", "--cache", tmp_path / "c")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0 and len(lines) == 1 and "is not one token" in lines[0], err
    assert not (tmp_path / "c" / "results.sqlite").exists()


def test_run_points_a_localization_file_to_localize(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    code, out, err = invoke("run", repo / "experiments" / "localization_405b.toml", "--cache", tmp_path / "c")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "run `localize" in lines[0], err
    assert not (tmp_path / "c").exists()

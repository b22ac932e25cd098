"""Bad input: one clear line on stderr, a non-zero exit, and nothing written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import run_cli, run_cli_forked

CASES = {
    "unknown model": (["--model", "no-such-model"], "unknown model"),
    "layer out of range": (["--model", "tiny", "--layers", "99"], "out of range"),
    "negative layer": (["--model", "tiny", "--layers", "-1"], "out of range"),
    "NaN strength": (["--model", "tiny", "--strengths", "nan"], "finite"),
    "negative strength": (["--model", "tiny", "--strengths", "2,-1"], "non-negative"),
    "empty concepts": (["--model", "tiny", "--concepts", " , "], "concept list is empty"),
    "zero concepts": (["--model", "tiny", "--concepts", "0"], "--concepts N"),
    "bad strengths text": (["--model", "tiny", "--strengths", "two"], "comma-separated numbers"),
    "bad fraction": (["--model", "tiny", "--layer-fractions", "1.5"], "layer fractions"),
    "bad span": (["--model", "tiny", "--span", "everywhere"], "unknown span"),
    "remote-only preset locally": (["--model", "405b", "--backend", "local"], "405b"),
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["replicate-lindsey", *args], cwd)


# The first case runs in a cold interpreter (`python -m`, as a user starts it: import-time output
# counts), the others in processes forked from one that has imported the package (same process
# behaviour, a fraction of the start-up).
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_nonzero_nothing_written(case: str, tmp_path: Path, fresh_forks) -> None:
    args, expected = CASES[case]
    cache = tmp_path / "cache"
    argv = ["replicate-lindsey", *args, "--cache", str(cache)]
    res = run_cli(argv, tmp_path) if case == next(iter(CASES)) else run_cli_forked(fresh_forks, argv, tmp_path)
    assert res.returncode != 0, res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:") and expected in lines[0], lines[0]
    assert "Traceback" not in res.stderr
    assert not cache.exists(), "bad input must not create the cache"
    assert res.stdout == ""


def test_unwritable_cache_dir(tmp_path: Path, fresh_forks) -> None:
    if os.geteuid() == 0:
        # root ignores permission bits; a path under a regular file can never be created.
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "cache"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "cache"
    res = run_cli_forked(fresh_forks, ["replicate-lindsey", "--model", "tiny", "--cache", str(target)], tmp_path)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cache" in lines[0], res.stderr
    assert not target.exists()


def test_verbose_flag_is_refused(tmp_path: Path) -> None:
    """nnsight turns on debug mode for -v/--verbose in argv; we refuse it with a clear line."""
    res = _run(["--model", "tiny", "-v"], tmp_path)
    assert res.returncode == 2 and "verbose" in res.stderr


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_localization import build_model_dir  # a tokenizer whose answers are one token each

    return build_model_dir(tmp_path_factory.mktemp("models"), num_layers=2)[0]


@pytest.mark.parametrize(
    "command",
    [
        ["replicate-lindsey", "--model", "{model}", "--layers", "1", "--samples", "1", "--controls", "1"],
        ["localize", "--model", "{model}", "--layers", "1", "--trials", "1"],
        ["probe-report", "--model", "{model}", "--layers", "1"],
        ["self-predict", "--models", "{model}", "--n", "2"],
    ],
    ids=["run", "localize", "probe-report", "self-predict"],
)
def test_missing_ndif_key_one_line_and_no_cache_written(command, tmp_path, monkeypatch, tiny_model_dir) -> None:
    """A remote run without NDIF_API_KEY stops at the preflight, before the cache database exists:
    nothing is written, not even an empty results.sqlite."""
    from helpers import invoke

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    cache = tmp_path / "cache"
    args = [a.replace("{model}", str(tiny_model_dir)) for a in command]
    code, out, err = invoke(*args, "--backend", "ndif", "--ndif-host", "http://127.0.0.1:9", "--cache", cache)
    assert code != 0
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # (the rest: progress)
    assert len(errors) == 1 and errors[0].startswith("error: NDIF_API_KEY is not set"), err
    assert not (cache / "results.sqlite").exists(), sorted(p.name for p in cache.rglob("*"))

"""Bad input: one clear line on stderr, a non-zero exit, and nothing written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import run_cli

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


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_nonzero_nothing_written(case: str, tmp_path: Path) -> None:
    args, expected = CASES[case]
    cache = tmp_path / "cache"
    res = _run([*args, "--cache", str(cache)], tmp_path)
    assert res.returncode != 0, res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:") and expected in lines[0], lines[0]
    assert "Traceback" not in res.stderr
    assert not cache.exists(), "bad input must not create the cache"
    assert res.stdout == ""


def test_unwritable_cache_dir(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores permission bits; a path under a regular file can never be created.
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "cache"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "cache"
    res = _run(["--model", "tiny", "--cache", str(target)], tmp_path)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cache" in lines[0], res.stderr
    assert not target.exists()


def test_verbose_flag_is_refused(tmp_path: Path) -> None:
    """nnsight turns on debug mode for -v/--verbose in argv; we refuse it with a clear line."""
    res = _run(["--model", "tiny", "-v"], tmp_path)
    assert res.returncode == 2 and "verbose" in res.stderr

"""Helpers the test layers share (imported as `helpers`: tests/ is on sys.path via conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from remote_introspect.cli import app
from remote_introspect.experiment.spec import ExperimentSpec, GenerationParams

# The API key of the loopback LLM-judge server (`judge_server` in conftest.py): tests assert it
# never reaches the cache, stdout or stderr.
JUDGE_KEY = "fake-judge-KEY-do-not-leak-7f3a9c"

# The README's first command on the real Gemma, on a small grid (tests/e2e: run once per session).
GEMMA_FIRST_RUN = ["replicate-lindsey", "--model", "gemma-270m", "--concepts", "Dust,Trumpets", "--strengths", "8",
                   "--samples", "2", "--controls", "2", "--max-new-tokens", "24", "--temperature", "0"]  # fmt: skip


def invoke(*args: object) -> tuple[int, str, str]:
    """The CLI in-process (typer's runner): (exit code, stdout, stderr)."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: `python -m remote_introspect ARGS` in `cwd`, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "remote_introspect", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_spec(**fields: Any) -> ExperimentSpec:
    """The tests' small experiment (the shared `tiny_cache`'s): the tiny model, Dust and Oceans at
    strengths 2 and 8, 2 samples each, 3 controls, up to 4 new tokens. `fields` override any spec
    field; `max_new_tokens` and `temperature` override the generation's."""
    gen = {k: fields.pop(k) for k in ("max_new_tokens", "temperature") if k in fields}
    base: dict[str, Any] = {
        "model": "tiny",
        "concepts": ("Dust", "Oceans"),
        "strengths": (2.0, 8.0),
        "samples": 2,
        "controls": 3,
        "generation": GenerationParams(**{"max_new_tokens": 4, **gen}),
    }
    return ExperimentSpec(**{**base, **fields})


def _cli_child(args: list[str], cwd: str, out: str, err: str, env: dict[str, str] | None = None) -> None:
    """A forked child that is `python -m remote_introspect ARGS`: its own fds 1 and 2, argv, cwd
    and exit status (the package was imported before the fork)."""
    import os

    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(cwd)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    sys.argv = ["remote_introspect", *args]
    from remote_introspect.cli import main

    code = 1
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what the interpreter would print before exiting 1
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def start_cli_forked(ctx: Any, args: list[str], cwd: Path, out_dir: Path, env: dict[str, str] | None = None) -> Any:
    """Start `python -m remote_introspect ARGS` as a process forked from the `fresh_forks` server
    (the package already imported there): its stdout and stderr go to `out_dir`/stdout, /stderr."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = (str(out_dir / "stdout"), str(out_dir / "stderr"))
    proc = ctx.Process(target=_cli_child, args=([str(a) for a in args], str(cwd), *files, env))
    proc.start()
    return proc


def run_cli_forked(
    ctx: Any, args: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`run_cli` in a process forked from the `fresh_forks` server, which has imported the package
    already: the same process-level behaviour (stdout, stderr, exit status, files written) in well
    under a second instead of a cold interpreter's import of torch and transformers. What a cold
    start prints (import-time warnings) is covered by the tests that use `run_cli`."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc = start_cli_forked(ctx, args, cwd, Path(tmp), env)
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            raise subprocess.TimeoutExpired(args, timeout)
        return subprocess.CompletedProcess(
            args, proc.exitcode, (Path(tmp) / "stdout").read_text(), (Path(tmp) / "stderr").read_text()
        )


CHROMIUM = shutil.which("chromium")  # Debian's package; .ci/run installs it with apt


def chromium_flags(profile: Path, budget_ms: int) -> list[str]:
    """Headless Chromium for the report's tests: no sandbox, GPU, network or first-run noise; a
    throwaway profile; `budget_ms` of virtual time for the page's scripts and images to settle."""
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
    ]  # fmt: skip

"""Shared fixtures: offline, tiny random models of three families, a scratch cache."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from remote_introspect.models import tiny as tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return tiny_models.build_tiny_tokenizer()


@pytest.fixture(scope="session", params=list(tiny_models.FAMILIES))
def tiny_family(request):
    """(family, hf_model, tokenizer) for llama, gemma and qwen."""
    model, tok = tiny_models.build_tiny_model(request.param)
    return request.param, model, tok


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of the tiny random model, built once per test session and shared (by path) by
    the results-command tests (audit, report, export, grade); tests copy it before changing it."""
    from helpers import tiny_spec

    from remote_introspect.execution import runner
    from remote_introspect.execution.runner import RunOptions

    root = tmp_path_factory.getbasetemp() / "shared-tiny-cache"
    if not root.exists():
        building = root.with_name(root.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        assert runner.run(tiny_spec(), RunOptions(cache_root=building)).complete
        building.rename(root)  # only a finished cache is ever shared
    return root


@pytest.fixture(scope="session")
def fresh_forks():
    """A multiprocessing context for tests that need real child processes cheaply: children fork
    from a server that has only imported the package (never from this test process, whose
    polars/OpenMP thread pools do not survive a fork), so they start in well under a second."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(
        [
            "torch",
            "polars",
            "safetensors.torch",
            "transformers.models.llama.modeling_llama",
            "nnsight",
            "remote_introspect.execution.runner",
            "remote_introspect.execution.backends.local",
            "remote_introspect.store.results_frame",
            "remote_introspect.grading.heuristic",
            "remote_introspect.cli",
        ]
    )
    return ctx


@pytest.fixture
def count_generate(monkeypatch) -> list[int]:
    """Rows of every local generate call (a spy on LocalExecutor.generate): proves what ran."""
    from remote_introspect.execution.backends.local import LocalExecutor

    calls: list[int] = []
    real = LocalExecutor.generate

    def spy(self, batch, on_submitted):
        calls.append(batch.input_ids.shape[0])
        return real(self, batch, on_submitted)

    monkeypatch.setattr(LocalExecutor, "generate", spy)
    return calls


@pytest.fixture(scope="session")
def _judge_loopback():
    """One loopback LLM-judge server (Anthropic and OpenAI APIs) for the whole session."""
    from helpers import JUDGE_KEY

    from remote_introspect.testing.judge_loopback import JudgeLoopback

    srv = JudgeLoopback(api_key=JUDGE_KEY).start()
    yield srv
    srv.stop()


@pytest.fixture
def judge_server(_judge_loopback, monkeypatch: pytest.MonkeyPatch):
    """The loopback judge, cleared (no requests, no injected faults) for this test, its API key in
    ANTHROPIC_API_KEY and OPENAI_API_KEY."""
    from helpers import JUDGE_KEY

    _judge_loopback.clear()
    monkeypatch.setenv("ANTHROPIC_API_KEY", JUDGE_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", JUDGE_KEY)
    return _judge_loopback


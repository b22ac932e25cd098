"""`scale`: one experiment across models through the CLI (tiny random model, offline), a remote
entry against the loopback NDIF server (real nnsight client, real HTTP), unavailable models as
rows, bad input as one line, and the report's scaling plot."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from helpers import invoke
from PIL import Image

from remote_introspect.models.tiny import materialize_tiny_model
from remote_introspect.testing.ndif_loopback import DEFAULT_API_KEY, LoopbackNDIF

REPO = Path(__file__).resolve().parents[2]
GRID = ["--concepts", "Dust,Oceans", "--strengths", "8", "--samples", "2", "--controls", "3",
        "--max-new-tokens", "4", "--conditions", "control"]  # fmt: skip


def _row(stdout: str, label: str) -> str:
    lines = [ln for ln in stdout.splitlines() if ln.strip().startswith(f"{label} ")]
    assert lines, stdout
    return lines[0]


def _trials(cache: Path) -> int:
    with sqlite3.connect(cache / "results.sqlite") as c:
        return int(c.execute("SELECT COUNT(*) FROM trials").fetchone()[0])


def test_tiny_and_an_unavailable_repo_table_plot_and_reuse(tmp_path: Path, count_generate: list[int]) -> None:
    cache = tmp_path / "cache"
    code, out, err = invoke("scale", "--models", "tiny,nobody/not-cached", "--cache", cache, *GRID)
    assert code == 0, err
    tiny = _row(out, "tiny")
    # n = 2 concepts × 1 strength × 2 samples injected, 3 controls; status done.
    assert " 4/3 " in tiny and "done" in tiny and "214k" in tiny
    assert "unavailable (1)" in _row(out, "nobody/not-cached")
    assert (
        "(1) nobody/not-cached: unavailable: model 'nobody/not-cached' is not in the Hugging Face cache"
        in out
    )
    assert "refusals excluded" in out
    png = cache / "scaling.png"
    assert png.is_file() and "Net detection vs parameters" in Image.open(png).info["Title"]
    assert _trials(cache) == 4 + 3 and sum(count_generate) == 7
    # Re-running does no model work and prints the same table.
    count_generate.clear()
    code2, out2, _ = invoke("scale", "--models", "tiny,nobody/not-cached", "--cache", cache, *GRID)
    assert code2 == 0 and count_generate == [] and out2 == out


def test_rows_match_replicate_lindsey_on_the_same_cache(tmp_path: Path, count_generate: list[int]) -> None:
    """`scale` and `replicate-lindsey` with the same knobs are the same trials: scale reuses them."""
    cache = tmp_path / "cache"
    code, out, err = invoke("replicate-lindsey", "--model", "tiny", "--cache", cache, *GRID)
    assert code == 0, err
    ran = sum(count_generate)
    count_generate.clear()
    code, out, err = invoke("scale", "--models", "tiny", "--cache", cache, *GRID)
    assert code == 0, err
    assert ran == 7 and count_generate == [] and " 4/3 " in _row(out, "tiny")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize_tiny_model(tmp_path_factory.mktemp("models"), "llama", seed=0)


def test_remote_entry_runs_on_the_loopback_server_and_equals_local(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    with LoopbackNDIF({str(model_dir): model_dir}, preload=True) as server:
        code, out, err = invoke(
            "scale", "--models", f"tiny,{model_dir}@ndif", "--cache", tmp_path / "remote",
            "--ndif-host", server.url, *GRID,
        )  # fmt: skip
        assert code == 0, err
        assert server.completed >= 2  # the vector pass and at least one generation batch
    remote_row = _row(out, f"{model_dir}@ndif")
    assert "ndif" in remote_row and "done" in remote_row
    code, local_out, err = invoke(
        "scale", "--models", f"{model_dir}@local", "--cache", tmp_path / "local", *GRID
    )
    assert code == 0, err
    local_row = _row(local_out, f"{model_dir}@local")

    # Same trials (the backend is not in a trial key), same tokens, so the same row.
    def responses(cache: Path) -> dict[str, str]:
        with sqlite3.connect(cache / "results.sqlite") as c:
            q = "SELECT key, response_ids FROM trials WHERE json_extract(trial_json, '$.model.repo_id') = ?"
            return dict(c.execute(q, (str(model_dir.resolve()),)).fetchall())

    remote, local = responses(tmp_path / "remote"), responses(tmp_path / "local")
    assert len(remote) == 7 and remote == local
    strip = lambda row: re.sub(r"\b(local|ndif)\b", "", row).split()[1:]  # noqa: E731
    assert strip(remote_row) == strip(local_row)
    # The report of the two-model cache gains the scaling plot.
    code, rep_out, err = invoke("report", "--cache", tmp_path / "remote", "--out", tmp_path / "report")
    assert code == 0, err
    plots = list((tmp_path / "report").glob("scaling-*.png"))
    assert len(plots) == 1
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "Net detection vs parameters" in md and "| tiny |" in md


def test_missing_api_key_is_a_row_not_an_abort(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    cache = tmp_path / "cache"
    code, out, err = invoke("scale", "--models", f"{model_dir}@ndif,tiny", "--cache", cache, *GRID)
    assert code == 0, err
    assert "NDIF_API_KEY is not set" in out and "done" in _row(out, "tiny")
    # Nothing of the remote model was registered: only tiny's trials are in the cache.
    with sqlite3.connect(cache / "results.sqlite") as c:
        models = {r[0] for r in c.execute("SELECT json_extract(trial_json, '$.model.repo_id') FROM trials")}
    assert models == {"tiny-llama-random"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "tiny,nosuchmodel"], "unknown model 'nosuchmodel'"),
        (["--models", "tiny", "--layers", "10"], "tiny: "),
        (["--models", ","], "--models is empty"),
        (["--models", "tiny", "--model", "tiny"], "scale takes --models"),
        (["--models", "tiny", "--strengths", "nan"], "strengths"),
        (["--models", "tiny", "--plot", "/nonexistent-dir/p.png"], "--plot: directory"),
        (["experiments/scaling_llama.toml", "--models", "tiny", "--protocol", "lindsey"], "not both"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    cache = tmp_path / "cache"
    args = [str(REPO / a) if a.endswith(".toml") else a for a in args]
    code, out, err = invoke("scale", "--cache", cache, *args)
    assert code != 0 and out == ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert not cache.exists()


def test_the_scaling_file_serves_any_depth(tmp_path: Path) -> None:
    """experiments/scaling_llama.toml gives layers as fractions: on the 4-layer tiny model 0.60,
    0.67, 0.75 of depth are layers 2, 3, 3 → 2 layers; its 4 concepts × 1 strength × 1 sample."""
    plot = tmp_path / "my-scaling.png"
    code, out, err = invoke(
        "scale", REPO / "experiments" / "scaling_llama.toml", "--models", "tiny", "--samples", "1",
        "--controls", "2", "--strengths", "8", "--max-new-tokens", "4", "--cache", tmp_path / "c", "--plot", plot,
    )  # fmt: skip
    assert code == 0, err
    assert (
        " 8/2 " in _row(out, "tiny") and out.startswith("scaling-llama, prompt 'lindsey'") and plot.is_file()
    )

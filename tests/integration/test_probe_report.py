"""`probe-report` on tiny random Llamas, offline.

- Planted coupling: the model's digit logits are made a function of the probed direction (the
  LM-head rows of the ten digits point along the fitted probe, steering at the last layer), so the
  self-report is a monotone function of the probe readout: ρ > 0.9. With the coupling removed (the
  digit rows along a direction orthogonal to the probe), ρ's bootstrap CI covers 0.
- A stored trial equals a plain-torch reference (a forward hook on the decoder layer, the report
  computed by hand), so batching, spans, candidates and projections are right.
- Re-running does no model work; `audit` is clean; the loopback NDIF server gives the local numbers
  with one request per batch; bad input is one line and writes nothing.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from helpers import invoke
from safetensors import safe_open

from remote_introspect.execution.probe_report import run_probe_report
from remote_introspect.execution.runner import RunOptions
from remote_introspect.experiment.probe_prompts import Example, render_report
from remote_introspect.experiment.probe_spec import ProbeReportSpec
from remote_introspect.models.tiny import materialize_tiny_model

LAST = 3  # the tiny Llama has 4 decoder layers: steer and read the last, which feeds the LM head


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize_tiny_model(tmp_path_factory.mktemp("models"), "llama", seed=0)


def _spec(model: Path, **kw: object) -> ProbeReportSpec:
    return ProbeReportSpec(model=str(model), concepts=("wellbeing",), layers=(LAST,), bootstrap=500, **kw)  # type: ignore[arg-type]


def _probe(cache: Path, layer: int, concept: str) -> torch.Tensor:
    for f in (cache / "vectors").glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            if "probe-logistic" in fh.metadata()["recipe"] and f"L{layer}/{concept}" in fh.keys():
                return fh.get_tensor(f"L{layer}/{concept}")
    raise AssertionError("probe not stored")


@pytest.fixture(scope="module")
def base_run(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    cache = tmp_path_factory.mktemp("base-cache")
    res = run_probe_report(_spec(base_dir), RunOptions(cache_root=cache))
    assert res.complete and len(res.rows) == 1
    return cache, _probe(cache, LAST, "wellbeing")


def _planted(base_dir: Path, out: Path, direction: torch.Tensor) -> Path:
    """A copy of the tiny model whose ten digit rows of the LM head are 0.25·(d − 4.5)·direction."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    assert not model.config.tie_word_embeddings  # the digits' input embeddings stay as they were
    cands = render_report(tok, Example("wellbeing", "I feel fine.", 1, 0)).candidates
    unit = direction / direction.norm()
    with torch.no_grad():
        model.model.norm.weight.fill_(1.0)
        for d, tid in enumerate(cands):
            model.lm_head.weight[tid] = 0.25 * (d - 4.5) * unit
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _last_states(model_dir: Path) -> torch.Tensor:
    """[8, H]: layer-LAST outputs at the last position of the held-out wellbeing prompts (unsteered)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from remote_introspect.experiment.probe_prompts import split

    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out: list[torch.Tensor] = []
    handle = hf.model.layers[LAST].register_forward_hook(
        lambda _m, _i, o: out.append((o[0] if isinstance(o, tuple) else o)[0, -1])
    )
    try:
        with torch.no_grad():
            for ex in split("wellbeing", 0)[1]:
                hf(input_ids=torch.tensor([render_report(tok, ex).input_ids]))
    finally:
        handle.remove()
    return torch.stack(out)


def test_planted_coupling_is_recovered_and_its_removal_is_not(
    base_dir: Path, base_run: tuple[Path, torch.Tensor], tmp_path: Path
) -> None:
    _, probe = base_run
    w = probe[:-1]
    coupled = _planted(base_dir, tmp_path / "coupled", w)
    res = run_probe_report(_spec(coupled), RunOptions(cache_root=tmp_path / "c1"))
    (row,) = res.rows
    # The probe itself is unchanged (layer-3 activations do not depend on the LM head).
    assert torch.allclose(_probe(tmp_path / "c1", LAST, "wellbeing"), probe, atol=1e-5)
    assert row.rho.value > 0.9 and row.r2.value > 0.8 and row.sign == "valid", row
    # Without coupling: the digit rows along a direction z orthogonal to the probe (steering along
    # the probe leaves z·h unchanged) and to the contexts' mean last-position state (so z·h varies
    # around 0 from context to context). The final RMSNorm still links every steering to every
    # logit through the norm; with z·h of either sign, that link has no consistent direction.
    states = _last_states(base_dir)
    basis = torch.linalg.qr(torch.stack([w, states.mean(0)], dim=1)).Q  # [H, 2] orthonormal
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(w.shape[0], generator=gen)
    z -= basis @ (basis.T @ z)
    removed = _planted(base_dir, tmp_path / "removed", z)
    res0 = run_probe_report(_spec(removed), RunOptions(cache_root=tmp_path / "c0"))
    (row0,) = res0.rows
    assert row0.rho.lo <= 0.0 <= row0.rho.hi, row0
    assert row0.report_range[1] - row0.report_range[0] > 0.2  # the report does vary, by context


def test_stored_trial_equals_a_plain_torch_reference(
    base_dir: Path, base_run: tuple[Path, torch.Tensor]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, probe = base_run
    with sqlite3.connect(cache / "results.sqlite") as c:
        rows = c.execute("SELECT trial_json, readout_json FROM trials WHERE status='done'").fetchall()
    assert len(rows) == 8 * 7  # 8 held-out statements × 7 strengths (0 added)
    trial, readout = next((json.loads(t), json.loads(r)) for t, r in rows if json.loads(t)["strength"] == 0.2)
    tok = AutoTokenizer.from_pretrained(base_dir)
    hf = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    from remote_introspect.experiment.probe_prompts import split

    ex = split("wellbeing", 0)[1][trial["sample"]]
    rep = render_report(tok, ex)
    assert rep.ids_hash == trial["prompt_ids_sha"]
    w, b = probe[:-1], float(probe[-1])
    unit = w / w.norm()
    seen: dict[str, torch.Tensor] = {}

    def hook(_m: object, _i: object, out: object) -> object:
        h = out[0] if isinstance(out, tuple) else out
        span = h[0, rep.span_start :]
        r = span.norm(dim=-1).mean()  # relative strength: the span's mean residual norm
        new = h.clone()
        new[0, rep.span_start :] += 0.2 * r * unit
        seen["h"] = new[0, -1]
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handle = hf.model.layers[LAST].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([rep.input_ids])).logits[0, -1]
    finally:
        handle.remove()
    lp = torch.log_softmax(logits.float(), -1)[list(rep.candidates)]
    p = torch.softmax(lp, -1)
    assert readout["report"] == pytest.approx(float((torch.arange(10) * p).sum()), abs=1e-4)
    assert readout["digit_logprobs"] == pytest.approx(lp.tolist(), abs=1e-4)
    assert readout["probe_readout"] == pytest.approx(float(seen["h"] @ w) + b, abs=1e-3)


def test_cli_rerun_does_no_work_and_audit_is_clean(
    base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from remote_introspect.execution.backends.local import LocalExecutor

    calls: list[int] = []
    real = LocalExecutor.readout

    def spy(self: LocalExecutor, batch: object, cb: object) -> object:
        calls.append(1)
        return real(self, batch, cb)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalExecutor, "readout", spy)
    args = ["probe-report", "--model", base_dir, "--concepts", "wellbeing,focus", "--layers", "2",
            "--strengths", "-0.2,0.2", "--cache", tmp_path / "c"]  # fmt: skip
    code, out, err = invoke(*args)
    assert code == 0, err
    assert calls and "Spearman ρ" in out and "wellbeing" in out and "focus" in out
    assert "mean validated R² 0.12 (Llama-3.2-1B)" in out and "ρ = 0.93, R² = 0.90" in out
    n = len(calls)
    code, out2, _ = invoke(*args)
    assert code == 0 and len(calls) == n and out2 == out
    code, audit_out, err = invoke("audit", "--cache", tmp_path / "c")
    assert code == 0, audit_out + err
    with sqlite3.connect(tmp_path / "c" / "results.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM trials WHERE status='done'").fetchone()[0] == 2 * 8 * 3
    # The same knobs on a second model: `report` works, and draws no scaling plot for readout trials.
    args[2] = "tiny"
    code, _, err = invoke(*args)
    assert code == 0, err
    code, _, err = invoke("report", "--cache", tmp_path / "c", "--out", tmp_path / "report")
    assert code == 0, err
    assert (tmp_path / "report" / "index.html").is_file() and not list((tmp_path / "report").glob("scaling*"))


def test_remote_on_the_loopback_server_equals_local(
    base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from remote_introspect.testing.ndif_loopback import DEFAULT_API_KEY, LoopbackNDIF

    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    spec = _spec(base_dir, strengths=(-0.2, 0.2))
    local = run_probe_report(spec, RunOptions(cache_root=tmp_path / "local"))
    with LoopbackNDIF({str(base_dir): base_dir}, preload=True) as server:
        opts = RunOptions(cache_root=tmp_path / "remote", backend="ndif", ndif_host=server.url, batch_rows=10,
                          poll_initial_s=0.01)  # fmt: skip
        remote = run_probe_report(spec, opts)
        # requests of at most 10 rows: 16 training prompts' activations, then 24 readout rows
        assert server.requests == 2 + 3
    assert remote.complete and local.complete

    def readouts(cache: Path) -> dict[str, dict[str, float]]:
        with sqlite3.connect(cache / "results.sqlite") as c:
            return {k: json.loads(r) for k, r in c.execute("SELECT key, readout_json FROM trials")}

    a, b = readouts(tmp_path / "local"), readouts(tmp_path / "remote")
    assert a.keys() == b.keys() and len(a) == 24
    for k in a:
        assert a[k]["report"] == pytest.approx(b[k]["report"], abs=1e-4)
        assert a[k]["probe_readout"] == pytest.approx(b[k]["probe_readout"], abs=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concepts", "wellbeing,joy"], "no probe prompts for joy"),
        (["--layers", "9"], "out of range"),
        (["--strengths", "nan"], "finite"),
        (["--strengths", "0"], "at least two non-zero strengths"),
        (["--strength-mode", "mlp-norm-matched"], "strength mode"),
        (["--model", "nosuchmodel"], "unknown model"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    cache = tmp_path / "cache"
    full = ["probe-report", *(["--model", "tiny"] if "--model" not in args else []), *args, "--cache", cache]
    code, out, err = invoke(*full)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and out == "" and len(lines) == 1 and message in lines[0], err
    assert not cache.exists()

"""Localization and the position control (issue 15, PROTOCOLS.md §5) through the real harness.

The model is a tiny random Llama whose tokenizer is trained on the localization prompts too (so
every answer is one token). A *planted* model: forward hooks make it sense where its residual
stream carries extra energy after the injected layer and, only when asked WHERE (not when asked
which sentence it prefers), raise the logit of that region's answer token. The harness code —
prompt rendering, token spans, left-padded batches, the steered readout, argmax over the answer
tokens, the store, the summary — runs unchanged; a wrong span, padding offset, candidate order or
scoring would break the 100%.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from remote_introspect.execution import localization as loc
from remote_introspect.execution import runner
from remote_introspect.execution.runner import RunOptions
from remote_introspect.experiment import localization as L
from remote_introspect.experiment.localization import LocalizationSpec
from remote_introspect.experiment.prompts import CONCEPT_WORDS
from remote_introspect.models.loading import resolve_model
from remote_introspect.reporting.audit import run_audit
from remote_introspect.reporting.localization import p_above_chance, summarize
from remote_introspect.retry_policy import RetrySettings
from remote_introspect.store.results_frame import load_frame, open_readonly

REPO = Path(__file__).resolve().parents[2]
FAST_RETRY = RetrySettings(max_attempts=2, initial_wait_s=0.01, max_wait_s=0.02, jitter_s=0.0, long_wait_s=0.02)
STEER = 1  # the steered layer; the planted model reads the next layer's input


def corpus() -> tuple[str, ...]:
    d = L.neutral_text()
    labels = " ".join(f"SENTENCE {k}: x" for k in range(1, 6))
    return (
        L.LOCALIZATION_SETUP, L.POSITION_SETUP, L.WHERE_QUESTION, L.PREFER_QUESTION, L.POSITION_QUESTION,
        L.POSITION_PREFER_QUESTION, *(L.WHERE_PREFILL + x for x in L.DIGITS), *(L.PREFER_PREFILL + x for x in L.DIGITS),
        *(L.POSITION_PREFILL + h for h in L.HALVES), *(L.POSITION_PREFER_PREFILL + h for h in L.HALVES),
        *d["sentences"], d["passage"], *([labels] * 20),
    )  # fmt: skip


def build_model_dir(root: Path, num_layers: int = 4) -> tuple[Path, object]:
    from transformers import AutoModelForCausalLM

    from remote_introspect.models.tiny import build_tiny_tokenizer, tiny_config

    target = root / f"tiny-loc-{num_layers}"
    tok = build_tiny_tokenizer(1024, corpus())
    if not (target / "config.json").exists():
        cfg = tiny_config("llama", len(tok), num_layers)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.save_pretrained(target)
        tok.save_pretrained(target)
    return target, tok


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("models"))[0]


def plant(hf, tok, spec: LocalizationSpec) -> list[int]:
    """Hooks that make `hf` answer WHERE with the region whose tokens carry the most residual
    energy at the steered layer's output. Returns a list that counts planted rows."""
    table = {}
    for sample in range(spec.trials):
        ids = L.sample_sentences(spec.seed, sample) if spec.regions == "sentences" else ()
        for prefer in (False, True):
            r = L.render_trial_prompt(tok, spec.regions, ids, prefer)
            table[r.input_ids] = (r, prefer)
    state: dict[str, torch.Tensor] = {}
    planted: list[int] = []

    def top(_mod, args, kwargs):
        state["ids"], state["mask"] = kwargs["input_ids"], kwargs["attention_mask"]

    def after_steer(_mod, args):
        state["h"] = args[0].detach()

    def final_norm(_mod, _inp, out):
        ids, mask, h = state["ids"], state["mask"], state["h"]
        w = hf.lm_head.weight
        out = out.clone()
        for b in range(ids.shape[0]):
            real = tuple(int(x) for x in ids[b][mask[b].bool()].tolist())
            rendered, prefer = table[real]
            if prefer:
                continue  # the planted model localizes only when asked where
            pad = ids.shape[1] - len(real)
            # Positions carrying the injection: norm-matched steering at strength 4 makes them about
            # 4x the row's median norm. The plant answers only when they are EXACTLY one region's
            # tokens (a span off by one token, or shifted by padding, gets no planted answer).
            norms = h[b, pad:].norm(dim=-1)
            hot = set((norms > 2.5 * norms.median()).nonzero().flatten().tolist())
            match = [k for k, (a, e) in enumerate(rendered.regions) if hot == set(range(a, e))]
            if len(match) != 1:
                continue
            d = w[rendered.candidates[match[0]]]
            out[b, -1] = out[b, -1] + 50.0 * d / d.norm()
            planted.append(1)
        return out

    hf.register_forward_pre_hook(top, with_kwargs=True)
    hf.model.layers[STEER + 1].register_forward_pre_hook(after_steer)
    hf.model.norm.register_forward_hook(final_norm)
    return planted


def _opts(cache: Path, **kw) -> RunOptions:
    return RunOptions(**{"cache_root": cache, "backend": "local", "batch_rows": 7, "retry": FAST_RETRY, **kw})


def _spec(model_dir: Path, **kw) -> LocalizationSpec:
    base = dict(
        model=str(model_dir), concepts=("dust", "oceans"), strengths=(4.0,), layers=(STEER,),
        layer_fractions=None, trials=6, strength_mode="norm-matched",
    )  # fmt: skip
    base.update(kw)
    return LocalizationSpec(**base)


def _results(cache: Path, keys: list[str]):
    conn = open_readonly(cache)
    try:
        return summarize(load_frame(conn, keys=keys).df)
    finally:
        conn.close()


@pytest.mark.parametrize("regions", ["sentences", "halves"])
def test_planted_model_localizes_perfectly_and_prefer_stays_at_chance(model_dir, tmp_path, regions):
    if regions == "sentences":
        spec = _spec(model_dir, regions=regions, trials=6)
    else:  # one passage: a halves trial is one concept (more trials than concepts are refused)
        spec = _spec(model_dir, regions=regions, trials=10, concepts=tuple(w.lower() for w in CONCEPT_WORDS[:10]))
    opts = _opts(tmp_path / "c")
    ref = resolve_model(spec.model)
    ex, ident = runner.make_executor(ref, opts)
    planted = plant(ex.loaded.nn_model._module, ex.tokenizer, spec)
    rep = loc.run_localization(spec, opts, executor_bundle=(ex, ident))
    assert rep.complete
    (res,) = _results(opts.cache_root, rep.keys)
    n_reg = 5 if regions == "sentences" else 2
    assert res.chance == 1 / n_reg and res.usable == res.planned == spec.trials * n_reg * 2
    (cell,) = res.cells
    k, n = cell.counts["injected"]
    assert (k, n) == (spec.trials * n_reg, spec.trials * n_reg)  # 100%
    assert len(planted) == n  # the plant answered exactly the WHERE rows
    assert res.confusion["injected"] == [[spec.trials if i == j else 0 for j in range(n_reg)] for i in range(n_reg)]
    kp, np_ = cell.counts["prefer"]
    assert np_ == n
    # The prefer control on the same steered rows: not above chance (one-sided exact test)...
    assert p_above_chance(kp, np_, res.chance) > 0.05
    # ... and no better than a constant answer, which scores exactly chance with every region steered once per trial.
    assert kp / np_ <= 0.5 if n_reg == 2 else kp / np_ <= 0.4
    assert p_above_chance(k, n, res.chance) < 1e-4
    # Audit counts the rows: done, usable, nothing ungraded, clean.
    audit = run_audit(opts.cache_root)
    assert audit["exit_code"] == 0, audit["integrity"]["problems"]
    assert audit["totals"]["done"] == audit["totals"]["usable"] == res.planned


def test_each_trial_steers_every_region_once_with_one_vector(model_dir, tmp_path):
    """A trial's five rows share prompt, concept, layer and strength; they differ only in the
    steered region, which covers each sentence's tokens exactly once; the sentences' token spans
    hold exactly the sentence text."""
    ref = resolve_model(str(model_dir))
    tok = runner.make_executor(ref, _opts(tmp_path / "c"))[0].tokenizer
    spec = _spec(model_dir, trials=3)
    trials = L.plan_localization(
        spec, _identity(), (STEER,), lambda prefer, ids: L.render_trial_prompt(tok, "sentences", ids, prefer), "fp32"
    )
    assert len(trials) == 3 * 5 * 2 and len({t.key for t in trials}) == len(trials)
    for sample in range(3):
        rows = [t for t in trials if t.sample == sample and t.condition == "injected"]
        assert sorted(t.target for t in rows) == [1, 2, 3, 4, 5]
        assert len({(t.prompt_ids_sha, t.concept, t.layer, t.strength) for t in rows}) == 1
        r = L.render_trial_prompt(tok, "sentences", rows[0].sentence_ids, False)
        for t in rows:
            a, b = t.span
            text = tok.decode(list(r.input_ids[a:b])).strip()
            assert text == L.neutral_text()["sentences"][t.sentence_ids[t.target - 1]]
        assert [tok.decode([c]).strip() for c in rows[0].candidates] == ["1", "2", "3", "4", "5"]


def _identity():
    from remote_introspect.experiment.spec import ModelIdentity

    return ModelIdentity(repo_id="x", weights_id="w", dtype="fp32", tokenizer_sha="t")


def test_rerun_does_no_model_work_and_failed_batches_are_never_wrong_answers(model_dir, tmp_path, monkeypatch):
    from remote_introspect.execution.backends.local import LocalExecutor

    spec = _spec(model_dir, trials=2, strengths=(2.0, 4.0))
    opts = _opts(tmp_path / "c")
    calls: list[int] = []
    fail = [True]
    real = LocalExecutor.readout

    def flaky(self, batch, on_submitted):
        calls.append(batch.input_ids.shape[0])
        if fail[0]:
            fail[0] = False
            raise RuntimeError("boom: the first batch fails")
        return real(self, batch, on_submitted)

    monkeypatch.setattr(LocalExecutor, "readout", flaky)
    rep = loc.run_localization(spec, opts)
    assert not rep.complete
    n_rows = len(rep.keys)
    (res,) = _results(opts.cache_root, rep.keys)
    assert res.failed > 0 and res.usable == n_rows - res.failed  # failed rows are missing, not wrong
    audit = run_audit(opts.cache_root)
    assert audit["exit_code"] == 1 and audit["totals"]["failed"] == res.failed
    assert audit["failures_by_class"]["RuntimeError"]["count"] == res.failed
    # The rerun runs only the failed rows; a third run does no model work at all.
    calls.clear()
    rep2 = loc.run_localization(spec, opts)
    assert rep2.complete and sum(calls) == res.failed
    calls.clear()
    rep3 = loc.run_localization(spec, opts)
    assert rep3.complete and calls == [] and rep3.keys == rep.keys
    assert run_audit(opts.cache_root)["exit_code"] == 0


def test_edited_readout_is_excluded_everywhere(model_dir, tmp_path):
    spec = _spec(model_dir, trials=1)
    opts = _opts(tmp_path / "c")
    rep = loc.run_localization(spec, opts)
    key = rep.keys[0]
    with sqlite3.connect(opts.cache_root / "results.sqlite") as c:
        (text,) = c.execute("SELECT readout_json FROM trials WHERE key=?", (key,)).fetchone()
        r = json.loads(text)
        r["logprobs"] = list(reversed(r["logprobs"]))
        c.execute("UPDATE trials SET readout_json=? WHERE key=?", (json.dumps(r), key))
    c.close()
    audit = run_audit(opts.cache_root)
    assert audit["exit_code"] == 4
    assert [p["kind"] for p in audit["integrity"]["problems"]] == ["result_sha_mismatch"]
    (res,) = _results(opts.cache_root, rep.keys)
    assert res.usable == res.planned - 1 and res.excluded == 1


def test_random_condition_uses_one_norm_matched_vector_per_trial(model_dir, tmp_path):
    spec = _spec(model_dir, trials=2, conditions=("prefer", "random"), strength_mode="absolute")
    opts = _opts(tmp_path / "c", batch_rows=100)
    rep = loc.run_localization(spec, opts)
    assert rep.complete
    conn = open_readonly(opts.cache_root)
    rows = conn.execute("SELECT trial_json, diagnostics_json FROM trials").fetchall()
    conn.close()
    norms: dict[tuple[str, int], set[float]] = {}
    for tj, dj in rows:
        t, d = json.loads(tj), json.loads(dj)
        norms.setdefault((t["condition"], t["sample"]), set()).add(d["vector_norm"])
    for sample in range(2):
        assert len(norms[("random", sample)]) == 1  # one random vector per trial
        assert norms[("random", sample)] == norms[("injected", sample)]  # norm-matched


def test_halves_refuse_more_trials_than_concepts(model_dir):
    """The passage is fixed: halves trials beyond the concepts would be identical rows (the same
    answer twice, counted as two observations by the binomial test), so the spec refuses them."""
    with pytest.raises(ValueError, match="would repeat identical rows"):
        _spec(model_dir, regions="halves", trials=3)  # 2 concepts
    assert _spec(model_dir, regions="halves", trials=2).trials == 2
    assert _spec(model_dir, regions="sentences", trials=3).trials == 3  # sentences are drawn per trial


def test_experiment_files_load_and_flags_override(tmp_path):
    for name in ("localization_gemma270m", "localization_8b", "localization_405b", "position_405b"):
        spec = L.build_localization_spec(REPO / "experiments" / f"{name}.toml", {})
        assert "prefer" in spec.conditions
    spec = L.build_localization_spec(REPO / "experiments" / "position_405b.toml", {"trials": 2, "layers": (5,)})
    assert spec.regions == "halves" and spec.trials == 2 and spec.layers == (5,) and spec.layer_fractions is None
    # The gemma file is the CLI default: the same trials (keys), whatever the experiment name.
    default = L.build_localization_spec(None, {})
    gemma = L.build_localization_spec(REPO / "experiments" / "localization_gemma270m.toml", {})
    assert gemma.model_dump(exclude={"name"}) == default.model_dump(exclude={"name"})
    bad = tmp_path / "bad.toml"
    bad.write_text('protocol = "localization"\nregions = "thirds"\n')
    with pytest.raises(Exception, match="regions"):
        L.build_localization_spec(bad, {})


# --------------------------------------------------------------------------- 405B files on the loopback NDIF


def _rows_by_cell(cache: Path) -> dict[tuple, list[float]]:
    conn = open_readonly(cache)
    try:
        rows = conn.execute("SELECT trial_json, readout_json FROM trials WHERE status='done'").fetchall()
    finally:
        conn.close()
    out = {}
    for tj, rj in rows:
        t = json.loads(tj)
        out[(t["regions"], t["condition"], t["sample"], t["layer"], t["strength"], t["target"])] = json.loads(rj)["logprobs"]
    return out


@pytest.mark.parametrize("name", ["localization_405b", "position_405b"])
def test_405b_files_run_on_the_loopback_ndif_one_request_per_batch(tmp_path, monkeypatch, name):
    """The shipped 405B files, built offline from the preset (126 layers, shipped config) and a
    stand-in tokenizer, run against the loopback NDIF serving a tiny stand-in with the 405B's 126
    layers (hidden size 64) under the 405B repo id: one POST per readout batch, each batch
    submitted once, and a rerun sends nothing."""
    from remote_introspect.execution.backends.ndif import NDIFExecutor
    from remote_introspect.testing.ndif_loopback import (
        DEFAULT_API_KEY,
        LoopbackNDIF,
        model_key_for_dir,
        server_model_for_dir,
    )

    stand_in, tok = build_model_dir(tmp_path / "models", num_layers=126)
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    small = {"trials": 1, "strengths": (4.0,), "concepts": ("dust",)}
    spec = L.build_localization_spec(REPO / "experiments" / f"{name}.toml", small)
    assert spec.model == "405b" and spec.layers == (32, 63)
    calls: dict[str, list[int]] = {"readout": [], "extract": []}
    real_readout, real_extract = NDIFExecutor.readout, NDIFExecutor.extract

    def readout(self, batch, on_submitted):
        calls["readout"].append(batch.input_ids.shape[0])
        return real_readout(self, batch, on_submitted)

    def extract(self, *a):
        calls["extract"].append(1)
        return real_extract(self, *a)

    monkeypatch.setattr(NDIFExecutor, "readout", readout)
    monkeypatch.setattr(NDIFExecutor, "extract", extract)
    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    key = model_key_for_dir("meta-llama/Llama-3.1-405B-Instruct")
    with LoopbackNDIF({key: lambda: server_model_for_dir(stand_in)}) as srv:
        opts = RunOptions(
            cache_root=tmp_path / "remote", backend="ndif", ndif_host=srv.url, tokenizer_dir=tok_dir,
            poll_initial_s=0.01, retry=FAST_RETRY, batch_rows=8,
        )  # fmt: skip
        rep = loc.run_localization(spec, opts)
        requests = srv.counters()["requests"]
        srv.reset_counters()
        again = loc.run_localization(spec, opts)  # cached: no request at all
        assert srv.counters()["requests"] == 0
    assert rep.complete and again.complete
    n_rows = len(rep.keys)
    assert n_rows == 2 * (5 if name == "localization_405b" else 2) * 3  # layers × regions × conditions
    assert len(calls["readout"]) == -(-n_rows // 8)  # ceil(rows / batch size) readout calls ...
    assert requests == len(calls["readout"]) + len(calls["extract"])  # ... each one POST
    conn = open_readonly(opts.cache_root)
    batches = conn.execute("SELECT attempts FROM batches WHERE status='done'").fetchall()
    conn.close()
    assert [a for (a,) in batches] == [1] * len(calls["readout"])  # each submitted once
    (res,) = _results(opts.cache_root, rep.keys)
    assert res.usable == n_rows


def test_report_gains_the_accuracy_vs_strength_plot(model_dir, tmp_path):
    from remote_introspect.reporting.report import build_report

    spec = _spec(model_dir, trials=1, strengths=(1.0, 4.0), regions="halves")
    opts = _opts(tmp_path / "c")
    rep = loc.run_localization(spec, opts)
    assert rep.complete
    res = build_report(opts.cache_root, tmp_path / "report")
    name = f"{rep.experiment_id[:16]}-localization-halves-accuracy.png"
    assert name in res.files
    png = (tmp_path / "report" / name).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "## Localization and position control" in md and "position control (2 halves): chance 50%" in md
    html = (tmp_path / "report" / "index.html").read_text()
    assert name in html


def test_report_keeps_each_experiment_separate(model_dir, tmp_path):
    """Two localization experiments in one cache (here two strength semantics at the same nominal
    strength; equally two models) are two tables, never one pooled table."""
    from remote_introspect.reporting.report import build_report

    opts = _opts(tmp_path / "c")
    reps = [
        loc.run_localization(_spec(model_dir, trials=1, strength_mode=mode, name=f"loc-{mode}"), opts)
        for mode in ("norm-matched", "absolute")
    ]
    assert all(r.complete for r in reps)
    res = build_report(opts.cache_root, tmp_path / "report")
    assert sorted(f for f in res.files if "localization" in f) == sorted(
        f"{r.experiment_id[:16]}-localization-sentences-accuracy.png" for r in reps
    )
    md = (tmp_path / "report" / "summary.md").read_text()
    section = md.split("## Localization and position control")[1]
    assert section.count("10 usable of 10 planned rows") == 2  # 1 trial x 5 sentences x (where, prefer)
    assert "20 usable" not in section and "/10 " not in section  # nothing pooled across the two
    for mode in ("norm-matched", "absolute"):
        assert f"### loc-{mode} [" in section


def test_audit_json_carries_the_localization_counts(model_dir, tmp_path):
    import re

    spec = _spec(model_dir, trials=1, regions="halves")
    opts = _opts(tmp_path / "c")
    assert loc.run_localization(spec, opts).complete
    data = run_audit(opts.cache_root)
    (block,) = data["experiments"][0]["localization"]
    assert block["regions"] == "halves" and block["chance"] == 0.5 and block["usable"] == block["planned"] == 4
    assert {(c["condition"], c["n"]) for c in block["cells"]} == {("injected", 2), ("prefer", 2)}
    json.dumps(data, allow_nan=False)
    docs = (REPO / "docs" / "audit_json.md").read_text()
    documented = {n for span in re.findall(r"`([^`]+)`", docs) for n in re.findall(r"[a-z_0-9]+", span)}
    fields = {k for k in block} | {k for c in block["cells"] for k in c}
    assert fields - documented == set()


def test_interrupted_remote_run_reattaches_its_job_instead_of_resubmitting(model_dir, tmp_path, monkeypatch):
    """A run killed while waiting on a readout job (after the job id was stored) is resumed by the
    same command: the job is collected by id, not submitted again."""
    from remote_introspect.execution.backends.ndif import NDIFExecutor
    from remote_introspect.testing.ndif_loopback import DEFAULT_API_KEY, LoopbackNDIF

    spec = _spec(model_dir, trials=1, regions="halves")  # 4 rows
    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    real_wait = NDIFExecutor._wait
    state = {"kill": True}

    def wait(self, backend):
        result = real_wait(self, backend)  # the job ran; the client dies before storing it
        if state["kill"] and "logp" in result:
            state["kill"] = False
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(NDIFExecutor, "_wait", wait)
    with LoopbackNDIF({str(model_dir): model_dir}, preload=True) as srv:
        opts = RunOptions(
            cache_root=tmp_path / "c", backend="ndif", ndif_host=srv.url, poll_initial_s=0.01,
            retry=FAST_RETRY, batch_rows=4,
        )  # fmt: skip
        with pytest.raises(KeyboardInterrupt):
            loc.run_localization(spec, opts)
        conn = open_readonly(opts.cache_root)
        (status, job), = conn.execute("SELECT status, job_id FROM batches").fetchall()
        conn.close()
        assert status == "submitted" and job
        srv.reset_counters()
        rep = loc.run_localization(spec, opts)
        assert rep.complete
        assert srv.counters()["requests"] == 0  # collected by id, nothing resubmitted
    assert run_audit(opts.cache_root)["exit_code"] == 0


def test_compare_refuses_localization_experiments_with_one_line(model_dir, tmp_path):
    from remote_introspect.errors import UserError
    from remote_introspect.reporting.comparison import compare_cache

    opts = _opts(tmp_path / "c")
    rep = loc.run_localization(_spec(model_dir, trials=1, regions="halves"), opts)
    with pytest.raises(UserError, match="is a localization experiment: compare reads generation experiments"):
        compare_cache(opts.cache_root, rep.experiment_id, rep.experiment_id)

"""The steered-generation trace: free-length responses, per-trial randomness, non-finite values,
device placement, what the request carries, and vectors shipped once.

* Responses end at the first stop id (the model's EOS ids + the chat format's end-of-turn token),
  never forced to --max-new-tokens; stored response_ids stop before it.
* A trial's tokens depend on its key only: the same keys at batch sizes 1, 3 and 7 with different
  companions give identical ids (CPU fp32, sampling on).
* NaN/inf after steering marks the row failed ("non-finite activations/logits"), never done.
* The intervention math runs on activations spread over devices (FakeTensorMode, fake cuda:0/1).
* The request ships functions (no module object), no client source path and no client model
  settings, and deserializes under NDIF's import whitelist.
* Each distinct vector travels once, in the model's dtype, with a per-row index.
"""

from __future__ import annotations

import sqlite3
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers import tiny_spec
from nnsight import TransformersModel

from remote_introspect.execution import runner
from remote_introspect.execution.concept_vectors import left_pad
from remote_introspect.execution.runner import RunOptions
from remote_introspect.execution.traces import extraction, hf_generation, steered_generation
from remote_introspect.execution.traces.generation_batch import GenerationBatch, row_uniforms

PROMPT = "Tell me about Dust and the Oceans. Trial 1: Do you detect an injected thought?"


def _rows(db: Path) -> dict[str, tuple[str, str | None, str | None]]:
    with sqlite3.connect(db / "results.sqlite") as c:
        return {k: (s, r, e) for k, s, r, e in c.execute("SELECT key, status, response_ids, error FROM trials")}


def _tiny_executor(cache: Path, eos_bias: float | None = None):
    """The `tiny` preset loaded in-process, optionally with its lm_head biased toward <|eot_id|>."""
    from remote_introspect.execution.backends.local import LocalExecutor
    from remote_introspect.models.loading import load_local, resolve_model

    loaded = load_local(resolve_model("tiny"), cache)
    if eos_bias is not None:
        hf = loaded.nn_model._module
        eot = loaded.tokenizer.convert_tokens_to_ids("<|eot_id|>")
        bias = torch.zeros(hf.lm_head.out_features)
        bias[eot] = eos_bias
        hf.lm_head.bias = torch.nn.Parameter(bias, requires_grad=False)
    return LocalExecutor(loaded), (loaded.weights_id, loaded.dtype_label)


_spec = partial(tiny_spec, layers=(2,), max_new_tokens=6, temperature=1.0)


# -- 1. the model ends its answer -------------------------------------------------------------------


def test_stop_ids_are_model_eos_plus_end_of_turn() -> None:
    class Tok:
        eos_token_id = 7

        def get_vocab(self):
            return {"<end_of_turn>": 106, "<|eot_id|>": 9, "hello": 3}

    assert hf_generation.stop_token_ids(Tok(), [1, 7]) == (1, 7, 9, 106)
    kwargs = hf_generation.generate_kwargs(
        GenerationBatch(torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2), torch.zeros(1), torch.zeros(1),
                        torch.zeros(1, 4), torch.zeros(1, 4), torch.ones(1), 5, False, 1.0, 1.0,
                        stop_ids=(1, 9), pad_id=0)
    )  # fmt: skip
    assert kwargs["eos_token_id"] == [1, 9] and kwargs["pad_token_id"] == 0
    assert "min_new_tokens" not in kwargs and kwargs["do_sample"] is False and kwargs["top_k"] is None


def test_responses_end_at_end_of_turn_and_are_stored_before_it(tmp_path: Path) -> None:
    """Done-when of issue 11 item 1, through the runner: with <|eot_id|> made likely, some
    responses end before --max-new-tokens, none is padded to full length, and no stored
    response_ids contain a stop id."""
    n = 8
    bundle = _tiny_executor(tmp_path / "cache", eos_bias=5.0)
    rep = runner.run(_spec(max_new_tokens=n), RunOptions(cache_root=tmp_path / "cache"), executor_bundle=bundle)
    assert rep.complete
    stops = set(rep.trials[0].generation.stop_ids)
    assert 1 in stops  # <|eot_id|>
    import json

    lengths = []
    for _key, (status, ids, _err) in _rows(tmp_path / "cache").items():
        assert status == "done"
        got = json.loads(ids)
        assert not stops & set(got)
        lengths.append(len(got))
    assert min(lengths) < n and sum(x < n for x in lengths) >= len(lengths) // 2, lengths


def test_generation_stops_when_every_row_has_finished(tiny_tokenizer) -> None:
    from remote_introspect.models.tiny import build_tiny_model

    hf, tok = build_tiny_model("llama")
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    bias = torch.zeros(hf.lm_head.out_features)
    bias[eot] = 50.0  # every row's first token is the end of its turn
    hf.lm_head.bias = torch.nn.Parameter(bias, requires_grad=False)
    model = TransformersModel(hf, tokenizer=tok)
    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    ids, mask = left_pad([prompt] * 3, tok.pad_token_id)
    B, T = ids.shape
    b = GenerationBatch(ids, mask, torch.full((B,), T - 4), torch.tensor([2, 2, -1]), torch.randn(3, 64),
                        torch.tensor([[4.0, 0, 0, 0]] * 2 + [[0.0] * 4]), torch.ones(B), 20, True, 1.0, 1.0,
                        uniforms=torch.stack([row_uniforms(str(i), 20) for i in range(B)]),
                        stop_ids=(eot,), pad_id=tok.pad_token_id)  # fmt: skip
    for remote in (False, "local"):
        out, _, bad, _ = steered_generation.generate_steered(model, b, remote=remote)
        assert out.shape == (B, T + 1) and (out[:, T] == eot).all() and not bad.any()


# -- 2. per-trial randomness ----------------------------------------------------------------------


def test_trial_tokens_do_not_depend_on_batch_size_or_companions(tmp_path: Path) -> None:
    got: list[dict[str, str | None]] = []
    for rows, spec in ((1, _spec()), (3, _spec()), (7, _spec(concepts=("Dust", "Snow", "Oceans")))):
        cache = tmp_path / f"bs{rows}"
        rep = runner.run(spec, RunOptions(cache_root=cache, batch_rows=rows))
        assert rep.complete
        got.append({k: r for k, (_s, r, _e) in _rows(cache).items()})
    common = set(got[0]) & set(got[1]) & set(got[2])
    assert len(common) == len(got[0]) == 2 * 2 * 2 + 3
    for key in common:
        assert got[0][key] == got[1][key] == got[2][key], key
    assert len({got[0][k] for k in common}) > 3  # sampled, not a constant


def test_row_uniforms_come_from_the_key_only() -> None:
    a = row_uniforms("a" * 64, 10)
    assert a.dtype == torch.float64 and a.shape == (10,) and torch.equal(a, row_uniforms("a" * 64, 10))
    assert torch.equal(row_uniforms("a" * 64, 4), a[:4]) and not torch.equal(a, row_uniforms("b" * 64, 10))


# -- 3. non-finite values ------------------------------------------------------------------------


def test_nonfinite_steering_is_flagged_per_row(tiny_tokenizer) -> None:
    from remote_introspect.models.tiny import build_tiny_model

    hf, tok = build_tiny_model("llama")
    model = TransformersModel(hf, tokenizer=tok)
    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    ids, mask = left_pad([prompt] * 3, tok.pad_token_id)
    B, T = ids.shape
    vectors = torch.randn(2, 64)
    vectors[1, 5] = float("inf")
    b = GenerationBatch(ids, mask, torch.full((B,), T - 4), torch.tensor([2, 2, -1]), vectors,
                        torch.tensor([[2.0, 0, 0, 0]] * 2 + [[0.0] * 4]), torch.ones(B), 4, True, 1.0, 1.0,
                        vector_index=torch.tensor([0, 1, 0]),
                        uniforms=torch.stack([row_uniforms(str(i), 4) for i in range(B)]))  # fmt: skip
    _, _, bad, _ = steered_generation.generate_steered(model, b)
    assert bad.tolist() == [False, True, False]


def _poison(monkeypatch, concept_rows: str) -> None:
    """Make every row injecting `concept_rows`'s vector non-finite (inf in one coordinate)."""
    real = runner.build_generation_batch

    def poisoned(batch, rendered, vectors, hidden, pad_id):
        gb, raw = real(batch, rendered, vectors, hidden, pad_id)
        for i, t in enumerate(batch.trials):
            if t.concept == concept_rows and t.condition == "concept":
                gb.vectors[int(gb.vector_index[i]), 0] = float("inf")
        return gb, raw

    monkeypatch.setattr(runner, "build_generation_batch", poisoned)


def test_nonfinite_trials_fail_with_a_reason_and_are_never_graded(tmp_path: Path, monkeypatch) -> None:
    _poison(monkeypatch, "oceans")
    cache = tmp_path / "cache"
    rep = runner.run(_spec(max_new_tokens=3), RunOptions(cache_root=cache))
    assert not rep.complete and rep.nonfinite_trials == 4
    rows = _rows(cache)
    by_key = {t.key: t for t in rep.trials}
    for key, (status, _ids, err) in rows.items():
        if by_key[key].concept == "oceans":
            assert status == "failed" and "non-finite activations/logits" in err
            assert key not in rep.grades
        else:
            assert status == "done" and key in rep.grades


def test_cli_ends_with_one_error_line_for_nonfinite_trials(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from remote_introspect.cli import app

    _poison(monkeypatch, "dust")
    args = ["replicate-lindsey", "--model", "tiny", "--concepts", "Dust,Oceans", "--strengths", "2",
            "--samples", "1", "--controls", "1", "--max-new-tokens", "3", "--cache", str(tmp_path / "c")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    text = result.stderr if hasattr(result, "stderr") else result.output
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "1 trial(s)" in lines[0] and "non-finite" in lines[0], text


# -- 4. device placement --------------------------------------------------------------------------


def test_intervention_math_meets_activations_on_other_devices() -> None:
    """NDIF runs big models with device_map="auto": shipped tensors arrive on the CPU, activations
    live on GPUs, and two layers may sit on different GPUs. Checked on fake CUDA tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from remote_introspect.execution.traces.portable import PORTABLE

    B, T, H, V = 3, 7, 16, 50
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        h = mode.from_tensor(torch.randn(B, T, H), static_shapes=True).to("cuda:1")
        mlp = mode.from_tensor(torch.randn(B, T, H), static_shapes=True).to("cuda:1")
        starts, row_layers = torch.tensor([2, 3, 7]), torch.tensor([4, 4, -1])
        vectors, index = torch.randn(2, H, dtype=torch.bfloat16), torch.tensor([0, 1, 1])
        coefs, scale, rel = torch.tensor([[2.0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]), torch.ones(B), torch.zeros(B)
        for fn in (PORTABLE["steer_layer"],):
            new, rel2, diag, bad = fn(h, mlp, True, 4, starts, row_layers, index, vectors, coefs, scale, rel)
            assert new.device == h.device and diag.device == h.device and bad.device == h.device
            fn(h, None, False, 4, starts, row_layers, index, vectors, coefs, scale, rel2)
        logits = mode.from_tensor(torch.randn(B, 1, V), static_shapes=True).to("cuda:1")
        u = torch.rand(B, 5, dtype=torch.float64)
        forced, bad = PORTABLE["sample_step"](logits, u, 2, True, 0.7, 0.9)
        assert forced.device == logits.device
        a = mode.from_tensor(torch.randn(B, H), static_shapes=True).to("cuda:0")
        b = mode.from_tensor(torch.randn(B, H), static_shapes=True).to("cuda:1")
        stacked = PORTABLE["gather_rows"]([a, b])
        assert stacked.shape == (2, B, H) and stacked.device == a.device


# -- 5/6. what the request carries -----------------------------------------------------------------


class _Sent(Exception):
    pass


def _capture(monkeypatch, stop: bool = False) -> list[bytes]:
    """Record every request payload nnsight serializes (and, with `stop`, send none)."""
    from nnsight.schema.request import RequestModel

    captured: list[bytes] = []
    real = RequestModel.serialize.__func__

    def spy(cls, tracer, compress=False):
        blob = real(cls, tracer, compress)
        captured.append(blob)
        if stop:
            raise _Sent
        return blob

    monkeypatch.setattr(RequestModel, "serialize", classmethod(spy))
    return captured


def _batch_for(tok, H: int, B: int = 4, n: int = 5) -> GenerationBatch:
    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    ids, mask = left_pad([prompt] * B, tok.pad_token_id)
    T = ids.shape[1]
    return GenerationBatch(ids, mask, torch.full((B,), T - 5), torch.tensor([1, 2, -1, 2])[:B], torch.randn(2, H),
                           torch.tensor([[3.0, 0, 0, 0], [0, 0, 0, 2.0], [0.0] * 4, [1.0, 0, 0, 0]])[:B],
                           torch.ones(B), n, True, 1.0, 0.9, vector_index=torch.tensor([0, 1, 0, 1])[:B],
                           uniforms=torch.stack([row_uniforms(str(i), n) for i in range(B)]),
                           stop_ids=(1,), pad_id=tok.pad_token_id)  # fmt: skip


def test_request_runs_under_ndif_whitelist_and_carries_no_client_paths(tmp_path: Path, monkeypatch) -> None:
    """Every request the package sends (generate unshared and shared-prefix, extraction) runs on a
    loopback server that deserializes under NDIF's import whitelist (testing/ndif_protected_env.py,
    transcribed from ndif-team/ndif whitelist.yaml@07fc4d98 and protected_environment.py@119fddbd),
    gives the local result, reads only whitelisted builtins and carries no path of this package."""
    import nnsight

    import remote_introspect
    from remote_introspect.models.tiny import materialize_tiny_model
    from remote_introspect.testing import ndif_protected_env as pe
    from remote_introspect.testing.ndif_loopback import (
        DEFAULT_API_KEY,
        LoopbackNDIF,
        client_model_for_dir,
        server_model_for_dir,
    )

    model_dir = materialize_tiny_model(tmp_path, "llama")
    client, local = client_model_for_dir(model_dir), server_model_for_dir(model_dir)
    b = _batch_for(local.tokenizer, 64)
    package_dir = str(Path(remote_introspect.__file__).resolve().parent)
    captured = _capture(monkeypatch)
    saved = nnsight.CONFIG.API.APIKEY
    nnsight.CONFIG.API.APIKEY = DEFAULT_API_KEY

    def wait(backend):
        deadline = time.monotonic() + 60
        while (result := backend()) is None:
            assert time.monotonic() < deadline, "loopback job did not finish"
            time.sleep(0.01)
        return result

    try:
        with LoopbackNDIF({str(model_dir): model_dir}, preload=True) as server:
            server.protected_env = True
            for share in (False, True):
                want, want_diags, want_bad, _ = steered_generation.generate_steered(local, b, share_prefix=share)
                _, _, _, tracer = steered_generation.generate_steered(
                    client, b, remote=server.url, blocking=False, share_prefix=share
                )
                result = wait(tracer.backend)
                assert torch.equal(torch.as_tensor(result["ids"]), want)
                assert torch.equal(torch.as_tensor(result["bad"]), want_bad)
            ids, mask = b.input_ids, b.attention_mask
            _, tracer = extraction.extract_last_token(client, ids, mask, [1, 3], remote=server.url, blocking=False)
            got = torch.as_tensor(wait(tracer.backend)["stacked"])
            want_x, _ = extraction.extract_last_token(local, ids, mask, [1, 3])
            assert torch.allclose(got, want_x)
    finally:
        nnsight.CONFIG.API.APIKEY = saved
    assert len(captured) == 3
    for blob in captured:
        problems = pe.check_payload(
            blob, local._remoteable_persistent_objects(), compress=True, client_paths=(package_dir,)
        )
        assert problems == [], problems


def test_protected_env_refuses_a_shipped_module_object() -> None:
    """The transcription bites: a module pickled by value (what `nnsight.ndif.register(module)` plus
    a module-object reference produced) drags `__spec__`/`__loader__` and fails to deserialize."""
    import cloudpickle

    from remote_introspect.execution.traces import interventions
    from remote_introspect.testing import ndif_protected_env as pe

    cloudpickle.register_pickle_by_value(interventions)
    try:
        blob = cloudpickle.dumps(interventions)
    finally:
        cloudpickle.unregister_pickle_by_value(interventions)
    with pytest.raises(ImportError, match="not whitelisted"), pe.import_guard():
        pe.protected_unpickler(__import__("pickle").Unpickler)(__import__("io").BytesIO(blob)).load()
    assert pe.module_allowed("torch.nn.functional") and not pe.module_allowed("os")
    assert "open" not in pe.WHITELISTED_BUILTINS and "len" in pe.WHITELISTED_BUILTINS


def test_remote_model_sends_no_client_model_settings(monkeypatch) -> None:
    """The NDIF executor's meta model: no config object (and its client path) in the payload, no
    per-request env (nnsight would send the client's resolved attn_implementation)."""
    import zstandard

    from remote_introspect.execution.backends.ndif import build_remote_model
    from remote_introspect.models.loading import resolve_model
    from remote_introspect.models.tiny import build_tiny_tokenizer

    ref = resolve_model("405b")
    model = build_remote_model(ref, build_tiny_tokenizer())
    assert model._remoteable_get_env() == {} and "config" not in model.kwargs
    captured = _capture(monkeypatch, stop=True)
    b = _batch_for(build_tiny_tokenizer(), ref.hidden_size, B=2, n=3)
    b.row_layers = torch.tensor([84, 84])
    with pytest.raises(_Sent):
        steered_generation.generate_steered(model, b, remote="http://127.0.0.1:9", blocking=False)
    assert len(captured) == 1
    raw = zstandard.ZstdDecompressor().decompress(captured[0])
    assert str(ref.preset.shipped_config_path()).encode() not in raw
    assert b"_name_or_path" not in raw


# -- 7. vectors once -----------------------------------------------------------------------------


def test_each_distinct_vector_ships_once_in_the_model_dtype(tmp_path: Path) -> None:
    from remote_introspect.experiment.planner import make_batch, plan_trials
    from remote_introspect.experiment.prompts import PROMPT_SETS, render_prompt
    from remote_introspect.experiment.spec import ModelIdentity
    from remote_introspect.models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    rendered = {"lindsey": render_prompt(tok, PROMPT_SETS["lindsey"])}
    identity = ModelIdentity(repo_id="m", weights_id="w", dtype="bf16", tokenizer_sha="t")
    spec = _spec(concepts=("Dust", "Oceans"), conditions=("control", "random", "scale"))
    spec = spec.model_copy(update={"generation": spec.generation.model_copy(update={"vector_dtype": "bf16"})})
    trials = plan_trials(spec, identity, {"lindsey": rendered["lindsey"].ids_hash}, (2,))
    vectors = {(2, c): torch.randn(64) for c in ("dust", "oceans")}
    gb, _ = runner.build_generation_batch(make_batch(trials), rendered, vectors, 64, 0)
    concept_rows = [i for i, t in enumerate(trials) if t.condition == "concept"]
    random_rows = [t for t in trials if t.condition == "random"]
    # 2 concept vectors + one per random trial (its own direction) + one zero row for the rest
    assert gb.vectors.shape == (2 + len(random_rows) + 1, 64) and gb.vectors.dtype == torch.bfloat16
    for i in concept_rows:
        assert torch.equal(gb.row_vector(i), vectors[(2, trials[i].concept)].bfloat16())
    for i, t in enumerate(trials):
        if t.condition in ("control", "scale"):
            assert not gb.row_vector(i).any()
    assert gb.uniforms.shape == (len(trials), 6) and gb.uniforms.dtype == torch.float64
    assert torch.equal(gb.uniforms[0], row_uniforms(trials[0].key, 6))


def test_ndif_and_cli_default_to_the_single_trace_path() -> None:
    from remote_introspect.execution.backends.ndif import NDIFSettings

    assert NDIFSettings().share_prefix is False and RunOptions().share_prefix is False


def test_405b_shaped_192_row_request_ships_vectors_once(monkeypatch) -> None:
    """192 rows, hidden 16384, 2 distinct vectors, 200 new tokens: 13.4 MB raw when each row
    carried its own float32 vector; now the two bf16 vectors + per-row uniforms."""
    import zstandard

    from remote_introspect.execution.backends.ndif import build_remote_model
    from remote_introspect.models.loading import resolve_model
    from remote_introspect.models.tiny import build_tiny_tokenizer

    ref = resolve_model("405b")
    model = build_remote_model(ref, build_tiny_tokenizer())
    B, n, T = 192, 200, 172
    ids = torch.randint(3, 100, (B, T), generator=torch.Generator().manual_seed(0))
    b = GenerationBatch(ids, torch.ones_like(ids), torch.full((B,), 150), torch.full((B,), 84),
                        torch.randn(2, ref.hidden_size).bfloat16(), torch.zeros(B, 4), torch.ones(B), n, True,
                        1.0, 1.0, vector_index=torch.arange(B) % 2,
                        uniforms=torch.stack([row_uniforms(str(i), n) for i in range(B)]))  # fmt: skip
    captured = _capture(monkeypatch, stop=True)
    with pytest.raises(_Sent):
        steered_generation.generate_steered(model, b, remote="http://127.0.0.1:9", blocking=False)
    raw = zstandard.ZstdDecompressor().decompress(captured[0])
    assert len(raw) < 1_500_000, len(raw)  # one float32 vector per row alone: 192 × 16384 × 4 = 12.6 MB

"""The CPU/GPU speed-ups of the generate path change no injection.

* Shared-prefix KV cache: the prompt prefix every row shares (and nobody steers) is computed once
  and its cache expanded to all rows; only each row's steered span is prefilled per row. Splitting
  a prefill changes float rounding (~1e-7: GEMMs of different shapes), never the formula or the
  positions, so greedy ids equal the unshared path AND the plain-torch reference, and hidden
  states / diagnostics agree to float tolerance. With sampling, each row's uniforms are its own
  (the prefix pass draws nothing): same uniforms, same ids here.
* In-trace sampling (`interventions.sample_step`) draws from HF's distribution (chi-square against
  softmax, temperature, top-p) with each row's own uniforms.
* Vector extraction stops after the last requested layer and returns the same values.
Each path also runs under nnsight's `remote="local"` simulation and on the loopback NDIF server.
"""

from __future__ import annotations

import time

import pytest
import torch
from nnsight import TransformersModel
from test_injection_reference import MODES, _reference_generate

from remote_introspect.execution.concept_vectors import left_pad
from remote_introspect.execution.traces import extraction, generation_batch, steered_generation
from remote_introspect.execution.traces.generation_batch import (
    GenerationBatch,
    row_uniforms,
    shared_prefix_length,
)

PROMPT = "Tell me about Dust and the Oceans. Trial 1: Do you detect an injected thought?"


def _mlp_attr(family: str) -> str:
    return "post_feedforward_layernorm" if family == "gemma" else "mlp"


def _batch(tok, H: int, mode: str = "absolute", n: int = 6, do_sample: bool = False, seed: int = 0):
    """Five rows of ONE prompt (no padding): two steered at layer 2 from different starts, a
    control, a generated-tokens-only row (start = T) and an activation-scaling row."""
    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    ids, mask = left_pad([prompt] * 5, tok.pad_token_id)
    T = ids.shape[1]
    starts = torch.tensor([T - 6, T - 9, T - 6, T, T - 4])
    row_layers = torch.tensor([2, 2, -1, 2, 2])
    vectors = torch.randn(5, H, generator=torch.Generator().manual_seed(3))
    vectors[2] = 0
    vectors[4] = 0
    if mode != "absolute":
        vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    strength = {"absolute": 4.0, "norm-matched": 2.0, "mlp-norm-matched": 3.0, "relative": 2.0}[mode]
    coefs = torch.zeros(5, 4)
    coefs[[0, 1, 3], MODES[mode]] = torch.tensor([strength, strength / 2, strength])
    scale = torch.tensor([1.0, 1.0, 1.0, 1.0, 3.0])
    uniforms = torch.stack([row_uniforms(f"row{i}-seed{seed}", n) for i in range(5)]) if do_sample else None
    return GenerationBatch(
        ids, mask, starts, row_layers, vectors, coefs, scale, n, do_sample, 1.0, 1.0, uniforms=uniforms
    )


def _assert_diags_close(a, b) -> None:
    assert [layer for layer, _ in a] == [layer for layer, _ in b]
    for (_, x), (_, y) in zip(a, b, strict=True):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-5, equal_nan=True)


# -- which batches share ---------------------------------------------------------------------------


def test_shared_prefix_length_rules(tiny_tokenizer) -> None:
    b = _batch(tiny_tokenizer, 64)
    T = b.input_ids.shape[1]
    assert shared_prefix_length(b) == T - 9  # the earliest start
    b.starts = torch.full((5,), T)  # span "generated": all but the last prompt token
    assert shared_prefix_length(b) == T - 1
    b.starts = torch.tensor([0, T - 9, T - 6, T, T - 4])  # span "all" in one row: nothing to share
    assert shared_prefix_length(b) == 0
    b.starts = torch.full((5,), T - 6)
    b.input_ids = b.input_ids.clone()
    b.input_ids[3, 0] += 1  # rows differ
    assert shared_prefix_length(b) == 0
    short = tiny_tokenizer("Ok.", add_special_tokens=False)["input_ids"]
    long = tiny_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    ids, mask = left_pad([long, short], tiny_tokenizer.pad_token_id)  # padding
    padded = GenerationBatch(ids, mask, torch.tensor([5, 30]), torch.tensor([1, 1]), torch.zeros(2, 64),
                             torch.zeros(2, 4), torch.ones(2), 2, False, 1.0, 1.0)  # fmt: skip
    assert shared_prefix_length(padded) == 0
    one = _batch(tiny_tokenizer, 64)
    one = GenerationBatch(**{**one.__dict__, "input_ids": one.input_ids[:1], "attention_mask":
                             one.attention_mask[:1], "starts": one.starts[:1]})  # fmt: skip
    assert shared_prefix_length(one) == 0  # a single row has nobody to share with


# -- shared prefix: identical ids, close activations -------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
def test_shared_prefix_equals_unshared_and_plain_torch_reference(tiny_family, mode) -> None:
    family, hf, tok = tiny_family
    model = TransformersModel(hf, tokenizer=tok)
    b = _batch(tok, hf.config.hidden_size, mode)
    assert shared_prefix_length(b) > 0
    plain, plain_diags, _, _ = steered_generation.generate_steered(
        model, b, mlp_attr=_mlp_attr(family), share_prefix=False
    )
    shared, shared_diags, _, _ = steered_generation.generate_steered(
        model, b, mlp_attr=_mlp_attr(family), share_prefix=True
    )
    assert torch.equal(shared, plain), f"{family}/{mode}: shared-prefix ids differ from the unshared path"
    _assert_diags_close(shared_diags, plain_diags)

    # The plain-torch reference handles one layer; row 3 (generated-only) and 4 (scale) are at 2 too.
    ref = _reference_generate(
        hf, family, b.input_ids, b.attention_mask, b.starts, 2, b.vectors, b.coefs, b.scale, b.max_new_tokens
    )
    assert torch.equal(shared, ref)
    untouched = hf.generate(
        input_ids=b.input_ids,
        attention_mask=b.attention_mask,
        max_new_tokens=6,
        do_sample=False,
    )
    assert torch.equal(shared[2], untouched[2])  # the control row
    assert not torch.equal(shared[[0, 1, 4]], untouched[[0, 1, 4]])  # the injection really ran


def test_shared_prefix_prefill_hidden_states_match(tiny_family) -> None:
    """The layer after the injected one, on the prefill pass: the shared run's per-row span equals
    the same positions of the unshared run to float tolerance."""
    family, hf, tok = tiny_family
    model = TransformersModel(hf, tokenizer=tok)
    b = _batch(tok, hf.config.hidden_size, "mlp-norm-matched", n=2)
    P = shared_prefix_length(b)
    seen: list[torch.Tensor] = []

    def grab(_m, _i, out):
        seen.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    handle = hf.model.layers[3].register_forward_hook(grab)
    try:
        steered_generation.generate_steered(model, b, mlp_attr=_mlp_attr(family), share_prefix=False)
        full = seen[0]
        seen.clear()
        steered_generation.generate_steered(model, b, mlp_attr=_mlp_attr(family), share_prefix=True)
    finally:
        handle.remove()
    prefix, span = seen[0], seen[1]  # the shared prefix pass (one row), then the per-row span
    assert prefix.shape[:2] == (1, P) and span.shape[:2] == (5, b.input_ids.shape[1] - P)
    assert torch.allclose(span, full[:, P:], atol=1e-5, rtol=1e-5)
    assert torch.allclose(prefix[0], full[0, :P], atol=1e-5, rtol=1e-5)
    assert torch.allclose(prefix.expand(5, -1, -1), full[:, :P], atol=1e-5, rtol=1e-5)


def test_shared_prefix_with_sampling_same_seed_same_ids(tiny_tokenizer) -> None:
    from remote_introspect.models.tiny import build_tiny_model

    hf, tok = build_tiny_model("llama")
    model = TransformersModel(hf, tokenizer=tok)
    b = _batch(tok, hf.config.hidden_size, "relative", n=8, do_sample=True, seed=11)
    a, _, _, _ = steered_generation.generate_steered(model, b, share_prefix=False)
    c, _, _, _ = steered_generation.generate_steered(model, b, share_prefix=True)
    assert torch.equal(a, c)  # the prefix pass draws no random numbers; logits differ by ~1e-7


@pytest.mark.parametrize("mode", ["mlp-norm-matched", "relative"])
def test_shared_prefix_survives_remote_simulation(mode) -> None:
    from remote_introspect.models.tiny import build_tiny_model

    hf, tok = build_tiny_model("gemma")
    model = TransformersModel(hf, tokenizer=tok)
    b = _batch(tok, hf.config.hidden_size, mode, n=4, do_sample=True, seed=5)
    local, local_diags, _, _ = steered_generation.generate_steered(model, b, mlp_attr=_mlp_attr("gemma"))
    sim, sim_diags, _, _ = steered_generation.generate_steered(model, b, mlp_attr=_mlp_attr("gemma"), remote="local")
    assert torch.equal(local, sim)
    for (la, x), (lb, y) in zip(local_diags, sim_diags, strict=True):
        assert la == lb and torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(), y.nan_to_num())


def test_shared_prefix_over_loopback_ndif_is_one_request(tmp_path) -> None:
    """The two traces travel as one `model.session` request and give the local result."""
    import nnsight

    from remote_introspect.models.tiny import materialize_tiny_model
    from remote_introspect.testing.ndif_loopback import (
        DEFAULT_API_KEY,
        LoopbackNDIF,
        client_model_for_dir,
        server_model_for_dir,
    )

    model_dir = materialize_tiny_model(tmp_path, "llama")
    client, local = client_model_for_dir(model_dir), server_model_for_dir(model_dir)
    b = _batch(local.tokenizer, 64, "absolute", n=5, do_sample=True, seed=2)
    want, want_diags, _, _ = steered_generation.generate_steered(local, b, share_prefix=True)
    saved = nnsight.CONFIG.API.APIKEY
    nnsight.CONFIG.API.APIKEY = DEFAULT_API_KEY
    try:
        with LoopbackNDIF({str(model_dir): model_dir}, preload=True) as server:
            _, _, _, tracer = steered_generation.generate_steered(
                client, b, remote=server.url, blocking=False, share_prefix=True
            )
            backend = tracer.backend
            deadline = time.monotonic() + 60
            while (result := backend()) is None:
                assert time.monotonic() < deadline, "loopback job did not finish"
                time.sleep(0.01)
            assert server.requests == 1
    finally:
        nnsight.CONFIG.API.APIKEY = saved
    assert torch.equal(torch.as_tensor(result["ids"]), want)
    _assert_diags_close([(int(la), torch.as_tensor(d)) for la, d in result["diags"]], want_diags)


def test_default_sharing_is_local_only(tiny_tokenizer, monkeypatch) -> None:
    """share_prefix=None shares here and under remote="local"; a real remote keeps one trace."""
    calls: list[bool] = []
    real = generation_batch.shared_prefix_length
    monkeypatch.setattr(generation_batch, "shared_prefix_length", lambda b: calls.append(True) or real(b))

    class Stop(Exception):
        pass

    class Fake:
        _module = torch.nn.Linear(1, 1)  # any module: its forward signature is read, nothing runs

        def generate(self, *a, **k):
            raise Stop

        def session(self, *a, **k):
            raise Stop

    b = _batch(tiny_tokenizer, 64)
    for remote, shares in ((False, True), ("local", True), ("https://ndif.example", False)):
        calls.clear()
        with pytest.raises(Stop):
            steered_generation.generate_steered(Fake(), b, remote=remote)
        assert bool(calls) == shares


# -- in-trace sampling from per-row uniforms -----------------------------------------------------------


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (1.4, 1.0), (1.0, 0.6)])
def test_sample_step_matches_hf_distribution(temperature, top_p) -> None:
    """interventions.sample_step draws from exactly HF's sampling distribution (temperature, then
    top-p, then softmax) and forces the draw as a one-hot score at the last position."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from remote_introspect.execution.traces.interventions import sample_step

    V, draws = 512, 120_000
    logits = torch.randn(V, generator=torch.Generator().manual_seed(0)) * 2.0
    u = torch.rand(draws, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batch = logits.expand(draws, 2, V).clone()  # [B, T=2, V]: only the last position is forced
    out, bad = sample_step(batch, u, 0, True, temperature, top_p)
    assert out.shape == batch.shape and torch.equal(out[:, 0], batch[:, 0]) and not bad.any()
    assert (torch.isinf(out[:, -1]).sum(-1) == V - 1).all()
    tokens = out[:, -1].argmax(-1)
    ref = logits.clone()[None]
    if temperature != 1.0:
        ref = TemperatureLogitsWarper(temperature)(None, ref)
    if top_p < 1.0:
        ref = TopPLogitsWarper(top_p)(None, ref)
    p = torch.softmax(ref, -1)[0].double()  # exactly what HF hands torch.multinomial
    counts = torch.bincount(tokens, minlength=V).double()
    assert counts[p == 0].sum() == 0  # top-p-filtered tokens are never drawn
    expected = p * draws
    keep = expected > 5
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    assert abs(chi2 - dof) / (2 * dof) ** 0.5 < 4.5, (chi2, dof)  # z-score of the chi-square statistic


def test_sample_step_edge_cases() -> None:
    from remote_introspect.execution.traces.interventions import sample_step

    one_hot = torch.full((4, 1, 256), float("-inf"))
    one_hot[:, 0, 200] = 0.0
    u = torch.tensor([[0.0], [0.5], [0.999999], [1.0 - 2**-53]], dtype=torch.float64)
    out, bad = sample_step(one_hot, u, 0, True, 1.0, 1.0)
    assert (out[:, -1].argmax(-1) == 200).all() and not bad.any()
    nan = torch.zeros(2, 1, 16)
    nan[1, 0, 3] = float("nan")
    _, bad = sample_step(nan, torch.full((2, 1), 0.5, dtype=torch.float64), 0, True, 1.0, 1.0)
    assert bad.tolist() == [False, True]
    greedy, bad = sample_step(nan, torch.zeros(2, 0, dtype=torch.float64), 0, False, 1.0, 1.0)
    assert greedy is nan and bad.tolist() == [False, True]  # greedy: logits untouched, still checked


def test_low_temperature_sampling_is_greedy(tiny_tokenizer) -> None:
    """Near-zero temperature puts all mass on the argmax: the sampled path equals greedy decoding,
    steering included (the one-hot-score trick composes with HF's loop and nnsight's steps)."""
    from remote_introspect.models.tiny import build_tiny_model

    hf, tok = build_tiny_model("qwen")
    model = TransformersModel(hf, tokenizer=tok)
    b = _batch(tok, hf.config.hidden_size, "norm-matched", n=6, do_sample=True, seed=4)
    cold = GenerationBatch(**{**b.__dict__, "temperature": 1e-4, "top_p": 0.5})
    greedy = GenerationBatch(**{**b.__dict__, "do_sample": False})
    got, _, _, _ = steered_generation.generate_steered(model, cold)
    want, _, _, _ = steered_generation.generate_steered(model, greedy)
    assert torch.equal(got, want)
    other = GenerationBatch(**{**b.__dict__, "uniforms": torch.rand(5, 6, dtype=torch.float64)})
    a, _, _, _ = steered_generation.generate_steered(model, b)
    c, _, _, _ = steered_generation.generate_steered(model, other)
    assert not torch.equal(a, c)  # the uniforms, and only they, drive the draws
    with pytest.raises(ValueError, match="one uniform per row and step"):
        GenerationBatch(**{**b.__dict__, "uniforms": torch.rand(5, 2, dtype=torch.float64)})


def test_local_executor_records_sampler_and_prefix_cache() -> None:
    from types import SimpleNamespace

    from remote_introspect.execution.backends.local import LocalExecutor

    loaded = SimpleNamespace(nn_model=None, device="cpu", tokenizer=None, ref=SimpleNamespace(mlp_attr="mlp"))
    v = LocalExecutor(loaded).versions()  # type: ignore[arg-type]
    assert v["sampler"] == "per-trial-inverse-cdf" and v["prefix_cache"] == "shared-when-rows-allow"


# -- vector extraction stops early ----------------------------------------------------------------------


@pytest.mark.parametrize("remote", [False, "local"])
def test_extract_stops_early_with_the_same_values(tiny_family, remote) -> None:
    family, hf, tok = tiny_family
    model = TransformersModel(hf, tokenizer=tok)
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in (PROMPT, "Ok.", "Tell me about Snow")]
    ids, mask = left_pad(rows, tok.pad_token_id)
    ran: list[str] = []
    handles = [hf.lm_head.register_forward_hook(lambda *_: ran.append("lm_head"))]
    handles.append(hf.model.layers[3].register_forward_hook(lambda *_: ran.append("layer3")))
    try:
        got, _ = extraction.extract_last_token(model, ids, mask, [0, 2], remote=remote)
    finally:
        for h in handles:
            h.remove()
    assert ran == []  # neither the layers after the last requested one nor the lm_head ran
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hs = hf(input_ids=ids, attention_mask=mask, position_ids=position_ids, output_hidden_states=True)
    assert torch.equal(got[0], hs.hidden_states[1][:, -1].float())
    assert torch.equal(got[1], hs.hidden_states[3][:, -1].float())

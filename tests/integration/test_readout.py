"""The readout primitive (`traces.readout.read_steered`) against a plain-torch reference.

The reference is written independently of `interventions.py`: each prompt is run ALONE (no
padding) through the HF model with a forward hook on the chosen decoder layer that adds the
steering by hand on positions [start, end) only. The nnsight trace runs all prompts in one
left-padded batch of different lengths; its hidden states (every layer), log-probabilities and
projections must equal the reference row by row. A wrong span (one token too many or too few), a
padding leak or a wrong formula changes the hidden states after the injected layer.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from nnsight import TransformersModel

from remote_introspect.execution.concept_vectors import left_pad
from remote_introspect.execution.traces import readout
from remote_introspect.execution.traces.readout import ReadoutBatch

MODES = {"absolute": 0, "norm-matched": 1, "mlp-norm-matched": 2, "relative": 3}
LAYER = 1
TEXTS = [
    "Tell me about Dust and the Oceans",
    "Trial 1: Do you detect an injected thought?",
    "Ok.",
    "Tell me about Snow",
]
SPANS = [(2, 5), (3, 4), (0, 0), (1, 3)]  # unpadded [start, end); row 2 is a control


def _mlp_module(family: str, layer: torch.nn.Module) -> torch.nn.Module:
    return layer.post_feedforward_layernorm if family == "gemma" else layer.mlp


def _reference(hf, family, ids, start, end, vector, coef, scale, probe, probe_layer, candidates):
    """One unpadded prompt: (hidden states of every layer, candidate log-probs, projection)."""
    block = hf.model.layers[LAYER]
    state: dict[str, torch.Tensor] = {}

    def mlp_hook(_mod, _inp, out):
        state["m"] = out

    def layer_hook(_mod, _inp, out):
        h = out[0] if isinstance(out, tuple) else out
        new = h.clone()
        span_norms = [h[0, i].norm() for i in range(start, end)]
        rel = torch.stack(span_norms).mean() if span_norms else h[0, -1].norm()
        for i in range(start, end):
            amount = coef[0] + coef[1] * h[0, i].norm() + coef[2] * state["m"][0, i].norm() + coef[3] * rel
            new[0, i] = scale * h[0, i] + amount * vector
        return (new, *out[1:]) if isinstance(out, tuple) else new

    hooks = [_mlp_module(family, block).register_forward_hook(mlp_hook)]
    if end > start:
        hooks.append(block.register_forward_hook(layer_hook))
    hidden: list[torch.Tensor] = []
    hooks += [
        layer.register_forward_hook(lambda _m, _i, o: hidden.append((o[0] if isinstance(o, tuple) else o)[0]))
        for layer in hf.model.layers
    ]
    try:
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([ids]))
    finally:
        for hk in hooks:
            hk.remove()
    logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)[candidates]
    proj = hidden[probe_layer][-1].float() @ probe.float().t()
    return hidden, logp, proj


def _batch(tok, H: int, mode: str, strength: float):
    gen = torch.Generator().manual_seed(3)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    width = ids.shape[1]
    pad = [width - len(p) for p in prompts]
    starts = torch.tensor([s + o for (s, _), o in zip(SPANS, pad, strict=True)])
    ends = torch.tensor([e + o for (_, e), o in zip(SPANS, pad, strict=True)])
    vectors = torch.randn(2, H, generator=gen)
    if mode != "absolute":
        vectors = vectors / vectors.norm(dim=-1, keepdim=True)
    vector_index = torch.tensor([0, 1, 0, 1])
    coefs = torch.zeros(4, 4)
    coefs[0, MODES[mode]] = strength
    coefs[1, MODES[mode]] = -strength / 2
    coefs[3, MODES[mode]] = strength
    scale = torch.tensor([1.0, 1.0, 1.0, 1.5])
    row_layers = torch.tensor([LAYER, LAYER, -1, LAYER])
    candidates = torch.tensor([[5, 6, 7], [8, 9, 10], [5, 6, 7], [11, 12, 13]])
    probes = torch.randn(3, H, generator=gen)
    probe_layers = torch.tensor([LAYER, 3, 2, LAYER])
    batch = ReadoutBatch(
        ids, mask, starts, ends, row_layers, vectors, coefs, scale, candidates,
        vector_index=vector_index, probes=probes, probe_layers=probe_layers,
    )  # fmt: skip
    return prompts, pad, batch


@pytest.mark.parametrize("mode", list(MODES))
def test_readout_matches_plain_torch_reference_on_a_left_padded_batch(tiny_family, mode):
    family, hf, tok = tiny_family
    H = hf.config.hidden_size
    strength = {"absolute": 6.0, "norm-matched": 2.0, "mlp-norm-matched": 3.0, "relative": 2.0}[mode]
    prompts, pad, batch = _batch(tok, H, mode, strength)
    model = TransformersModel(hf, tokenizer=tok)
    mlp_attr = "post_feedforward_layernorm" if family == "gemma" else "mlp"
    # The trace's own hidden states, captured by hooks on the same modules during read_steered.
    seen: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, o: seen.append(o[0] if isinstance(o, tuple) else o))
        for layer in hf.model.layers
    ]
    try:
        with torch.no_grad():
            logp, proj, bad, _ = readout.read_steered(model, batch, mlp_attr=mlp_attr)
    finally:
        for hk in hooks:
            hk.remove()
    assert not bool(bad.any())
    for b, ids in enumerate(prompts):
        s, e = SPANS[b]
        v = batch.vectors[int(batch.vector_index[b])]
        ref_h, ref_logp, ref_proj = _reference(
            hf, family, ids, s, e, v, batch.coefs[b], float(batch.scale[b]),
            batch.probes, int(batch.probe_layers[b]), batch.candidates[b],
        )  # fmt: skip
        for layer, (got, want) in enumerate(zip(seen, ref_h, strict=True)):
            torch.testing.assert_close(got[b, pad[b] :], want, rtol=1e-4, atol=1e-4, msg=f"{family}/{mode} row {b} layer {layer}")
        torch.testing.assert_close(logp[b], ref_logp, rtol=1e-4, atol=1e-4)
        if int(batch.probe_layers[b]) >= 0:
            torch.testing.assert_close(proj[b], ref_proj, rtol=1e-4, atol=1e-4)


def test_injection_touches_exactly_the_span(tiny_family):
    """The steered layer's output (the next layer's input) differs from an unsteered pass of the
    same batch exactly on [start, end) of each steered row, and nowhere in the control row."""
    family, hf, tok = tiny_family
    _, pad, batch = _batch(tok, hf.config.hidden_size, "absolute", 6.0)
    plain_batch = copy.deepcopy(batch)
    plain_batch.row_layers[:] = -1
    model = TransformersModel(hf, tokenizer=tok)
    nxt: list[torch.Tensor] = []
    hook = hf.model.layers[LAYER + 1].register_forward_pre_hook(lambda _m, a: nxt.append(a[0].clone()))
    try:
        with torch.no_grad():
            readout.read_steered(model, plain_batch)
            readout.read_steered(model, batch)
    finally:
        hook.remove()
    plain, steered = nxt
    changed = (steered - plain).abs().amax(dim=-1) > 0  # [B, T]
    for b, (s, e) in enumerate(SPANS):
        want = torch.zeros(changed.shape[1], dtype=torch.bool)
        want[pad[b] + s : pad[b] + e] = True
        got = changed[b].nonzero().flatten().tolist()
        assert torch.equal(changed[b], want), f"{family} row {b}: steered positions {got}"


def test_unsteered_logprobs_equal_a_plain_forward(tiny_family):
    family, hf, tok = tiny_family
    prompts, pad, batch = _batch(tok, hf.config.hidden_size, "absolute", 0.0)
    batch.row_layers[:] = -1
    model = TransformersModel(hf, tokenizer=tok)
    with torch.no_grad():
        logp, proj, bad, _ = readout.read_steered(model, batch)
        for b, ids in enumerate(prompts):
            ref = torch.log_softmax(hf(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            torch.testing.assert_close(logp[b], ref[batch.candidates[b]], rtol=1e-5, atol=1e-5)


def test_nonfinite_rows_are_flagged_not_returned_as_answers(tiny_family):
    family, hf, tok = tiny_family
    _, _, batch = _batch(tok, hf.config.hidden_size, "absolute", 6.0)
    batch.vectors = batch.vectors.clone()
    batch.vectors[1, 0] = float("nan")  # rows 1 and 3 use vector 1
    model = TransformersModel(hf, tokenizer=tok)
    with torch.no_grad():
        _, _, bad, _ = readout.read_steered(model, batch)
    assert bad.tolist() == [False, True, False, True]


def test_remote_local_equals_local(tiny_family):
    family, hf, tok = tiny_family
    _, _, batch = _batch(tok, hf.config.hidden_size, "norm-matched", 2.0)
    model = TransformersModel(hf, tokenizer=tok)
    mlp_attr = "post_feedforward_layernorm" if family == "gemma" else "mlp"
    with torch.no_grad():
        a = readout.read_steered(model, batch, mlp_attr=mlp_attr)
        b = readout.read_steered(model, batch, mlp_attr=mlp_attr, remote="local")
    for x, y in zip(a[:3], b[:3], strict=True):
        assert torch.equal(torch.as_tensor(x), torch.as_tensor(y))


# --------------------------------------------------------------------------- executors


def _executor_batch(tok, H: int) -> ReadoutBatch:
    _, _, batch = _batch(tok, H, "absolute", 6.0)
    return batch


def test_local_executor_and_loopback_ndif_equal_local(tmp_path, monkeypatch):
    """`Executor.readout` locally, under remote="local" serialisation, and through the NDIF
    executor against the loopback server (real nnsight client, real HTTP): the same floats, one
    request per batch."""
    from remote_introspect.execution import runner
    from remote_introspect.execution.runner import RunOptions
    from remote_introspect.models.loading import resolve_model
    from remote_introspect.models.tiny import materialize_tiny_model
    from remote_introspect.testing.ndif_loopback import DEFAULT_API_KEY, LoopbackNDIF

    model_dir = materialize_tiny_model(tmp_path / "models", "llama", seed=0)
    ref = resolve_model(str(model_dir))
    local, _ = runner.make_executor(ref, RunOptions(cache_root=tmp_path / "c1", backend="local"))
    batch = _executor_batch(local.tokenizer, ref.hidden_size)
    seen: list[str | None] = []
    want = local.readout(batch, seen.append)
    assert seen == [None]
    sim, _ = runner.make_executor(ref, RunOptions(cache_root=tmp_path / "c2", backend="local", remote_simulation=True))
    got_sim = sim.readout(batch, lambda _id: None)
    monkeypatch.setenv("NDIF_API_KEY", DEFAULT_API_KEY)
    from nnsight.schema.request import RequestModel

    import remote_introspect
    from remote_introspect.testing import ndif_protected_env as pe

    captured: list[bytes] = []
    real_serialize = RequestModel.serialize.__func__

    def spy(cls, tracer, compress=False):
        captured.append(real_serialize(cls, tracer, compress))
        return captured[-1]

    monkeypatch.setattr(RequestModel, "serialize", classmethod(spy))
    with LoopbackNDIF({str(model_dir): model_dir}, preload=True) as srv:
        srv.protected_env = True  # deserialized under NDIF's import whitelist, as the real server does
        remote, _ = runner.make_executor(
            ref, RunOptions(cache_root=tmp_path / "c3", backend="ndif", ndif_host=srv.url, poll_initial_s=0.01)
        )
        srv.reset_counters()
        ids: list[str | None] = []
        got = remote.readout(batch, ids.append)
        assert srv.counters()["requests"] == 1
        assert len(ids) == 1 and ids[0]
        again = remote.reattach_readout(ids[0])  # a killed client collects the same job by id
        persistent = srv._model(next(iter(srv._specs)))._remoteable_persistent_objects()
    package_dir = str(Path(remote_introspect.__file__).resolve().parent)
    assert len(captured) == 1
    assert pe.check_payload(captured[0], persistent, compress=True, client_paths=(package_dir,)) == []
    for out in (got_sim, got, again):
        assert out is not None
        assert torch.equal(out.logprobs, want.logprobs)
        assert out.projections is not None and want.projections is not None
        assert torch.equal(out.projections, want.projections)
        assert torch.equal(out.nonfinite, want.nonfinite)

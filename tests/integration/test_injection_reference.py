"""The injection is numerically what the protocols say: nnsight traces vs a plain-torch reference.

The reference is written independently of `interventions.py`: forward hooks on the HF model that
apply each strength mode by hand, on a left-padded batch with a control row. Generation is greedy
so generated ids must match exactly; hidden states are compared on the prefill pass.
"""

from __future__ import annotations

import pytest
import torch
from nnsight import TransformersModel

from remote_introspect.execution.concept_vectors import left_pad
from remote_introspect.execution.traces import steered_generation
from remote_introspect.execution.traces.generation_batch import GenerationBatch

MODES = {"absolute": 0, "norm-matched": 1, "mlp-norm-matched": 2, "relative": 3}


def _mlp_module(family: str, layer: torch.nn.Module) -> torch.nn.Module:
    return layer.post_feedforward_layernorm if family == "gemma" else layer.mlp


def _rows(tok, H: int, gen: torch.Generator):
    """Three prompts of different lengths (so the batch is left-padded), four rows:
    row 0 absolute-ish steered, row 1 another prompt steered, row 2 control, row 3 scaling."""
    texts = [
        "Tell me about Dust and the Oceans",
        "Trial 1: Do you detect an injected thought?",
        "Ok.",
        "Tell me about Snow",
    ]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    width = ids.shape[1]
    raw_starts = [3, 2, 0, 1]
    starts = torch.tensor([s + width - len(p) for s, p in zip(raw_starts, prompts, strict=True)])
    vectors = torch.randn(4, H, generator=gen)
    vectors[2] = 0
    vectors[3] = 0
    return ids, mask, starts, vectors


def _reference_generate(hf, family, ids, mask, starts, layer, vectors, coefs, scale, n):
    """Plain HF generate with forward hooks implementing the formula by hand."""
    state = {"call": 0, "m": None, "rel": None}
    block = hf.model.layers[layer]

    def mlp_hook(_mod, _inp, out):
        state["m"] = out

    def layer_hook(_mod, _inp, out):
        h = out[0] if isinstance(out, tuple) else out
        B, T, _ = h.shape
        prefill = state["call"] == 0
        state["call"] += 1
        if prefill:
            pos = torch.arange(T)
            mask_ = (pos[None, :] >= starts[:, None]).float()[..., None]
            norms = h.norm(dim=-1)
            span = mask_[..., 0]
            state["rel"] = torch.where(
                span.sum(1) > 0, (norms * span).sum(1) / span.sum(1).clamp(min=1), norms[:, -1]
            )
        else:
            mask_ = torch.ones(B, T, 1)
        new = h.clone()
        for b in range(B):
            c = coefs[b]
            for i in range(T):
                if mask_[b, i, 0] == 0:
                    continue
                amount = (
                    c[0] + c[1] * h[b, i].norm() + c[2] * state["m"][b, i].norm() + c[3] * state["rel"][b]
                )
                new[b, i] = scale[b] * h[b, i] + amount * vectors[b]
        return (new, *out[1:]) if isinstance(out, tuple) else new

    hooks = [
        _mlp_module(family, block).register_forward_hook(mlp_hook),
        block.register_forward_hook(layer_hook),
    ]
    try:
        with torch.no_grad():
            out = hf.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False
            )
    finally:
        for hk in hooks:
            hk.remove()
    return out


@pytest.mark.parametrize("mode", list(MODES))
def test_generation_matches_plain_torch_reference(tiny_family, mode):
    family, hf, tok = tiny_family
    H = hf.config.hidden_size
    gen = torch.Generator().manual_seed(1)
    ids, mask, starts, vectors = _rows(tok, H, gen)
    layer = 2
    coefs = torch.zeros(4, 4)
    # Strengths are large enough to change greedy tokens, so a wrong span or formula shows.
    strength = {"absolute": 4.0, "norm-matched": 2.0, "mlp-norm-matched": 3.0, "relative": 2.0}[mode]
    if mode != "absolute":
        vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    coefs[0, MODES[mode]] = strength
    coefs[1, MODES[mode]] = strength / 2
    scale = torch.tensor([1.0, 1.0, 1.0, 3.0])
    row_layers = torch.tensor([layer, layer, -1, layer])
    n = 6
    batch = GenerationBatch(
        ids, mask, starts, row_layers, vectors, coefs, scale, n, False, 1.0, 1.0
    )
    model = TransformersModel(hf, tokenizer=tok)
    mlp_attr = "post_feedforward_layernorm" if family == "gemma" else "mlp"
    got, diags, _, _ = steered_generation.generate_steered(model, batch, mlp_attr=mlp_attr)
    ref = _reference_generate(hf, family, ids, mask, starts, layer, vectors, coefs, scale, n)
    assert torch.equal(got, ref), f"{family}/{mode}: steered ids differ from the reference"

    plain = hf.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False
    )
    # The control row (2) is untouched; the steered rows really changed something.
    assert torch.equal(got[2], plain[2])
    assert not torch.equal(got[[0, 1, 3]], plain[[0, 1, 3]])
    # Diagnostics: residual norm at the start, injected norm, ratio (NaN for the control row).
    ((diag_layer, diag),) = diags
    assert diag_layer == layer
    assert torch.isnan(diag[2]).all()
    if mode == "absolute":
        assert diag[0, 1].item() == pytest.approx(strength * vectors[0].norm().item(), rel=1e-4)
    assert diag[0, 2].item() == pytest.approx(diag[0, 1].item() / diag[0, 0].item(), rel=1e-5)


def test_prefill_hidden_states_match_reference_and_padding(tiny_family):
    """Layer-(L+1) output on the prefill pass equals the reference, and a left-padded row equals
    the same prompt run alone (positions and masks are right under padding)."""
    family, hf, tok = tiny_family
    H = hf.config.hidden_size
    gen = torch.Generator().manual_seed(2)
    ids, mask, starts, vectors = _rows(tok, H, gen)
    layer = 1
    coefs = torch.zeros(4, 4)
    coefs[0, 0] = 3.0
    coefs[1, 0] = 1.5
    model = TransformersModel(hf, tokenizer=tok)
    captured: dict[str, torch.Tensor] = {}
    import nnsight

    from remote_introspect.execution.traces import interventions

    with model.trace({"input_ids": ids, "attention_mask": mask}):
        rows = torch.tensor([True, True, False, False])
        h = model.model.layers[layer].output
        m = interventions.span_mask(h.shape[1], starts, True, h.dtype)
        new = interventions.steer(h, m, vectors, coefs * rows[:, None], torch.ones(4), torch.zeros(4), None)
        model.model.layers[layer].output = new
        nxt = nnsight.save(model.model.layers[layer + 1].output)
    captured["nn"] = nxt

    def hook(_mod, _inp, out):
        h = out[0] if isinstance(out, tuple) else out
        new = h.clone()
        for b in (0, 1):
            new[b, int(starts[b]) :] += coefs[b, 0] * vectors[b]
        return (new, *out[1:]) if isinstance(out, tuple) else new

    seen = {}
    hk = hf.model.layers[layer].register_forward_hook(hook)
    hk2 = hf.model.layers[layer + 1].register_forward_hook(
        lambda _m, _i, o: seen.__setitem__("h", o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        hf(input_ids=ids, attention_mask=mask)
    hk.remove()
    hk2.remove()
    valid = mask.bool()
    assert torch.allclose(captured["nn"][valid], seen["h"][valid], atol=1e-5)

    # Row 2 ("Ok.", heavily left-padded, a control) equals its unpadded run.
    alone_ids = ids[2][mask[2].bool()][None]
    seen2 = {}
    hk = hf.model.layers[layer + 1].register_forward_hook(
        lambda _m, _i, o: seen2.__setitem__("h", o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        hf(input_ids=alone_ids)
    hk.remove()
    assert torch.allclose(captured["nn"][2][mask[2].bool()], seen2["h"][0], atol=1e-5)


@pytest.mark.parametrize("span", ["all", "generated"])
def test_spans_match_plain_torch_reference(tiny_family, span):
    """Span `all` steers every prompt position (padding included is harmless: masked out of
    attention); span `generated` leaves the prefill untouched and steers every generated token."""
    family, hf, tok = tiny_family
    H = hf.config.hidden_size
    gen = torch.Generator().manual_seed(3)
    ids, mask, _starts, vectors = _rows(tok, H, gen)
    width = ids.shape[1]
    pad = (1 - mask).sum(dim=1)
    starts = pad.clone() if span == "all" else torch.full((4,), width)
    layer = 1
    coefs = torch.zeros(4, 4)
    coefs[0, 0], coefs[1, 0] = 4.0, 2.0
    scale = torch.tensor([1.0, 1.0, 1.0, 2.0])
    row_layers = torch.tensor([layer, layer, -1, layer])
    batch = GenerationBatch(
        ids, mask, starts, row_layers, vectors, coefs, scale, 5, False, 1.0, 1.0
    )
    model = TransformersModel(hf, tokenizer=tok)
    mlp_attr = "post_feedforward_layernorm" if family == "gemma" else "mlp"
    got, _, _, _ = steered_generation.generate_steered(model, batch, mlp_attr=mlp_attr)
    ref = _reference_generate(hf, family, ids, mask, starts, layer, vectors, coefs, scale, 5)
    assert torch.equal(got, ref), f"{family}/{span}"
    plain = hf.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False
    )
    if span == "generated":
        # Nothing in the prompt was steered: the first generated token is the unsteered one.
        assert torch.equal(got[:, width], plain[:, width])
    assert not torch.equal(got[[0, 1, 3]], plain[[0, 1, 3]])

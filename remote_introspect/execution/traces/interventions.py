"""Code that runs INSIDE nnsight traces — locally and, unchanged, on the NDIF server.

Rules (DESIGN.md invariant 7): torch only, no I/O, no imports from this package, no module
objects. The trace blocks do not ship this module: `portable.PORTABLE` holds copies of these
functions compiled under a neutral file name, which nnsight serialises by source with only the
globals they read (`torch` and each other). Keep every function here pure and small.

Device rule: NDIF runs large models with `device_map="auto"` over several GPUs. Every tensor a
request ships (starts, vectors, coefficients, uniforms...) arrives on the CPU; each function below
moves what it was given to the device of the activation it meets before using it. (Indexing is
written with select/narrow/gather/unsqueeze rather than `t[...]`, and `~` as logical_not, which keeps the functions
checkable on fake CUDA tensors by a CPU-only torch: tests/integration/test_steered_generation.py.)

One steering formula covers every strength mode and condition, per row b of a batch:

    h'_i = a_b · h_i + (c_abs_b + c_h_b·‖h_i‖ + c_m_b·‖m_i‖ + c_r_b·r_b) · u_b     for i in span_b

with `u_b` the row's vector (raw for `absolute`, unit for the norm-based modes), `a_b` the
activation-scaling factor (1 unless the row is a `scale` condition), `m_i` the layer's MLP output
(Merrill's `mlp-norm-matched`), and `r_b` the row's mean unsteered residual norm over its prompt
span (`relative`). A control row has all coefficients 0 and a = 1, so it passes through unchanged.

Sampling (`sample_step`) draws each row's next token by inverting the CDF of HF's sampling
distribution (temperature, then top-p, exactly as HF's warpers) with that row's own uniform for
the step, shipped with the request: a trial's tokens depend on its key only, never on its batch
companions, the server's RNG or the batch size.
"""

from __future__ import annotations

import torch


def span_mask(seq_len: int, starts: torch.Tensor, prefill: bool, dtype: torch.dtype) -> torch.Tensor:
    """[B, T, 1] mask of injected positions: on the prefill pass the positions at or after each
    row's start (in padded coordinates); on decode passes (one new token per row) every row."""
    if not prefill:
        return torch.ones(starts.shape[0], seq_len, 1, dtype=dtype, device=starts.device)
    pos = torch.arange(seq_len, device=starts.device)
    return (pos.unsqueeze(0) >= starts.unsqueeze(1)).to(dtype).unsqueeze(-1)


def steer(
    h: torch.Tensor,
    mask: torch.Tensor,
    vectors: torch.Tensor,
    coefs: torch.Tensor,
    scale: torch.Tensor,
    rel_norm: torch.Tensor,
    mlp_out: torch.Tensor | None,
) -> torch.Tensor:
    """Apply the steering formula above. coefs is [B, 4]: (abs, ‖h‖, ‖m‖, relative); vectors
    [B, H] (one per row). Every argument is moved to h's device first."""
    dtype, dev = h.dtype, h.device
    mask, vectors, coefs, scale, rel_norm = (
        t.to(dev) for t in (mask, vectors, coefs, scale, rel_norm)
    )
    hf = h.float()
    c = coefs.unsqueeze(1).unsqueeze(1)  # [B, 1, 1, 4]: column k is c.select(-1, k), [B, 1, 1]
    coef = c.select(-1, 0) + c.select(-1, 3) * rel_norm.unsqueeze(1).unsqueeze(1)  # [B, 1, 1]
    coef = coef.expand(-1, h.shape[1], 1)  # [B, T, 1]
    coef = coef + c.select(-1, 1) * hf.norm(dim=-1, keepdim=True)
    if mlp_out is not None:
        coef = coef + c.select(-1, 2) * mlp_out.to(dev).float().norm(dim=-1, keepdim=True)
    steered = scale.unsqueeze(1).unsqueeze(1) * hf + coef * vectors.unsqueeze(1).float()
    out = mask * steered + (1 - mask) * hf
    return out.to(dtype)


def prompt_span_norm(h: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Per row: mean residual norm over the prompt span [start, T) (or the last prompt token
    when the span holds no prompt position), before steering. Used by `relative` strength."""
    T = h.shape[1]
    norms = h.float().norm(dim=-1)  # [B, T]
    mask = span_mask(T, starts.to(h.device), True, norms.dtype).squeeze(-1)
    count = mask.sum(dim=1)
    mean = (norms * mask).sum(dim=1) / count.clamp(min=1)
    return torch.where(count > 0, mean, norms.select(1, T - 1))


def start_diagnostics(
    h_before: torch.Tensor, h_after: torch.Tensor, starts: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """[B, 3]: residual norm at the injection start, injected norm there, and their ratio, for
    `rows` (a boolean [B] selecting the rows steered at this layer); NaN elsewhere."""
    dev = h_before.device
    B, T, H = h_before.shape
    idx = starts.to(dev).clamp(max=T - 1).view(B, 1, 1).expand(B, 1, H)
    before = h_before.gather(1, idx).squeeze(1).float()
    delta = h_after.to(dev).gather(1, idx).squeeze(1).float() - before
    resid = before.norm(dim=-1)
    inj = delta.norm(dim=-1)
    diag = torch.stack([resid, inj, inj / resid.clamp(min=1e-12)], dim=-1)
    nan = torch.full_like(diag, float("nan"))
    return torch.where(rows.to(dev).unsqueeze(1), diag, nan)


def steer_rows(
    h: torch.Tensor,
    mask: torch.Tensor,
    rows: torch.Tensor,
    vector_index: torch.Tensor,
    vectors: torch.Tensor,
    coefs: torch.Tensor,
    scale: torch.Tensor,
    rel: torch.Tensor,
    mlp_out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`steer` on `mask` for the `rows` [B] (bool) that chose this layer; the others pass through
    unchanged. Returns (new h, [B] non-finite flag of the steered span). Every tensor but `vectors`
    is already on h's device."""
    sel_coefs = coefs * rows.unsqueeze(1).to(coefs.dtype)
    sel_scale = torch.where(rows, scale, torch.ones_like(scale))
    row_vectors = vectors.to(h.device).index_select(0, vector_index)
    new = steer(h, mask, row_vectors, sel_coefs, sel_scale, rel, mlp_out)
    in_span = new.float().masked_fill(mask.bool().logical_not(), 0.0)
    return new, rows & torch.isfinite(in_span).flatten(1).all(dim=1).logical_not()


def steer_layer(
    h: torch.Tensor,
    mlp_out: torch.Tensor | None,
    prefill: bool,
    layer: int,
    starts: torch.Tensor,
    row_layers: torch.Tensor,
    vector_index: torch.Tensor,
    vectors: torch.Tensor,
    coefs: torch.Tensor,
    scale: torch.Tensor,
    rel: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One decoder layer's output at one generation step, steered for the rows that chose this
    layer. Returns (new h, updated relative norms, [B, 3] start diagnostics on the prefill pass else None, [B] non-finite flag).

    `vectors` is the batch's table of distinct directions [V, H] (the model's dtype) and
    `vector_index` [B] each row's entry; rows of other layers pass through unchanged. The
    non-finite flag marks rows whose steered span holds NaN/inf."""
    dev = h.device
    starts, row_layers, vector_index, coefs, scale, rel = (
        t.to(dev) for t in (starts, row_layers, vector_index, coefs, scale, rel)
    )
    rows = row_layers == layer
    mask = span_mask(h.shape[1], starts, prefill, h.dtype)
    if prefill:
        rel = torch.where(rows, prompt_span_norm(h, starts), rel)
    new, bad = steer_rows(h, mask, rows, vector_index, vectors, coefs, scale, rel, mlp_out)
    diag = start_diagnostics(h, new, starts, rows) if prefill else None
    return new, rel, diag, bad


def invert_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """[B, 1] index i with cdf[i-1] <= u·total < cdf[i] (float64 running sums of `weights`
    [B, N] >= 0, u [B, 1] in [0, 1)); never an index of zero weight."""
    cdf = weights.double().cumsum(dim=-1)
    total = cdf.select(1, cdf.shape[1] - 1).unsqueeze(1)
    index = torch.searchsorted(cdf, u.double() * total, right=True)
    # u·total can round up to total: take the last entry with positive weight instead.
    return torch.minimum(index, (cdf < total).sum(dim=-1, keepdim=True))


def warp_logits(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """HF's TemperatureLogitsWarper then TopPLogitsWarper (min_tokens_to_keep=1), on float32
    [B, V] scores, as HF's sampling applies them."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        keep_last = torch.arange(scores.shape[-1], device=scores.device) == scores.shape[-1] - 1
        remove = (cumulative <= (1 - top_p)) & keep_last.logical_not()  # HF keeps at least the top token
        remove = remove.scatter(1, sorted_indices, remove)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


def sample_step(
    logits: torch.Tensor,
    uniforms: torch.Tensor,
    step: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The lm_head output of one generation step → (logits to hand HF's greedy decoding, [B]
    non-finite flag).

    Greedy (do_sample False): the logits unchanged (HF takes the argmax). Sampling: the last
    position's logits are warped as HF's sampler would, each row's token is drawn by inverting
    the CDF with `uniforms[b, step]`, and that position is replaced by 0 at the drawn token and
    -inf elsewhere, so HF's argmax picks it (its stopping, EOS and padding stay HF's)."""
    T = logits.shape[1]
    last = logits.select(1, T - 1).float()
    # -inf is a legitimate logit (a banned token); NaN, +inf or no finite entry at all are not.
    bad = (torch.isnan(last) | torch.isposinf(last)).any(dim=-1) | torch.isfinite(last).any(dim=-1).logical_not()
    if not do_sample:
        return logits, bad
    scores = last.masked_fill(bad.unsqueeze(1), 0.0)  # a failed row draws anything
    probs = torch.softmax(warp_logits(scores, temperature, top_p), dim=-1)
    u = uniforms.to(last.device).select(1, step).unsqueeze(1)
    token = invert_cdf(probs, u)
    forced = torch.full_like(last, float("-inf")).scatter(1, token, 0.0)
    return torch.cat([logits.narrow(1, 0, T - 1), forced.unsqueeze(1).to(logits.dtype)], dim=1), bad


def gather_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-layer [B, H] tensors that may live on different devices (a model split over
    GPUs) onto the first one's device."""
    dev = rows[0].device
    return torch.stack([r.to(dev) for r in rows])


# -- one forward pass, read out (no generation): `readout.read_steered` ----------------------------


def range_mask(seq_len: int, starts: torch.Tensor, ends: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T, 1] mask of the positions in [start, end) of each row (padded coordinates)."""
    pos = torch.arange(seq_len, device=starts.device)
    inside = (pos.unsqueeze(0) >= starts.unsqueeze(1)) & (pos.unsqueeze(0) < ends.to(starts.device).unsqueeze(1))
    return inside.to(dtype).unsqueeze(-1)


def range_norm(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row: mean residual norm over the masked span (or the last position when the span is
    empty), before steering. Used by `relative` strength on a bounded span."""
    T = h.shape[1]
    norms = h.float().norm(dim=-1)  # [B, T]
    m = mask.squeeze(-1).to(norms.dtype)
    count = m.sum(dim=1)
    mean = (norms * m).sum(dim=1) / count.clamp(min=1)
    return torch.where(count > 0, mean, norms.select(1, T - 1))


def steer_range(
    h: torch.Tensor,
    mlp_out: torch.Tensor | None,
    layer: int,
    starts: torch.Tensor,
    ends: torch.Tensor,
    row_layers: torch.Tensor,
    vector_index: torch.Tensor,
    vectors: torch.Tensor,
    coefs: torch.Tensor,
    scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder layer's output on a single forward pass, steered (the formula above, `steer`)
    only on positions [start, end) of the rows that chose this layer. Returns (new h, [B]
    non-finite flag of the steered span)."""
    dev = h.device
    starts, ends, row_layers, vector_index, coefs, scale = (
        t.to(dev) for t in (starts, ends, row_layers, vector_index, coefs, scale)
    )
    mask = range_mask(h.shape[1], starts, ends, h.dtype)
    return steer_rows(h, mask, row_layers == layer, vector_index, vectors, coefs, scale, range_norm(h, mask), mlp_out)


def probe_project(
    h: torch.Tensor, layer: int, probe_layers: torch.Tensor, probes: torch.Tensor, acc: torch.Tensor
) -> torch.Tensor:
    """[B, P] projections of the last position's residual onto each probe direction, for the rows
    whose probe layer is `layer`; `acc` (the other rows' values) elsewhere. float32."""
    dev = h.device
    last = h.select(1, h.shape[1] - 1).float()  # [B, H]
    proj = last.matmul(probes.to(dev).float().t())  # [B, P]
    rows = (probe_layers.to(dev) == layer).unsqueeze(1)
    return torch.where(rows, proj, acc.to(dev))


def candidate_logprobs(logits: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Last position's log-softmax over the FULL vocabulary, read at each row's candidate ids
    [B, K]: ([B, K] float32, [B] non-finite flag of that position's logits)."""
    last = logits.select(1, logits.shape[1] - 1).float()  # [B, V]
    bad = (torch.isnan(last) | torch.isposinf(last)).any(dim=-1) | torch.isfinite(last).any(dim=-1).logical_not()
    logp = torch.log_softmax(last, dim=-1)
    return logp.gather(1, candidates.to(last.device)), bad

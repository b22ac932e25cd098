"""Code that runs INSIDE nnsight traces — locally and, unchanged, on the NDIF server.

Rules (DESIGN.md invariant 7): torch only, no I/O, no imports from this package. When the package
is installed in site-packages, nnsight assumes site-packages code exists on the server; the NDIF
executor therefore registers this module with `nnsight.ndif.register` so its source ships with the
request. Keep every function here pure and small.

One steering formula covers every strength mode and condition, per row b of a batch:

    h'_i = a_b · h_i + (c_abs_b + c_h_b·‖h_i‖ + c_m_b·‖m_i‖ + c_r_b·r_b) · u_b     for i in span_b

with `u_b` the row's vector (raw for `absolute`, unit for the norm-based modes), `a_b` the
activation-scaling factor (1 unless the row is a `scale` condition), `m_i` the layer's MLP output
(Merrill's `mlp-norm-matched`), and `r_b` the row's mean unsteered residual norm over its prompt
span (`relative`). A control row has all coefficients 0 and a = 1, so it passes through unchanged.
"""

from __future__ import annotations

import torch


def span_mask(seq_len: int, starts: torch.Tensor, prefill: bool, dtype: torch.dtype) -> torch.Tensor:
    """[B, T, 1] mask of injected positions: on the prefill pass the positions at or after each
    row's start (in padded coordinates); on decode passes (one new token per row) every row."""
    if not prefill:
        return torch.ones(starts.shape[0], seq_len, 1, dtype=dtype, device=starts.device)
    pos = torch.arange(seq_len, device=starts.device)
    return (pos[None, :] >= starts[:, None]).to(dtype)[..., None]


def steer(
    h: torch.Tensor,
    mask: torch.Tensor,
    vectors: torch.Tensor,
    coefs: torch.Tensor,
    scale: torch.Tensor,
    rel_norm: torch.Tensor,
    mlp_out: torch.Tensor | None,
) -> torch.Tensor:
    """Apply the steering formula above. coefs is [B, 4]: (abs, ‖h‖, ‖m‖, relative)."""
    dtype = h.dtype
    hf = h.float()
    coef = coefs[:, 0, None] + coefs[:, 3, None] * rel_norm[:, None]  # [B, 1]
    coef = coef[:, None, :].expand(-1, h.shape[1], 1)  # [B, T, 1]
    coef = coef + coefs[:, 1, None, None] * hf.norm(dim=-1, keepdim=True)
    if mlp_out is not None:
        coef = coef + coefs[:, 2, None, None] * mlp_out.float().norm(dim=-1, keepdim=True)
    steered = scale[:, None, None] * hf + coef * vectors[:, None, :].float()
    out = mask * steered + (1 - mask) * hf
    return out.to(dtype)


def prompt_span_norm(h: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Per row: mean residual norm over the prompt span [start, T) (or the last prompt token
    when the span holds no prompt position), before steering. Used by `relative` strength."""
    T = h.shape[1]
    norms = h.float().norm(dim=-1)  # [B, T]
    mask = span_mask(T, starts, True, norms.dtype)[..., 0]
    count = mask.sum(dim=1)
    mean = (norms * mask).sum(dim=1) / count.clamp(min=1)
    return torch.where(count > 0, mean, norms[:, -1])


def start_diagnostics(
    h_before: torch.Tensor, h_after: torch.Tensor, starts: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """[B, 3]: residual norm at the injection start, injected norm there, and their ratio, for
    `rows` (a boolean [B] selecting the rows steered at this layer); NaN elsewhere."""
    T = h_before.shape[1]
    idx = starts.clamp(max=T - 1)
    ar = torch.arange(h_before.shape[0], device=h_before.device)
    before = h_before[ar, idx].float()
    delta = h_after[ar, idx].float() - before
    resid = before.norm(dim=-1)
    inj = delta.norm(dim=-1)
    diag = torch.stack([resid, inj, inj / resid.clamp(min=1e-12)], dim=-1)
    nan = torch.full_like(diag, float("nan"))
    return torch.where(rows[:, None], diag, nan)

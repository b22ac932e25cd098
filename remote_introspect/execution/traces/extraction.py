"""Vector extraction: decoder-layer outputs at each row's last token, one forward pass."""

from __future__ import annotations

from typing import Any

import torch

from remote_introspect.execution.traces.portable import PORTABLE, ensure_sources, relocate


def extract_last_token(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: list[int],
    *,
    remote: Any = False,
    **backend: Any,
) -> tuple[Any, Any]:
    """Decoder-layer outputs at the last token of each (left-padded) row, for all `layers` in ONE
    forward pass, stopped after the last of them (`layers` ascending). Returns ([L, B, H] stacked
    tensor, tracer). Only these rows come back."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    ensure_sources()
    gather_rows = PORTABLE["gather_rows"]
    stacked = None  # filled by the trace, or (non-blocking remote) returned later as "stacked"
    with model.trace(inputs, remote=remote, **backend) as tracer:
        rows = []
        for layer in layers:
            rows.append(model.model.layers[layer].output[:, -1, :].float())
        # A model split over GPUs (device_map="auto") holds the layers on different devices.
        stacked = gather_rows(rows).save()
        # Nothing past the last requested layer is needed: skip the rest of the stack and the
        # lm_head (vocab × hidden per position: most of the pass on a small, wide-vocab model).
        tracer.stop()
    return stacked, tracer


TRACE_FILE = "<remote_introspect.traces.extraction>"
extract_last_token = relocate(extract_last_token, TRACE_FILE, __file__)

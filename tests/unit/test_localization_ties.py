"""Exact ties in the argmax over the answer tokens (bf16 logits can tie) are counted and said."""

from __future__ import annotations

import json

import polars as pl

from remote_introspect.reporting.localization import format_results, summarize


def _row(key: str, target: int, logprobs: list[float]) -> dict[str, object]:
    trial = {
        "kind": "localization", "regions": "sentences", "condition": "injected", "layer": 3,
        "strength": 4.0, "target": target, "candidates": [10, 11, 12, 13, 14],
    }  # fmt: skip
    return {
        "key": key, "status": "done", "integrity": "ok", "usable": True,
        "trial_json": json.dumps(trial), "readout_json": json.dumps({"logprobs": logprobs}),
    }  # fmt: skip


def test_ties_are_counted_scored_as_the_lowest_answer_and_printed() -> None:
    df = pl.DataFrame(
        [
            _row("a", 3, [-1.0, -2.0, -1.0, -3.0, -4.0]),  # tie between 1 and 3: scored 1 (wrong)
            _row("b", 2, [-5.0, -0.5, -2.0, -3.0, -4.0]),  # clear argmax 2 (right)
            _row("c", 1, [-2.0, -2.0, -2.0, -2.0, -2.0]),  # five-way tie: scored 1 (right)
        ]
    )
    (res,) = summarize(df)
    assert res.ties == 2 and res.usable == 3
    assert res.cells[0].counts["injected"] == (2, 3)
    assert res.confusion["injected"][2][0] == 1  # steered 3, predicted 1
    assert any(line.startswith("ties: 2 of 3 usable rows") for line in format_results(res))
    (clean,) = summarize(df.filter(pl.col("key") == "b"))
    assert clean.ties == 0 and not any(line.startswith("ties:") for line in format_results(clean))

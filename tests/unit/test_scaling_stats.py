"""The scaling row's statistics on a frame with known counts, and parameter counts from configs."""

from __future__ import annotations

import polars as pl
import pytest

from remote_introspect.models.loading import resolve_model
from remote_introspect.models.parameters import count_from_config, parameter_count
from remote_introspect.stats.analysis import net_detection, rate_ci
from remote_introspect.stats.scaling import PUBLISHED, published_ci, scaling_row


def _rows(condition: str, n: int, **true_counts: int) -> list[dict[str, object]]:
    """n rows; the first k of each column named in true_counts are True (columns are disjoint
    blocks in the order given)."""
    rows = []
    start = 0
    blocks = {}
    for col, k in true_counts.items():
        blocks[col] = range(start, start + k)
        start += k
    for i in range(n):
        row: dict[str, object] = {"condition": condition}
        for col in ("lindsey_success", "strict", "affirmative", "identifies", "refusal"):
            row[col] = False
        for col, rng in blocks.items():
            if i in rng:
                for c in col.split("+"):
                    row[c] = True
        rows.append(row)
    return rows


def test_scaling_row_counts_raw_and_refusal_excluded() -> None:
    # 20 injected: 3 Lindsey successes that are also strict and affirmative∧identifies, 2 more
    # Lindsey successes only, 4 refusals. 10 controls: 2 false positives, 5 refusals.
    inj = _rows(
        "concept", 20,
        **{"lindsey_success+strict+affirmative+identifies": 3, "lindsey_success": 2, "refusal": 4},
    )  # fmt: skip
    ctl = _rows("control", 10, **{"affirmative": 2, "refusal": 5})
    other = _rows("positive", 7, **{"lindsey_success": 7})  # other conditions never count
    r = scaling_row(pl.DataFrame(inj + ctl + other))
    assert (r.n_injected, r.n_controls) == (20, 10)
    assert r.lindsey_success == rate_ci(5, 20) and r.strict == rate_ci(3, 20)
    assert r.affirmative_identifies == rate_ci(3, 20) and r.control_fp == rate_ci(2, 10)
    assert r.refusal_injected == rate_ci(4, 20) and r.refusal_controls == rate_ci(5, 10)
    assert r.net == net_detection(5, 20, 2, 10)
    # Refusals leave both denominators: 5/16 vs 2/5.
    assert r.lindsey_success_nr == rate_ci(5, 16) and r.control_fp_nr == rate_ci(2, 5)
    assert r.net_nr == net_detection(5, 16, 2, 5)
    assert r.as_json()["net"]["net"] == pytest.approx(0.25 - 0.2)


def test_scaling_row_without_controls_has_no_net() -> None:
    r = scaling_row(pl.DataFrame(_rows("concept", 4, lindsey_success=1)))
    assert r.net is None and r.net_nr is None and r.control_fp.n == 0


def test_parameter_counts_match_the_published_sizes() -> None:
    expected = {"1b": 1_235_814_400, "3b": 3_212_749_824, "8b": 8_030_261_248, "70b": 70_553_706_496,
                "405b": 405_853_388_800, "gemma-270m": 268_098_176}  # fmt: skip
    for name, n in expected.items():
        ref = resolve_model(name)
        assert parameter_count(ref.repo_id, ref.config) == n, name
    assert count_from_config({"hidden_size": 8}) is None  # incomplete config: unknown, not a guess


def test_published_anchors_as_in_protocols() -> None:
    qwen = {p.label: p.net for p in PUBLISHED if p.family == "Qwen2.5"}
    assert qwen["Qwen2.5-14B"] == 0.411 and qwen["Qwen2.5-32B, refusals excluded"] == 0.200
    llama = next(p for p in PUBLISHED if p.family == "Llama-3.1")
    ci = published_ci(llama)
    assert ci is not None and ci.net == 0.0 and ci.lo < 0 < ci.hi

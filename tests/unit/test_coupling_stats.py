"""Probe fitting and the coupling statistics on data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from remote_introspect.experiment.probe_prompts import CONCEPTS, TRAIN_PAIRS, load_probe_prompts, split
from remote_introspect.stats.coupling import (
    cluster_bootstrap,
    coupling,
    fit_probe,
    isotonic_r2,
    mean_validated_r2,
    report_from_logprobs,
    spearman,
)


def test_probe_recovers_a_planted_direction_and_generalises() -> None:
    rng = np.random.default_rng(0)
    direction = rng.normal(size=32)
    direction /= np.linalg.norm(direction)
    y = np.array([0, 1] * 20)
    x = rng.normal(size=(40, 32)) + np.outer(2 * y - 1, direction) * 3 + 50.0  # offset: bias must absorb it
    probe = fit_probe(x, y)
    cos = probe.weight @ direction / np.linalg.norm(probe.weight)
    assert cos > 0.9 and probe.train_accuracy == 1.0
    x_new = rng.normal(size=(200, 32)) + np.outer(2 * np.array([0, 1] * 100) - 1, direction) * 3 + 50.0
    acc = ((x_new @ probe.weight + probe.bias > 0) == np.array([0, 1] * 100)).mean()
    assert acc > 0.95
    with pytest.raises(ValueError, match="both poles"):
        fit_probe(x, np.ones(40))


def test_report_is_the_probability_weighted_mean_digit() -> None:
    p = np.zeros(10)
    p[[2, 7]] = [0.25, 0.25]  # half the mass elsewhere: renormalised over the digits
    lp = np.log(np.where(p > 0, p, 1e-30))
    report, mass = report_from_logprobs(lp)
    assert report == pytest.approx(4.5) and mass == pytest.approx(0.5)
    with pytest.raises(ValueError):
        report_from_logprobs([0.0] * 9)


def test_isotonic_r2_and_spearman() -> None:
    x = np.arange(20.0)
    assert isotonic_r2(x, x**3) == pytest.approx(1.0) and spearman(x, x**3) == pytest.approx(1.0)
    assert isotonic_r2(x, -x) == pytest.approx(0.0)  # decreasing: the best non-decreasing fit is flat
    assert spearman(x, np.ones(20)) == 0.0
    # ties in x share one fitted value: y differs within a tie, so the fit cannot be perfect
    assert isotonic_r2(np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.0, 1.0, 2.0, 3.0])) == pytest.approx(0.8)


def test_cluster_bootstrap_is_seeded_and_resamples_groups() -> None:
    groups = [0, 0, 1, 1, 2, 2]
    vals = np.array([1.0, 1.0, 5.0, 5.0, 9.0, 9.0])
    a = cluster_bootstrap(lambda i: float(vals[i].mean()), groups, 500, seed=3)
    assert a == cluster_bootstrap(lambda i: float(vals[i].mean()), groups, 500, seed=3)
    assert 1.0 <= a[0] < 5.0 < a[1] <= 9.0


def _trials(coupled: bool, seed: int = 0) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {k: [] for k in ("probe", "report", "strength", "context", "pole", "mass")}
    for c in range(8):
        base = rng.normal()
        noise_report = rng.normal()
        for s in (-0.4, -0.2, 0.0, 0.2, 0.4):
            probe = base + 5 * s
            report = 4.5 + (np.tanh(probe) * 3 if coupled else noise_report) + 0.05 * rng.normal()
            for k, v in zip(out, (probe, report, s, c, int(base > 0), 0.9), strict=True):
                out[k].append(v)
    return out


def test_coupling_on_planted_and_absent_relations() -> None:
    t = _trials(coupled=True)
    r = coupling(
        "wellbeing", 3, t["probe"], t["report"], t["strength"], t["context"], t["pole"], t["mass"], n_boot=500
    )
    assert r.rho.value > 0.9 and r.r2.value > 0.9 and r.sign == "valid" and r.heldout_accuracy == 1.0
    assert r.contexts == 8 and r.n == 40
    t = _trials(coupled=False)
    r0 = coupling(
        "wellbeing", 3, t["probe"], t["report"], t["strength"], t["context"], t["pole"], t["mass"], n_boot=500
    )
    assert r0.rho.lo <= 0.0 <= r0.rho.hi and r0.sign == "unclear"
    assert mean_validated_r2([r, r0]) == pytest.approx(r.r2.value)
    # a report that falls as the steering raises the probe: the paper's invalid sign
    t = _trials(coupled=True)
    flipped = [9.0 - y for y in t["report"]]
    ri = coupling(
        "focus", 3, t["probe"], flipped, t["strength"], t["context"], t["pole"], t["mass"], n_boot=500
    )
    assert ri.sign == "invalid" and mean_validated_r2([ri]) is None


def test_shipped_prompts_and_split() -> None:
    p = load_probe_prompts()
    assert set(p.concepts) == set(CONCEPTS)
    for c in CONCEPTS:
        train, held = split(c, 0)
        assert len(train) == 2 * TRAIN_PAIRS and len(held) == 2 * (12 - TRAIN_PAIRS)
        assert not {e.statement for e in train} & {e.statement for e in held}
        assert {e.pair for e in train}.isdisjoint({e.pair for e in held})
        assert sum(e.pole for e in held) == len(held) // 2
        assert split(c, 0) == split(c, 0) and split(c, 0) != split(c, 1)

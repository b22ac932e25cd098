"""Probe–report coupling (Martorell & Bianchi; PROTOCOLS.md §6): the linear probe, and how well the
model's self-report tracks it. Pure numpy/scipy, no I/O.

- `fit_probe`: L2-regularised logistic regression (high pole = 1) on residual activations, fitted by
  L-BFGS on features scaled by their mean row norm (so one penalty suits every model width);
  deterministic. Its weight vector is the probe direction; its readout is w·h + b.
- `report_from_logprobs`: the self-report on the 0–9 scale = the probability-weighted mean over the
  ten digit tokens (probabilities renormalised over the digits), from one forward pass.
- `coupling`: per concept, Spearman ρ and isotonic R² (report as a non-decreasing function of the
  probe readout) between probe and report, the causal slope (report vs steering strength, OLS),
  each with a percentile bootstrap CI that resamples CONTEXTS (every strength of a resampled
  context comes along: trials of one context are not independent), and the steering-sign verdict:
  `valid` when the slope's CI lies above 0, `invalid` when it lies below 0 (steering toward the
  concept's high pole lowers the report; the paper excludes such concepts), else `unclear`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize, stats

FloatArray = npt.NDArray[np.float64]

# Published anchors (PROTOCOLS.md §6): mean validated isotonic R² per Llama size; 8B wellbeing.
PUBLISHED_MEAN_R2: dict[str, float] = {"Llama-3.2-1B": 0.12, "Llama-3.2-3B": 0.37, "Llama-3.1-8B": 0.61}
PUBLISHED_8B_WELLBEING: dict[str, float] = {"rho": 0.93, "r2": 0.90}


@dataclass(frozen=True)
class Probe:
    weight: FloatArray  # [H] in the activations' own units
    bias: float
    train_accuracy: float


def fit_probe(x: npt.ArrayLike, y: npt.ArrayLike, l2: float = 1.0) -> Probe:
    """Logistic regression of y ∈ {0, 1} on rows of x with penalty l2·‖w‖²/2 on the scaled
    features (x / mean row norm). Raises ValueError without both classes or with non-finite x."""
    X = np.asarray(x, dtype=np.float64)
    Y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or Y.shape != (X.shape[0],):
        raise ValueError(f"x must be [n, H] and y [n], got {X.shape} and {Y.shape}")
    if not np.isfinite(X).all():
        raise ValueError("non-finite activations: cannot fit a probe")
    if set(np.unique(Y).tolist()) != {0.0, 1.0}:
        raise ValueError("a probe needs examples of both poles")
    scale = float(np.linalg.norm(X, axis=1).mean()) or 1.0
    Z = X / scale
    n, h = Z.shape

    def loss(theta: FloatArray) -> tuple[float, FloatArray]:
        w, b = theta[:h], theta[h]
        m = Z @ w + b
        # log(1 + e^m) - y m, stably
        ll = np.logaddexp(0.0, m) - Y * m
        p = 1.0 / (1.0 + np.exp(-m))
        g = p - Y
        val = float(ll.sum() + 0.5 * l2 * w @ w)
        grad = np.concatenate([Z.T @ g + l2 * w, [g.sum()]])
        return val, grad

    res = optimize.minimize(loss, np.zeros(h + 1), jac=True, method="L-BFGS-B", options={"maxiter": 1000})
    w, b = res.x[:h] / scale, float(res.x[h])
    acc = float(((X @ w + b > 0).astype(float) == Y).mean())
    return Probe(w, b, acc)


def auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Area under the ROC curve (Mann–Whitney), None without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels, dtype=bool)
    pos, neg = s[lab], s[~lab]
    if not len(pos) or not len(neg):
        return None
    return float(stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def report_from_logprobs(logprobs: Sequence[float]) -> tuple[float, float]:
    """(probability-weighted mean digit 0–9, total probability on the ten digit tokens)."""
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.shape != (10,):
        raise ValueError(f"need the log-probabilities of the ten digits, got shape {lp.shape}")
    top = lp.max()
    p = np.exp(lp - top)
    return float((np.arange(10) * p).sum() / p.sum()), float(np.exp(lp).sum())


def spearman(x: FloatArray, y: FloatArray) -> float:
    """Spearman ρ; 0 when either side is constant (no monotone association can be shown)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(stats.spearmanr(x, y).statistic)


def isotonic_r2(x: FloatArray, y: FloatArray) -> float:
    """R² of the best non-decreasing fit of y on x (ties in x pooled): 1 − SS_res / SS_tot."""
    order = np.lexsort((y, x))
    xs, ys = x[order], y[order]
    # Equal x values must get one fitted value: fit on the means of tied groups, weighted by size.
    uniq, start, counts = np.unique(xs, return_index=True, return_counts=True)
    means = np.add.reduceat(ys, start) / counts
    fit = optimize.isotonic_regression(means, weights=counts.astype(np.float64), increasing=True).x
    fitted = np.repeat(fit, counts)
    ss_tot = float(((ys - ys.mean()) ** 2).sum())
    if ss_tot == 0:
        return 0.0
    return float(1.0 - ((ys - fitted) ** 2).sum() / ss_tot)


def ols_slope(x: FloatArray, y: FloatArray) -> float:
    if np.ptp(x) == 0:
        return 0.0
    return float(np.polyfit(x, y, 1)[0])


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float

    def format(self, fmt: str = "{:+.2f}") -> str:
        return f"{fmt.format(self.value)} [{fmt.format(self.lo)}, {fmt.format(self.hi)}]"


def cluster_bootstrap(
    stat: Callable[[npt.NDArray[np.int_]], float],
    groups: Sequence[int],
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of `stat(row indices)` over resamples of whole groups (with
    replacement); deterministic for a seed. Non-finite resample values are dropped."""
    g = np.asarray(groups)
    ids = np.unique(g)
    members = [np.flatnonzero(g == i) for i in ids]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(ids), len(ids))
        v = stat(np.concatenate([members[i] for i in pick]))
        if math.isfinite(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


@dataclass(frozen=True)
class Coupling:
    """One concept (at one layer): the fidelity of its self-report to its probe."""

    concept: str
    layer: int
    n: int  # trials
    contexts: int
    rho: Estimate
    r2: Estimate
    slope: Estimate  # report points per unit of steering strength
    sign: str  # valid | invalid | unclear
    heldout_accuracy: float | None  # probe sign vs pole on the unsteered held-out contexts
    heldout_auc: float | None
    digit_mass: float  # mean probability the model puts on the ten digits at all
    report_range: tuple[float, float]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def coupling(
    concept: str,
    layer: int,
    probe: Sequence[float],
    report: Sequence[float],
    strength: Sequence[float],
    context: Sequence[int],
    pole: Sequence[int],
    digit_mass: Sequence[float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> Coupling:
    """Statistics of one concept's trials (one per context × strength)."""
    x = np.asarray(probe, dtype=np.float64)
    y = np.asarray(report, dtype=np.float64)
    s = np.asarray(strength, dtype=np.float64)
    c = np.asarray(context)
    if not (len(x) == len(y) == len(s) == len(c) == len(pole)) or len(x) < 3:
        raise ValueError("coupling needs at least 3 trials with probe, report, strength and context each")
    rho_ci = cluster_bootstrap(lambda i: spearman(x[i], y[i]), c, n_boot, seed)
    r2_ci = cluster_bootstrap(lambda i: isotonic_r2(x[i], y[i]), c, n_boot, seed + 1)
    sl_ci = cluster_bootstrap(lambda i: ols_slope(s[i], y[i]), c, n_boot, seed + 2)
    slope = ols_slope(s, y)
    sign = "valid" if sl_ci[0] > 0 else ("invalid" if sl_ci[1] < 0 else "unclear")
    base = s == 0
    labels = np.asarray(pole)[base]
    acc = float(((x[base] > 0).astype(int) == labels).mean()) if base.any() else None
    return Coupling(
        concept=concept,
        layer=layer,
        n=len(x),
        contexts=len(np.unique(c)),
        rho=Estimate(spearman(x, y), *rho_ci),
        r2=Estimate(isotonic_r2(x, y), *r2_ci),
        slope=Estimate(slope, *sl_ci),
        sign=sign,
        heldout_accuracy=acc,
        heldout_auc=auc(x[base].tolist(), labels.tolist()) if base.any() else None,
        digit_mass=float(np.mean(digit_mass)),
        report_range=(float(y.min()), float(y.max())),
    )


def mean_validated_r2(rows: Sequence[Coupling]) -> float | None:
    """Mean isotonic R² over the concepts whose steering sign is valid (the paper's "validated")."""
    ok = [r.r2.value for r in rows if r.sign == "valid"]
    return float(np.mean(ok)) if ok else None

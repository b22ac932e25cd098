"""Statistics for introspection experiments: rates with exact intervals, null bounds, power,
net detection, refusal-excluded rates, inter-rater agreement and the pre-registered test.

Pure functions, no I/O. Where scipy provides a statistic it is used (exact binomial intervals,
Wilson intervals, binomial tails); the only hand-written statistic is Newcombe's interval for a
difference of proportions (which scipy lacks), built on scipy's Wilson intervals.

Conventions:
- Rates are fractions in [0, 1]; `format()` methods print percentages with one decimal.
- "Exact" means Clopper-Pearson (inverted binomial tails): conservative, coverage >= nominal.
- Every function validates its counts (0 <= k <= n) and raises `ValueError` on nonsense input.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import SupportsIndex

import numpy as np
import numpy.typing as npt
from scipy import stats

__all__ = [
    "KappaCI",
    "NetDetection",
    "RateCI",
    "cohen_kappa",
    "format_null",
    "kappa_bootstrap_ci",
    "net_detection",
    "null_upper_bound",
    "preregistered_test",
    "rate_ci",
    "raw_agreement",
    "refusal_excluded",
    "trials_needed",
    "upper_bound",
]

# Merrill's pre-registered positive-cell thresholds (PROTOCOLS.md §2).
PREREG_IDENTIFIES_MIN = 0.5
PREREG_COHERENT_MIN = 0.5
PREREG_IMMEDIATE_MIN = 0.2


# --------------------------------------------------------------------------- helpers


def _count(value: SupportsIndex, name: str) -> int:
    """An integer count (ints and numpy integers; not floats or bools-as-floats)."""
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer count, got {value!r}") from None
    if out < 0:
        raise ValueError(f"{name} must be >= 0, got {out}")
    return out


def _counts(k: SupportsIndex, n: SupportsIndex) -> tuple[int, int]:
    k_, n_ = _count(k, "k"), _count(n, "n")
    if k_ > n_:
        raise ValueError(f"k={k_} successes exceed n={n_} trials")
    return k_, n_


def _check_level(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")
    return value


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _signed_pct(x: float) -> str:
    return f"{100.0 * x:+.1f}%"


def _ceil_sig(x: float, sig: int = 2) -> float:
    """Round x > 0 *up* to `sig` significant figures (so a printed upper bound stays an upper bound)."""
    if x <= 0.0:
        return 0.0
    exponent = math.floor(math.log10(x))
    scale = 10.0 ** (sig - 1 - exponent)
    return math.ceil(x * scale - 1e-9) / scale


# --------------------------------------------------------------------------- rates


@dataclass(frozen=True)
class RateCI:
    """k successes in n trials: `rate` = k/n with a two-sided interval [lo, hi].

    `lo`/`hi` are exact Clopper-Pearson bounds at `confidence` unless `method` says otherwise.
    With n = 0 the rate and interval are undefined (`None`) and `format()` prints "0/0 —".
    """

    n: int
    k: int
    rate: float | None
    lo: float | None
    hi: float | None
    confidence: float = 0.95
    method: str = "clopper-pearson"

    def format(self) -> str:
        """E.g. "3/20 15.0% [3.2%, 37.9%]" (percentages, one decimal); "0/0 —" when n = 0."""
        if self.n == 0 or self.rate is None or self.lo is None or self.hi is None:
            return f"{self.k}/{self.n} —"
        return f"{self.k}/{self.n} {_pct(self.rate)} [{_pct(self.lo)}, {_pct(self.hi)}]"

    def __str__(self) -> str:
        return self.format()


def rate_ci(k: SupportsIndex, n: SupportsIndex, confidence: float = 0.95) -> RateCI:
    """k/n with the exact (Clopper-Pearson) two-sided interval at `confidence`.

    Computed by `scipy.stats.binomtest(k, n).proportion_ci(confidence, method="exact")`.
    n = 0 returns a `RateCI` whose rate and bounds are `None`.
    """
    k_, n_ = _counts(k, n)
    confidence = _check_level(confidence, "confidence")
    if n_ == 0:
        return RateCI(n=0, k=0, rate=None, lo=None, hi=None, confidence=confidence)
    ci = stats.binomtest(k_, n_).proportion_ci(confidence_level=confidence, method="exact")
    return RateCI(n=n_, k=k_, rate=k_ / n_, lo=float(ci.low), hi=float(ci.high), confidence=confidence)


def upper_bound(k: SupportsIndex, n: SupportsIndex, confidence: float = 0.95) -> float:
    """One-sided exact (Clopper-Pearson) upper bound on the true rate after k successes in n trials.

    The largest p with P(X <= k | n, p) >= 1 - confidence, i.e. the `confidence` quantile of
    Beta(k + 1, n - k); 1.0 when k = n. For k = 0 it is 1 - (1 - confidence)^(1/n)
    (0/400 at 95% -> 0.7461%; the "rule of three" 3/n is its approximation).
    Computed by `scipy.stats.binomtest(k, n, alternative="less").proportion_ci(...)`.
    """
    k_, n_ = _counts(k, n)
    confidence = _check_level(confidence, "confidence")
    if n_ == 0:
        raise ValueError("an upper bound needs at least one trial (n = 0)")
    ci = stats.binomtest(k_, n_, alternative="less").proportion_ci(
        confidence_level=confidence, method="exact"
    )
    return float(ci.high)


def null_upper_bound(n: SupportsIndex, confidence: float = 0.95) -> float:
    """One-sided exact upper bound on the true rate after 0 successes in n trials (`upper_bound(0, n)`)."""
    return upper_bound(0, n, confidence)


def format_null(n: SupportsIndex, confidence: float = 0.95) -> str:
    """E.g. "0/400: true rate < 0.75% (one-sided 95%)".

    The bound is rounded *up* to two significant figures, so the printed claim is never
    stronger than the computed bound.
    """
    n_ = _count(n, "n")
    bound = null_upper_bound(n_, confidence)
    return f"0/{n_}: true rate < {_ceil_sig(100.0 * bound):g}% (one-sided {100.0 * confidence:g}%)"


def refusal_excluded(k: SupportsIndex, n: SupportsIndex, refusals: SupportsIndex) -> RateCI:
    """Rate with refusals removed from the denominator: k / (n - refusals), exact 95% interval.

    The Qwen scaling study's correction (PROTOCOLS.md §4): a refusal (the model declines the
    premise) is neither a success nor a false positive, so counting it as a failure drags the rate
    down on both arms. `k` counts successes (or false positives on a control arm) among all n
    trials; refusals are disjoint from them, so k + refusals <= n is required. For net detection
    excluding refusals call `net_detection(k_hit, n_hit - r_hit, k_fp, n_fp - r_fp)`.
    """
    k_, n_ = _counts(k, n)
    r = _count(refusals, "refusals")
    if k_ + r > n_:
        raise ValueError(f"k={k_} successes + {r} refusals exceed n={n_} trials (refusals are not successes)")
    return rate_ci(k_, n_ - r)


# --------------------------------------------------------------------------- power


def trials_needed(
    true_rate: float,
    power: float = 0.8,
    alpha: float = 0.05,
    control_rate: float = 0.0,
    max_n: int = 10_000_000,
) -> int:
    """Smallest number of trials n at which a true per-trial rate `true_rate` is detected with
    probability >= `power`.

    Definition: "detected" = the exact one-sided binomial test of H0: rate <= `control_rate`
    rejects at level `alpha`, i.e. the observed count X reaches the critical value
    c(n) = min{c : P(X >= c | n, control_rate) <= alpha}; power(n) = P(X >= c(n) | n, true_rate).
    The control rate is treated as known (a one-sample test), not estimated from a control arm.

    - control_rate = 0: any hit rejects (c = 1), so power(n) = 1 - (1 - true_rate)^n and
      n = ceil(log(1 - power) / log(1 - true_rate)); `alpha` plays no role. 1% at power 0.8 -> 161.
    - control_rate > 0: power(n) of the exact test is a sawtooth in n (the test is discrete); the
      returned n is the first that reaches `power`, and a slightly larger n may fall just short.

    Raises `ValueError` if true_rate <= control_rate or no n <= `max_n` suffices.
    """
    true_rate = float(true_rate)
    control_rate = float(control_rate)
    power = _check_level(power, "power")
    alpha = _check_level(alpha, "alpha")
    if not 0.0 < true_rate <= 1.0:
        raise ValueError(f"true_rate must be in (0, 1], got {true_rate}")
    if not 0.0 <= control_rate < 1.0:
        raise ValueError(f"control_rate must be in [0, 1), got {control_rate}")
    if true_rate <= control_rate:
        raise ValueError(f"true_rate={true_rate} must exceed control_rate={control_rate} to be detectable")

    if control_rate == 0.0:
        if true_rate == 1.0:
            return 1
        n = max(1, math.ceil(math.log1p(-power) / math.log1p(-true_rate)))

        def _power0(m: int) -> float:
            return -math.expm1(m * math.log1p(-true_rate))

        while _power0(n) < power:  # guard the closed form against float rounding
            n += 1
        while n > 1 and _power0(n - 1) >= power:
            n -= 1
        if n > max_n:
            raise ValueError(f"needs {n} trials, more than max_n={max_n}")
        return n

    start = 1
    width = 1024
    while start <= max_n:
        ns = np.arange(start, min(start + width, max_n + 1))
        crit = _critical_counts(ns, control_rate, alpha)
        pw = stats.binom.sf(crit - 1, ns, true_rate)
        pw = np.where(crit > ns, 0.0, pw)
        hits = np.nonzero(pw >= power)[0]
        if hits.size:
            return int(ns[hits[0]])
        start += width
        width *= 4
    raise ValueError(f"power {power} not reached within max_n={max_n} trials")


def _critical_counts(ns: npt.NDArray[np.int_], p0: float, alpha: float) -> npt.NDArray[np.int_]:
    """Per n: the smallest c with P(X >= c | n, p0) <= alpha (may be n + 1: no count rejects)."""
    crit = stats.binom.ppf(1.0 - alpha, ns, p0).astype(np.int64) + 1
    # ppf works through floating cdf values; make the defining inequality hold exactly.
    for _ in range(3):
        too_low = stats.binom.sf(crit - 1, ns, p0) > alpha
        crit = np.where(too_low, crit + 1, crit)
        could_lower = (crit >= 2) & (stats.binom.sf(crit - 2, ns, p0) <= alpha)
        crit = np.where(could_lower, crit - 1, crit)
    return crit


# --------------------------------------------------------------------------- net detection


@dataclass(frozen=True)
class NetDetection:
    """Net detection = hit rate (injected trials) − false-positive rate (control trials).

    `lo`/`hi` is Newcombe's hybrid score interval for the difference (see `net_detection`);
    `hit`/`fp` carry each arm's own exact interval.
    """

    hit: RateCI
    fp: RateCI
    net: float
    lo: float
    hi: float
    confidence: float = 0.95
    method: str = "newcombe-hybrid-score (Wilson)"

    def format(self) -> str:
        """E.g. "net +15.0% [+1.9%, +36.0%] (hits 3/20 15.0% [3.2%, 37.9%]; FP 0/40 0.0% [0.0%, 8.8%])"."""
        return (
            f"net {_signed_pct(self.net)} [{_signed_pct(self.lo)}, {_signed_pct(self.hi)}] "
            f"(hits {self.hit.format()}; FP {self.fp.format()})"
        )

    def __str__(self) -> str:
        return self.format()


def net_detection(
    k_hit: SupportsIndex,
    n_hit: SupportsIndex,
    k_fp: SupportsIndex,
    n_fp: SupportsIndex,
    confidence: float = 0.95,
) -> NetDetection:
    """Net detection p1 − p2 (p1 = k_hit/n_hit on injected trials, p2 = k_fp/n_fp on controls) with
    Newcombe's hybrid score interval (Newcombe 1998, "method 10").

    With Wilson score intervals [l1, u1] for p1 and [l2, u2] for p2 at `confidence`
    (`scipy.stats.binomtest(...).proportion_ci(method="wilson")`), d = p1 − p2 and
        lo = d − sqrt((p1 − l1)^2 + (u2 − p2)^2),   hi = d + sqrt((u1 − p1)^2 + (p2 − l2)^2).
    The two arms are independent binomials. The interval stays inside [-1, 1], is well behaved at
    0/n and n/n, and reproduces Newcombe's published examples (e.g. 56/70 − 48/80: [0.0524, 0.3339]).
    Both arms need at least one trial.
    """
    kh, nh = _counts(k_hit, n_hit)
    kf, nf = _counts(k_fp, n_fp)
    confidence = _check_level(confidence, "confidence")
    if nh == 0 or nf == 0:
        raise ValueError(f"net detection needs trials on both arms (n_hit={nh}, n_fp={nf})")
    p1, p2 = kh / nh, kf / nf
    w1 = stats.binomtest(kh, nh).proportion_ci(confidence_level=confidence, method="wilson")
    w2 = stats.binomtest(kf, nf).proportion_ci(confidence_level=confidence, method="wilson")
    l1, u1, l2, u2 = float(w1.low), float(w1.high), float(w2.low), float(w2.high)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return NetDetection(
        hit=rate_ci(kh, nh, confidence),
        fp=rate_ci(kf, nf, confidence),
        net=d,
        lo=max(-1.0, lo),
        hi=min(1.0, hi),
        confidence=confidence,
    )


# --------------------------------------------------------------------------- agreement


def _as_bool_pair(
    a: Sequence[bool] | npt.ArrayLike, b: Sequence[bool] | npt.ArrayLike
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    arrays = []
    for name, x in (("a", a), ("b", b)):
        arr = np.asarray(x)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be a 1-D sequence of booleans")
        if arr.dtype != np.bool_:
            if arr.size and not np.isin(arr, (0, 1)).all():
                raise ValueError(f"{name} must contain only booleans (or 0/1)")
            arr = arr.astype(bool)
        arrays.append(arr)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"a and b differ in length ({arrays[0].size} vs {arrays[1].size})")
    if arrays[0].size == 0:
        raise ValueError("agreement needs at least one rated item")
    return arrays[0], arrays[1]


def raw_agreement(a: Sequence[bool] | npt.ArrayLike, b: Sequence[bool] | npt.ArrayLike) -> float:
    """Fraction of items on which the two raters give the same boolean."""
    x, y = _as_bool_pair(a, b)
    return float(np.mean(x == y))


def _kappa_rows(x: npt.NDArray[np.bool_], y: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Cohen's kappa along the last axis; nan where chance agreement is 1 (kappa undefined)."""
    po = np.mean(x == y, axis=-1)
    px, py = np.mean(x, axis=-1), np.mean(y, axis=-1)
    pe = px * py + (1.0 - px) * (1.0 - py)
    denom = 1.0 - pe
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(np.isclose(denom, 0.0, rtol=0.0, atol=1e-12), np.nan, (po - pe) / denom)
    return kappa


def cohen_kappa(a: Sequence[bool] | npt.ArrayLike, b: Sequence[bool] | npt.ArrayLike) -> float:
    """Cohen's kappa for two raters' booleans: (p_o − p_e) / (1 − p_e).

    p_o = observed agreement; p_e = pa·pb + (1 − pa)(1 − pb) with pa, pb each rater's rate of True.
    Undefined when p_e = 1, which happens exactly when both raters are constant and give the same
    answer on every item (e.g. the judge and the heuristic both say "no" to all 400 trials, which
    is the usual case in a null result): then this returns nan and emits a RuntimeWarning. Use
    `raw_agreement` for that case. (Computed with numpy; scikit-learn is not a dependency.)
    """
    x, y = _as_bool_pair(a, b)
    kappa = float(_kappa_rows(x, y))
    if math.isnan(kappa):
        warnings.warn(
            "Cohen's kappa is undefined: both raters give the same constant answer on every item "
            "(chance agreement = 1); returning nan — report raw agreement instead",
            RuntimeWarning,
            stacklevel=2,
        )
    return kappa


@dataclass(frozen=True)
class KappaCI:
    """Cohen's kappa with a percentile bootstrap interval.

    `n_undefined` counts bootstrap resamples where kappa was undefined (both resampled raters
    constant and equal); they are dropped, and the interval uses the remaining resamples.
    """

    kappa: float
    lo: float
    hi: float
    confidence: float
    n_boot: int
    n_undefined: int

    def format(self) -> str:
        """E.g. "kappa 0.58 [0.12, 0.91] (bootstrap 95%, 2000 resamples)"."""
        if math.isnan(self.kappa):
            return "kappa undefined (both raters constant)"
        extra = f", {self.n_undefined} undefined dropped" if self.n_undefined else ""
        return (
            f"kappa {self.kappa:.2f} [{self.lo:.2f}, {self.hi:.2f}] "
            f"(bootstrap {100.0 * self.confidence:g}%, {self.n_boot} resamples{extra})"
        )


def kappa_bootstrap_ci(
    a: Sequence[bool] | npt.ArrayLike,
    b: Sequence[bool] | npt.ArrayLike,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> KappaCI:
    """Cohen's kappa with a percentile bootstrap interval over items.

    Items (rating pairs) are resampled with replacement `n_boot` times using
    `numpy.random.default_rng(seed)` (deterministic for a given seed); lo/hi are the
    (1 − confidence)/2 and (1 + confidence)/2 quantiles of the resampled kappas that are defined.
    If the point kappa is undefined (see `cohen_kappa`) everything is nan.
    """
    x, y = _as_bool_pair(a, b)
    confidence = _check_level(confidence, "confidence")
    if operator.index(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    kappa = cohen_kappa(x, y)
    if math.isnan(kappa):
        return KappaCI(math.nan, math.nan, math.nan, confidence, n_boot, n_boot)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = _kappa_rows(x[idx], y[idx])
    ok = boots[~np.isnan(boots)]
    n_undefined = int(n_boot - ok.size)
    if ok.size == 0:
        return KappaCI(kappa, math.nan, math.nan, confidence, n_boot, n_undefined)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(ok, [tail, 1.0 - tail])
    return KappaCI(kappa, float(lo), float(hi), confidence, n_boot, n_undefined)


# --------------------------------------------------------------------------- pre-registration


def preregistered_test(identifies_rate: float, coherent_rate: float, immediate_rate: float) -> bool:
    """Merrill's pre-registered positive cell: identifies >= 0.5 AND coherent >= 0.5 AND
    immediate >= 0.2 (all inclusive; rates are fractions of the cell's injected trials).

    A nan rate (no data) never passes.
    """
    return bool(
        identifies_rate >= PREREG_IDENTIFIES_MIN
        and coherent_rate >= PREREG_COHERENT_MIN
        and immediate_rate >= PREREG_IMMEDIATE_MIN
    )


# Paired difference (self − other, or B − A on the same trials graded twice): with b = units only
# the first got right and c = the reverse, the exact McNemar test is the two-sided binomial test of
# b in b + c at 1/2; its interval is conditional on the b + c discordant units: Clopper–Pearson
# [πlo, πhi] for b/(b+c), mapped to ((b+c)/n)(2π − 1). It excludes 0 exactly when that binomial
# test's interval excludes 1/2, so the interval and the test agree.


@dataclass(frozen=True)
class PairedDiff:
    """self − other on n paired units: b units only self got right, c only the other."""

    n: int
    b: int
    c: int
    diff: float | None
    lo: float | None
    hi: float | None
    p_value: float | None  # exact McNemar (two-sided)

    def format(self) -> str:
        if not self.n or self.diff is None or self.lo is None or self.hi is None:
            return "—"
        p = "1" if self.p_value is None else f"{self.p_value:.2g}"
        return f"{100 * self.diff:+.1f}% [{100 * self.lo:+.1f}%, {100 * self.hi:+.1f}%] (b={self.b}, c={self.c}, p={p})"

    def excludes_zero(self) -> bool:
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)


def paired_difference(self_correct: list[bool], other_correct: list[bool], confidence: float = 0.95) -> PairedDiff:
    """Exact McNemar test and its conditional exact interval (see the module docstring)."""
    if len(self_correct) != len(other_correct):
        raise ValueError("paired lists must have the same length")
    n = len(self_correct)
    b = sum(1 for s, o in zip(self_correct, other_correct, strict=True) if s and not o)
    c = sum(1 for s, o in zip(self_correct, other_correct, strict=True) if o and not s)
    if n == 0:
        return PairedDiff(0, 0, 0, None, None, None, None)
    m = b + c
    if m == 0:
        return PairedDiff(n, 0, 0, 0.0, 0.0, 0.0, 1.0)
    test = stats.binomtest(b, m, 0.5)
    ci = test.proportion_ci(confidence_level=confidence, method="exact")
    scale = m / n
    return PairedDiff(
        n, b, c, (b - c) / n, scale * (2 * float(ci.low) - 1), scale * (2 * float(ci.high) - 1), float(test.pvalue)
    )

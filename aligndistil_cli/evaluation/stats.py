"""Summary statistics for evaluation: confidence intervals, win rates, diversity, accuracy.

Pure Python (no scipy: it is not a dependency). The Student-t quantile comes from inverting the
t CDF, written through the regularized incomplete beta function, by bisection.
"""

from __future__ import annotations

import math
from typing import Sequence


def _betacf(a: float, b: float, x: float) -> float:
    """Incomplete-beta continued fraction (modified Lentz method, Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast only for x < (a+1)/(a+b+2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of :func:`t_cdf` (e.g. ``t_quantile(0.975, 3) = 3.182``), by bisection."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95 % Student-t interval: ``mean ± t_{0.975, n-1} · s / sqrt(n)``.

    ``s`` is the sample standard deviation (n - 1 in the denominator). With one value the
    interval is undefined: returns ``(x, nan, nan)``.
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan, math.nan
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return mean, mean - half, mean + half


def win_rate(scores: Sequence[float], ref_scores: Sequence[float]) -> float:
    """Fraction of pairs (same prompt and sample index) where ``scores`` beats the reference.

    Ties count half, so identical policies score 0.5.
    """
    if len(scores) != len(ref_scores) or not scores:
        raise ValueError(f"need equally long, non-empty lists, got {len(scores)}, "
                         f"{len(ref_scores)}")
    points = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, ref_scores))
    return points / len(scores)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Unique n-grams / total n-grams over whitespace tokens, pooled over all texts.

    n-grams never cross text boundaries. Returns 0.0 when no text has n tokens.
    """
    grams = [tuple(tokens[i: i + n]) for text in texts
             for tokens in [text.split()] for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def reward_accuracy(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float]) -> float:
    """Fraction of pairs with r(chosen) > r(rejected), strictly (the paper's reward accuracy).

    Ties count 0 (a model that cannot tell the responses apart gets no credit); report
    :func:`reward_ties` next to it so a tie-heavy result is visible.
    """
    _check_pairs(chosen_rewards, rejected_rewards)
    wins = sum(1 for c, r in zip(chosen_rewards, rejected_rewards) if c > r)
    return wins / len(chosen_rewards)


def reward_ties(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float]) -> int:
    """Number of pairs with r(chosen) == r(rejected)."""
    _check_pairs(chosen_rewards, rejected_rewards)
    return sum(1 for c, r in zip(chosen_rewards, rejected_rewards) if c == r)


def _check_pairs(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"need equally long, non-empty lists, got {len(a)}, {len(b)}")

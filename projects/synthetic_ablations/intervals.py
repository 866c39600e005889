"""The statistics of the synthetic Table 2: plateau gate, intervals over seeds, Holm, TOST.

The unit of replication is a training run: a row trained with seed ``s``
gives one value per metric.

- **Plateau gate** (:func:`plateau_gate`): a run counts only if its last
  two evaluations differ by at most :data:`PLATEAU_TOLERANCE` AP points and
  by at most :data:`PLATEAU_RELATIVE_TOLERANCE` of their mean (near zero AP
  an absolute 1.5 points says nothing: 2.3 -> 2.6 is +13 %; from 15 AP up
  the absolute bound is the tighter one and decides alone). A
  row is judged only if every one of its runs passes. After a x0.1 decay
  two close evaluations say less (the steps are ten times smaller whether
  or not the model had converged), so the report also gives each run's
  *peak-rate trend*: the same comparison on the last two evaluations before
  the decay (``plateau_gate(curve, decay_iter)``), a diagnostic that does
  not gate.
- **Differences** (:func:`difference`): paired by seed when both rows ran
  with at least two common seeds (the per-seed differences, n - 1 degrees
  of freedom: the same seed gives both rows the same image order and the
  same draws for the parts they share, so part of the seed's luck cancels);
  Welch otherwise; no test with one seed.
- **Multiplicity**: the claims of one table are tested together. Each
  ordering gets a two-sided t-test of "no difference", the equivalence
  claim a TOST (:meth:`Difference.tost_p_value`); the p-values are adjusted
  by Holm's step-down method (:func:`holm`) over all the claims, and a
  verdict needs an adjusted p-value at most ``1 - CONFIDENCE``. The
  intervals printed are Bonferroni-simultaneous (each at ``1 - 0.05 / m``
  for m claims): all m cover their true differences together with 95 %
  probability. Holm rejects at least what Bonferroni rejects, so a claim's
  interval may still touch 0 where Holm's step-down already decides.
- **Bounded metric**: AP lies in [0, 100] points, so a row's interval is
  clipped to [0, 100] and a difference's to [-100, 100] (clipped, not
  transformed: the t-interval is computed as usual, then cut at the bounds).
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
# "FPN adds nothing": equivalent when the difference is shown to lie within +-1.5 AP points
EQUIVALENCE_MARGIN = 1.5
# a run is at its plateau when its last two evaluations differ by at most this (AP points)
PLATEAU_TOLERANCE = 1.5
# ... and by at most this share of their mean AP (the bound that decides below 15 AP)
PLATEAU_RELATIVE_TOLERANCE = 0.1
AP_RANGE = (0.0, 100.0)


def clip(low: float, high: float, bounds: Tuple[float, float]) -> Tuple[float, float]:
    """An interval cut at the metric's bounds."""
    return max(low, bounds[0]), min(high, bounds[1])


def t_half_width(values: Sequence[float], confidence: float = CONFIDENCE) -> Optional[float]:
    """Half-width of the t-interval of the mean of ``values``.

    Args:
        values (Sequence[float]): One value per seed (NaN not allowed).
        confidence (float): Two-sided confidence level.

    Returns:
        float | None: ``t((1 + confidence) / 2, n-1) * s / sqrt(n)``; None for
        fewer than two values.
    """
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    quantile = stats.t.ppf(0.5 + confidence / 2, len(values) - 1)
    return float(quantile * values.std(ddof=1) / math.sqrt(len(values)))


@dataclass(frozen=True)
class Difference:
    """Difference of two rows' means, its standard error and degrees of freedom.

    Attributes:
        mean (float): Mean of ``higher`` minus mean of ``lower`` (points).
        se (float | None): Standard error of ``mean``; None with one seed.
        dof (float | None): Degrees of freedom of the t distribution.
        method (str): ``paired (n seeds)``, ``Welch (n1, n2 seeds)`` or
            ``1 seed``.
    """
    mean: float
    se: Optional[float]
    dof: Optional[float]
    method: str

    def interval(self, confidence: float = CONFIDENCE,
                 bounds: Tuple[float, float] = (-AP_RANGE[1], AP_RANGE[1])
                 ) -> Optional[Tuple[float, float]]:
        """Two-sided t-interval clipped to ``bounds``; None without a test."""
        if self.se is None:
            return None
        half = 0.0 if self.se == 0 else float(stats.t.ppf(0.5 + confidence / 2, self.dof)
                                             * self.se)
        return clip(self.mean - half, self.mean + half, bounds)

    def p_value(self) -> Optional[float]:
        """Two-sided p-value of "no difference"; None without a test."""
        if self.se is None:
            return None
        if self.se == 0:
            return 0.0 if self.mean != 0 else 1.0
        return float(2 * stats.t.sf(abs(self.mean) / self.se, self.dof))

    def tost_p_value(self, margin: float) -> Optional[float]:
        """TOST p-value of "the difference lies within +-margin" (the larger one-sided p)."""
        if self.se is None:
            return None
        if self.se == 0:
            return 0.0 if abs(self.mean) < margin else 1.0
        above_low = stats.t.sf((self.mean + margin) / self.se, self.dof)  # H0: delta <= -m
        below_high = stats.t.cdf((self.mean - margin) / self.se, self.dof)  # H0: delta >= m
        return float(max(above_low, below_high))

    def text(self, confidence: float = CONFIDENCE) -> str:
        """``+1.2 [-0.3, +2.7]`` (interval at ``confidence``) or ``+1.2`` without a test."""
        interval = self.interval(confidence)
        if interval is None:
            return f'{self.mean:+.1f}'
        return f'{self.mean:+.1f} [{interval[0]:+.1f}, {interval[1]:+.1f}]'


def difference(higher: Dict[int, float], lower: Dict[int, float]) -> Optional[Difference]:
    """Difference of two rows (seed -> value, NaN values dropped); see the module docstring.

    Returns:
        Difference | None: None when a row has no value.
    """
    higher = {s: v for s, v in higher.items() if not math.isnan(v)}
    lower = {s: v for s, v in lower.items() if not math.isnan(v)}
    if not higher or not lower:
        return None
    common = sorted(set(higher) & set(lower))
    if len(common) >= 2:
        diffs = np.array([higher[s] - lower[s] for s in common])
        return Difference(float(diffs.mean()), float(diffs.std(ddof=1) / math.sqrt(len(diffs))),
                          len(diffs) - 1, f'paired ({len(common)} seeds)')
    a, b = np.array(list(higher.values())), np.array(list(lower.values()))
    mean = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Difference(mean, None, None, '1 seed')
    var_a, var_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(var_a + var_b)
    # Welch-Satterthwaite degrees of freedom
    dof = se**4 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1)) if se else 1.0
    return Difference(mean, se, dof, f'Welch ({len(a)}, {len(b)} seeds)')


def holm(p_values: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm's step-down adjusted p-values; None entries (no test) are left out of the family.

    ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))`` over the p-values in
    increasing order, m the number of tests.
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    adjusted: List[Optional[float]] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def plateau_gate(curve: Sequence[dict], decay_iter: Optional[int] = None,
                 tolerance: float = PLATEAU_TOLERANCE,
                 relative_tolerance: float = PLATEAU_RELATIVE_TOLERANCE
                 ) -> Tuple[Optional[bool], str]:
    """Whether a run's AP curve has reached its plateau (module docstring).

    Args:
        curve (Sequence[dict]): Evaluations (``iter``, ``AP`` in [0, 1]) in
            increasing iteration order.
        decay_iter (int, optional): Compare the last two evaluations at or
            before this iteration (the learning-rate decay: the peak-rate
            trend). None: the last two evaluations of the run (the gate).
        tolerance (float): Largest difference, in AP points.
        relative_tolerance (float): Largest difference as a share of the
            mean of the two evaluations (two evaluations at 0 AP pass).

    Returns:
        tuple[bool | None, str]: the verdict (None: fewer than two
        evaluations to compare) and the compared points in words, e.g.
        ``720: 30.1 -> 960: 31.0``.
    """
    points = [p for p in curve if decay_iter is None or p['iter'] <= decay_iter]
    if len(points) < 2:
        return None, 'fewer than two evaluations'
    first, last = points[-2], points[-1]
    delta = 100 * (last['AP'] - first['AP'])
    words = f'{first["iter"]}: {100 * first["AP"]:.1f} -> {last["iter"]}: {100 * last["AP"]:.1f}'
    level = 50 * (last['AP'] + first['AP'])
    return abs(delta) <= min(tolerance, relative_tolerance * abs(level)), words


def ordering_verdict(diff: Difference, adjusted_p: Optional[float]) -> str:
    """``reproduced`` / ``not reproduced: reversed`` / ``not established`` for "higher > lower"."""
    if adjusted_p is None:
        sign = "the paper's sign" if diff.mean > 0 else 'the opposite sign'
        return f'not established: 1 seed, no test ({sign})'
    if adjusted_p > 1 - CONFIDENCE:
        return 'not established'
    return 'reproduced' if diff.mean > 0 else 'not reproduced: reversed'


def equivalence_verdict(diff: Difference, adjusted_p: Optional[float],
                        confidence: float = CONFIDENCE,
                        margin: float = EQUIVALENCE_MARGIN) -> str:
    """Verdict on "higher ≈ lower" from the TOST's adjusted p-value.

    ``reproduced (within ±margin)`` when equivalence is shown; otherwise
    ``not reproduced: a difference beyond ±margin`` when the interval at
    ``confidence`` (the table's simultaneous level) lies beyond the margin
    on one side, else ``not established``.
    """
    if adjusted_p is None:
        return 'not established: 1 seed, no test'
    if adjusted_p <= 1 - CONFIDENCE:
        return f'reproduced (within ±{margin:g})'
    interval = diff.interval(confidence)
    if interval is not None and (interval[0] > margin or interval[1] < -margin):
        return f'not reproduced: a difference beyond ±{margin:g}'
    return f'not established (not shown within ±{margin:g})'

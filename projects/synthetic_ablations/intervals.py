"""95 % t-intervals over training seeds and the verdict on one of the paper's orderings.

The unit of replication is a training run: a row trained with seed ``s``
gives one value per metric. For a row, the interval is the Student-t
interval of the mean over its seeds. For a difference of two rows:

- **paired by seed** when both rows ran with at least two common seeds: the
  interval of the mean of the per-seed differences (n - 1 degrees of
  freedom). Rows with the same seed share the training-image order, the
  augmentation draws and the initialization of the parts they have in
  common, so part of the seed's luck is common to both and cancels in the
  per-seed difference. The paired interval is valid whether or not that
  correlation is there (it then only costs degrees of freedom).
- **unpaired (Welch)** otherwise, when each row has two seeds or more.
- none with fewer seeds: a single run says nothing about seed-to-seed noise.

Verdicts on an ordering "higher > lower" (interval of higher - lower):
``reproduced`` (interval excludes 0, the paper's sign), ``not reproduced``
(excludes 0, opposite sign), ``not established`` (contains 0). On an
equivalence "higher ≈ lower" (the paper's FPN row): ``reproduced`` when the
whole interval lies within ± :data:`EQUIVALENCE_MARGIN` points, ``not
reproduced`` when it excludes 0 and leaves the margin (a real difference),
``not established`` otherwise (too wide to tell).
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
# "no difference" (the FPN row): the 95 % interval of the difference lies within +-1 AP point
EQUIVALENCE_MARGIN = 1.0


def t_half_width(values: Sequence[float]) -> Optional[float]:
    """Half-width of the 95 % t-interval of the mean of ``values``.

    Args:
        values (Sequence[float]): One value per seed (NaN not allowed).

    Returns:
        float | None: ``t(0.975, n-1) * s / sqrt(n)``; None for fewer than
        two values.
    """
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    quantile = stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1)
    return float(quantile * values.std(ddof=1) / math.sqrt(len(values)))


@dataclass(frozen=True)
class Difference:
    """Difference of two rows' means with its 95 % interval.

    Attributes:
        mean (float): Mean of ``higher`` minus mean of ``lower`` (points).
        half_width (float | None): Half-width of the 95 % interval; None
            when it is not available (fewer than two seeds).
        method (str): ``paired (n seeds)``, ``Welch (n1, n2 seeds)`` or
            ``1 seed``.
    """
    mean: float
    half_width: Optional[float]
    method: str

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)

    def text(self) -> str:
        """``+1.2 [-0.3, +2.7]`` or ``+1.2`` without an interval."""
        if self.half_width is None:
            return f'{self.mean:+.1f}'
        return f'{self.mean:+.1f} [{self.low:+.1f}, {self.high:+.1f}]'


def difference(higher: dict, lower: dict) -> Optional[Difference]:
    """Difference of two rows (seed -> value, NaN values dropped) with its interval.

    Args:
        higher (dict[int, float]): Per-seed values of the first row.
        lower (dict[int, float]): Per-seed values of the second row.

    Returns:
        Difference | None: None when a row has no value.
    """
    higher = {s: v for s, v in higher.items() if not math.isnan(v)}
    lower = {s: v for s, v in lower.items() if not math.isnan(v)}
    if not higher or not lower:
        return None
    common = sorted(set(higher) & set(lower))
    if len(common) >= 2:
        diffs = [higher[s] - lower[s] for s in common]
        return Difference(float(np.mean(diffs)), t_half_width(diffs),
                          f'paired ({len(common)} seeds)')
    a, b = np.array(list(higher.values())), np.array(list(lower.values()))
    mean = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Difference(mean, None, '1 seed')
    var_a, var_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(var_a + var_b)
    if se == 0:
        return Difference(mean, 0.0, f'Welch ({len(a)}, {len(b)} seeds)')
    # Welch-Satterthwaite degrees of freedom
    dof = se**4 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, dof) * se)
    return Difference(mean, half, f'Welch ({len(a)}, {len(b)} seeds)')


def verdict(diff: Difference, equivalence: bool = False) -> str:
    """The verdict on "higher > lower" (or "higher ≈ lower") from ``diff``.

    See the module docstring. Without an interval (one seed) the verdict is
    ``not established`` and says so, with the sign found.
    """
    if diff.half_width is None:
        if equivalence:
            return 'not established: 1 seed, no interval'
        sign = "the paper's sign" if diff.mean > 0 else 'the opposite sign'
        return f'not established: 1 seed, no interval ({sign})'
    if equivalence:
        if abs(diff.low) <= EQUIVALENCE_MARGIN and abs(diff.high) <= EQUIVALENCE_MARGIN:
            return f'reproduced (within ±{EQUIVALENCE_MARGIN:.0f})'
        if diff.low > 0 or diff.high < 0:
            return 'not reproduced: a difference'
        return f'not established (wider than ±{EQUIVALENCE_MARGIN:.0f})'
    if diff.low > 0:
        return 'reproduced'
    if diff.high < 0:
        return 'not reproduced: reversed'
    return 'not established'

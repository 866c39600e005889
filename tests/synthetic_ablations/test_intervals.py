"""95 % intervals over seeds and the verdicts on the paper's orderings, on hand-made numbers."""
import math

import pytest

from projects.synthetic_ablations import report
from projects.synthetic_ablations.intervals import (
    EQUIVALENCE_MARGIN,
    Difference,
    difference,
    t_half_width,
    verdict,
)


def test_t_half_width():
    # mean 2, s.d. 1, n = 3: t(0.975, 2) = 4.3027
    assert t_half_width([1.0, 2.0, 3.0]) == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    # n = 2: t(0.975, 1) = 12.706, s.d. of (0, 2) = sqrt(2)
    assert t_half_width([0.0, 2.0]) == pytest.approx(12.7062 * math.sqrt(2) / math.sqrt(2),
                                                      rel=1e-4)
    assert t_half_width([5.0]) is None


def test_paired_difference_removes_the_common_seed_effect():
    # the seed moves both rows alike; the per-seed difference is always about 1
    higher = {0: 31.0, 1: 36.1, 2: 26.0}
    lower = {0: 30.0, 1: 35.0, 2: 25.0}
    diff = difference(higher, lower)
    assert diff.method == 'paired (3 seeds)'
    assert diff.mean == pytest.approx(1.0333, abs=1e-4)
    assert diff.half_width == pytest.approx(t_half_width([1.0, 1.1, 1.0]))
    assert verdict(diff) == 'reproduced'
    # the same values without pairing (disjoint seeds): Welch, far too wide to tell
    unpaired = difference(higher, {s + 10: v for s, v in lower.items()})
    assert unpaired.method == 'Welch (3, 3 seeds)'
    assert unpaired.mean == pytest.approx(diff.mean)
    assert unpaired.half_width > 10 * diff.half_width
    assert verdict(unpaired) == 'not established'


def test_nan_seeds_are_dropped_and_one_seed_has_no_interval():
    diff = difference({0: 30.0, 1: float('nan')}, {0: 25.0, 1: 20.0})
    # seed 1 of the first row is NaN: one common seed left, no pairing, no interval
    assert diff == Difference(30.0 - 22.5, None, '1 seed')
    assert verdict(diff) == "not established: 1 seed, no interval (the paper's sign)"
    assert verdict(Difference(-2.0, None, '1 seed')) == \
        'not established: 1 seed, no interval (the opposite sign)'
    assert difference({0: float('nan')}, {0: 1.0}) is None


@pytest.mark.parametrize('mean,half,equivalence,expected', [
    (3.0, 1.0, False, 'reproduced'),
    (-3.0, 1.0, False, 'not reproduced: reversed'),
    (0.5, 1.0, False, 'not established'),
    (0.2, 0.5, True, f'reproduced (within ±{EQUIVALENCE_MARGIN:.0f})'),
    (0.8, 0.5, True, 'not reproduced: a difference'),  # [0.3, 1.3]: excludes 0, leaves ±1
    (0.5, 0.7, True, 'not established (wider than ±1)'),  # [-0.2, 1.2]
    (3.0, 0.5, True, 'not reproduced: a difference'),
    (0.0, 3.0, True, 'not established (wider than ±1)'),
    (0.0, None, True, 'not established: 1 seed, no interval'),
])
def test_verdicts(mean, half, equivalence, expected):
    assert verdict(Difference(mean, half, 'x'), equivalence) == expected


def fake(row, seed, ap):
    return dict(row=row, seed=seed, iters=2, metrics=dict(AP=ap, AP_S=ap / 2),
                curve=[dict(iter=2, AP=ap)], train_seconds=1.0, total_seconds=1.0,
                params=10, description={})


def test_check_claim_on_rows():
    runs = [fake('h', s, ap) for s, ap in enumerate((0.40, 0.42, 0.41))]
    runs += [fake('l', s, ap) for s, ap in enumerate((0.30, 0.33, 0.31))]
    summary = report.summarize(runs)
    diff, method, judged = report.check_claim(report.Claim('t', 'h', 'l', '+1'), summary)
    assert method == 'paired (3 seeds)' and judged == 'reproduced'
    assert diff.startswith('+9.7 [')
    reversed_ = report.check_claim(report.Claim('t', 'l', 'h', '+1'), summary)
    assert reversed_[2] == 'not reproduced: reversed'
    no_gain = report.check_claim(report.Claim('t', 'h', 'l', '+0', no_gain=True), summary)
    assert no_gain[2] == 'not reproduced: a difference'
    assert report.check_claim(report.Claim('t', 'h', 'x', '+1'), summary) == \
        ('-', '-', 'not run (x missing)')
    one_seed = report.summarize(runs[:1] + runs[3:4])
    assert report.check_claim(report.Claim('t', 'h', 'l', '+1'), one_seed) == \
        ('+10.0', '1 seed', "not established: 1 seed, no interval (the paper's sign)")


def test_table_shows_mean_and_half_width():
    runs = [fake('a', s, ap) for s, ap in enumerate((0.30, 0.32, 0.34))] + [fake('b', 0, 0.2)]
    lines = report.format_table(report.summarize(runs)).splitlines()
    half = t_half_width([30.0, 32.0, 34.0])  # 4.97
    assert f'| 32.0 ± {half:.1f} |' in lines[2]
    assert lines[3].startswith('| b |  |  |  |  | 20.0 | n/a | 10.0 |')  # one seed: the value

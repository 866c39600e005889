"""Intervals over seeds, Holm, TOST, the plateau gate and the verdicts, on hand-made numbers."""
import math

import pytest
from scipy import stats

from projects.synthetic_ablations import report
from projects.synthetic_ablations.intervals import (
    EQUIVALENCE_MARGIN,
    Difference,
    difference,
    equivalence_verdict,
    holm,
    ordering_verdict,
    plateau_gate,
    t_half_width,
)


def test_t_half_width():
    # mean 2, s.d. 1, n = 3: t(0.975, 2) = 4.3027
    assert t_half_width([1.0, 2.0, 3.0]) == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert t_half_width([0.0, 2.0], confidence=0.99) == pytest.approx(63.657, rel=1e-4)
    assert t_half_width([5.0]) is None


def test_paired_difference_removes_the_common_seed_effect():
    # the seed moves both rows alike; the per-seed difference is always about 1
    higher = {0: 31.0, 1: 36.1, 2: 26.0}
    lower = {0: 30.0, 1: 35.0, 2: 25.0}
    diff = difference(higher, lower)
    assert diff.method == 'paired (3 seeds)' and diff.dof == 2
    assert diff.mean == pytest.approx(1.0333, abs=1e-4)
    low, high = diff.interval()
    assert high - diff.mean == pytest.approx(t_half_width([1.0, 1.1, 1.0]))
    # p of "no difference": t = mean / se with 2 degrees of freedom
    assert diff.p_value() == pytest.approx(2 * stats.t.sf(diff.mean / diff.se, 2))
    assert diff.p_value() < 0.002
    # the same values without pairing (disjoint seeds): Welch, far too wide to tell
    unpaired = difference(higher, {s + 10: v for s, v in lower.items()})
    assert unpaired.method == 'Welch (3, 3 seeds)'
    assert unpaired.mean == pytest.approx(diff.mean)
    assert unpaired.p_value() > 0.5


def test_nan_seeds_are_dropped_and_one_seed_has_no_test():
    diff = difference({0: 30.0, 1: float('nan')}, {0: 25.0, 1: 20.0})
    assert diff == Difference(30.0 - 22.5, None, None, '1 seed')
    assert diff.interval() is None and diff.p_value() is None and diff.tost_p_value(1) is None
    assert diff.text() == '+7.5'
    assert ordering_verdict(diff, None) == "not established: 1 seed, no test (the paper's sign)"
    assert difference({0: float('nan')}, {0: 1.0}) is None


def test_intervals_are_clipped_to_the_metric_range():
    diff = Difference(95.0, 10.0, 2, 'paired (3 seeds)')
    low, high = diff.interval()
    assert high == 100.0 and low == pytest.approx(95.0 - 43.03, abs=0.01)
    summary = report.summarize([fake('a', s, ap) for s, ap in enumerate((0.01, 0.0, 0.05))])
    # mean 2.0, half-width 6.6: the interval would start at -4.6; AP cannot
    assert report.format_table(summary).splitlines()[2].split(' | ')[5] == '2.0 [0.0, 8.6]'


def test_tost_shows_equivalence_only_inside_the_margin():
    inside = difference({0: 30.2, 1: 31.0, 2: 29.9, 3: 30.5}, {0: 30.0, 1: 31.1, 2: 30.0, 3: 30.3})
    assert inside.tost_p_value(EQUIVALENCE_MARGIN) < 0.01
    # the TOST p is the larger one-sided p: here the bound at +1.5
    t_high = (inside.mean - 1.5) / inside.se
    assert inside.tost_p_value(1.5) == pytest.approx(max(stats.t.cdf(t_high, 3),
                                                         stats.t.sf((inside.mean + 1.5)
                                                                    / inside.se, 3)))
    noisy = difference({0: 30.0, 1: 33.0, 2: 27.0}, {0: 30.0, 1: 29.0, 2: 31.0})
    assert noisy.tost_p_value(EQUIVALENCE_MARGIN) > 0.05
    assert Difference(0.5, 0.0, 2, 'x').tost_p_value(1.5) == 0.0
    assert Difference(2.0, 0.0, 2, 'x').tost_p_value(1.5) == 1.0


def test_holm_step_down():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    # untested claims (None) are not counted in the family
    assert holm([None, 0.02, None, 0.04]) == [None, pytest.approx(0.04), None,
                                              pytest.approx(0.04)]
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1


@pytest.mark.parametrize('aps,decay,holds,words', [
    ([10.0, 20.0, 29.0, 30.0, 33.0, 33.2], 400, True, '300: 29.0 -> 400: 30.0'),
    ([10.0, 20.0, 25.0, 30.0, 33.0, 33.2], 400, False, '300: 25.0 -> 400: 30.0'),
    # without a decay the last two evaluations are compared
    ([10.0, 20.0, 25.0, 30.0, 33.0, 33.2], None, True, '500: 33.0 -> 600: 33.2'),
    ([10.0], None, None, 'fewer than two evaluations'),
    # near zero AP the relative bound decides: +0.3 is 13 % of 2.45, +0.2 is 4 % of 5.1
    ([1.0, 2.3, 2.6], None, False, '200: 2.3 -> 300: 2.6'),
    ([1.0, 5.0, 5.2], None, True, '200: 5.0 -> 300: 5.2'),
    ([0.0, 0.0, 0.0], None, True, '200: 0.0 -> 300: 0.0'),  # flat at zero is flat
    # from 15 AP up the absolute bound decides: 1.6 is under 10 % of 40 but over 1.5
    ([30.0, 39.2, 40.8], None, False, '200: 39.2 -> 300: 40.8'),
])
def test_plateau_gate(aps, decay, holds, words):
    curve = [dict(iter=100 * (i + 1), AP=ap / 100) for i, ap in enumerate(aps)]
    assert plateau_gate(curve, decay) == (holds, words)


@pytest.mark.parametrize('mean,p_adj,expected', [
    (3.0, 0.01, 'reproduced'),
    (-3.0, 0.01, 'not reproduced: reversed'),
    (3.0, 0.2, 'not established'),
])
def test_ordering_verdicts(mean, p_adj, expected):
    assert ordering_verdict(Difference(mean, 1.0, 2, 'x'), p_adj) == expected


def test_equivalence_verdicts():
    assert equivalence_verdict(Difference(0.1, 0.1, 4, 'x'), 0.01) == 'reproduced (within ±1.5)'
    # far from 0 and beyond the margin even at the simultaneous level
    assert equivalence_verdict(Difference(8.0, 0.5, 4, 'x'), 1.0, 0.99) == \
        'not reproduced: a difference beyond ±1.5'
    assert equivalence_verdict(Difference(1.0, 2.0, 2, 'x'), 0.6) == \
        'not established (not shown within ±1.5)'


def fake(row, seed, ap, curve=None, decay_iter=None):
    curve = curve or [dict(iter=1, AP=ap), dict(iter=2, AP=ap)]
    return dict(row=row, seed=seed, iters=2, metrics=dict(AP=ap, AP_S=ap / 2), curve=curve,
                train_seconds=1.0, total_seconds=1.0, params=10, description={},
                decay_iter=decay_iter)


def rows_with(values: dict) -> list:
    return [fake(row, seed, ap) for row, aps in values.items() for seed, ap in enumerate(aps)]


def test_claims_are_judged_together_with_holm():
    full, within = report.DEFORMABLE_ROW, 'deformable-detr_ms-inputs-k4'
    ss_k1, fpn = 'deformable-detr_ss-k1', 'deformable-detr_ms-attn-k4-fpn'
    summary = report.summarize(rows_with({
        full: (0.40, 0.42, 0.41), within: (0.30, 0.33, 0.31), ss_k1: (0.45, 0.46, 0.44),
        fpn: (0.401, 0.419, 0.411)}))
    results, m = report.check_claims(report.CLAIMS, summary)
    by_text = dict(zip((c.text for c in report.CLAIMS), results))
    assert m == 3  # the ms-inputs-k1 claims have a missing row and are not counted
    attention = by_text['multi-scale attention beats attention within each level (K=4)']
    assert attention['verdict'] == 'reproduced' and attention['p_holm'] >= attention['p']
    assert attention['difference'].startswith('+9.7 [')
    single = by_text['the full model clearly beats single-scale K=1 (close to deformable '
                     'convolution)']
    assert single['verdict'] == 'not reproduced: reversed'
    assert by_text['an FPN neck adds nothing to multi-scale attention']['verdict'] == \
        'reproduced (within ±1.5)'
    assert by_text['... and more so on small objects']['verdict'] == \
        'not run (deformable-detr_ms-inputs-k1 missing)'
    assert sorted(r['p_holm'] for r in results if r['p_holm'] is not None) == \
        pytest.approx(sorted(holm([r['p'] for r in results if r['p'] is not None])))


def test_an_unconverged_row_is_not_judged():
    rising = [dict(iter=100, AP=0.10), dict(iter=200, AP=0.15), dict(iter=300, AP=0.21)]
    runs = [fake('deformable-detr_ms-inputs-k4', s, 0.3) for s in range(3)]
    runs += [fake(report.DEFORMABLE_ROW, s, 0.21, rising, decay_iter=200) for s in range(3)]
    summary = report.summarize(runs)
    assert not summary[report.DEFORMABLE_ROW]['converged']
    results, m = report.check_claims(report.CLAIMS, summary)
    assert m == 0
    assert results[3]['verdict'] == f'not judged: {report.DEFORMABLE_ROW} not converged'
    # the means' difference is shown (21 - 30 points), with no interval, p or verdict
    assert results[3]['difference'] == '-9.0 (mean only)'
    assert results[3]['p'] is None and results[3]['p_holm'] is None
    assert '| no (0/3) |' in report.format_table(summary)
    # the peak-rate trend (before the decay at 200) is reported, not gated
    assert summary[report.DEFORMABLE_ROW]['trends'][0] == (False, '100: 10.0 -> 200: 15.0')

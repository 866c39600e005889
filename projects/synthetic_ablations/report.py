"""The ablation report: per-row table, plateau gates, the paper's orderings judged.

Used by :mod:`projects.synthetic_ablations.ablations`; works on its run records (dicts
with ``row``, ``seed``, ``iters``, ``metrics``, ``curve``, ``train_seconds``,
``total_seconds``, ``params``, ``description`` and optionally ``decay_iter``).
Metrics are COCO AP in [0, 1] (-1 when the split has no object of that
size) and are reported in points (x 100). The statistics are those of
:mod:`projects.synthetic_ablations.intervals`.
"""
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.utils import mkdir_or_exist

from projects.synthetic_ablations.intervals import (
    AP_RANGE,
    CONFIDENCE,
    EQUIVALENCE_MARGIN,
    PLATEAU_RELATIVE_TOLERANCE,
    PLATEAU_TOLERANCE,
    clip,
    difference,
    equivalence_verdict,
    holm,
    ordering_verdict,
    plateau_gate,
    t_half_width,
)
from projects.synthetic_ablations.pretraining import describe_backbones

TABLE_METRICS = ('AP', 'AP50', 'AP_S', 'AP_M', 'AP_L')
DEFORMABLE_ROW = 'deformable-detr_ms-attn-k4'


@dataclass(frozen=True)
class Claim:
    """One ordering of the paper: row ``higher`` beats row ``lower`` in ``metric``.

    Attributes:
        text (str): The claim in words.
        higher (str): Row expected to score higher (for ``no_gain``: the
            row with the addition).
        lower (str): The other row.
        paper (str): The paper's difference in points (and its values).
        metric (str): A key of :data:`TABLE_METRICS`.
        no_gain (bool): The paper finds no gain of ``higher`` over ``lower``
            (judged as equivalence within ± ``EQUIVALENCE_MARGIN``).
    """
    text: str
    higher: str
    lower: str
    paper: str
    metric: str = 'AP'
    no_gain: bool = False


# Paper Table 2 (COCO val, ResNet-50, 50 epochs): every ordering between its rows. Dense
# attention (DETR) is compared by the convergence run (projects.synthetic_ablations.convergence).
CLAIMS = (
    Claim('multi-scale inputs beat a single-scale input (K=1, attention within each level)',
          'deformable-detr_ms-inputs-k1', 'deformable-detr_ss-k1', '+1.7 (41.4 vs 39.7)'),
    Claim('... and more so on small objects', 'deformable-detr_ms-inputs-k1',
          'deformable-detr_ss-k1', '+2.9 (24.1 vs 21.2)', metric='AP_S'),
    Claim('K=4 sampling points beat K=1 (multi-scale inputs, attention within each level)',
          'deformable-detr_ms-inputs-k4', 'deformable-detr_ms-inputs-k1', '+0.9 (42.3 vs 41.4)'),
    Claim('multi-scale attention beats attention within each level (K=4)',
          DEFORMABLE_ROW, 'deformable-detr_ms-inputs-k4', '+1.5 (43.8 vs 42.3)'),
    Claim('an FPN neck adds nothing to multi-scale attention',
          'deformable-detr_ms-attn-k4-fpn', DEFORMABLE_ROW, '+0.0 (43.8 vs 43.8)', no_gain=True),
    Claim('the full model clearly beats single-scale K=1 (close to deformable convolution)',
          DEFORMABLE_ROW, 'deformable-detr_ss-k1', '+4.1 (43.8 vs 39.7)'),
)


def _curve_values(runs: Sequence[dict], iters: List[int], metric: str) -> np.ndarray:
    """(seeds, evaluations) values in points, NaN where missing or -1."""
    return np.array([[next((100 * p[metric] if p.get(metric, -1) >= 0 else np.nan
                            for p in r['curve'] if p['iter'] == i), np.nan) for i in iters]
                     for r in runs])


def summarize(runs: Sequence[dict]) -> Dict[str, dict]:
    """Per row (in the order of ``runs``): values over seeds and plateau gates.

    Returns:
        dict[str, dict]: row -> ``description``, ``seeds``, ``runs``,
        ``values`` (metric -> per-seed array in points, NaN where COCO gave
        -1), ``train_seconds`` and ``params`` (per-seed lists), ``gates``
        (per seed: :func:`~projects.synthetic_ablations.intervals.plateau_gate`),
        ``trends`` (per seed: the gate on the last two evaluations before
        the decay, None without one), ``converged`` (every gate holds) and
        ``curve`` (``iters`` array,
        ``AP`` / ``AP_S`` arrays of shape (seeds, evals)).
    """
    summary: Dict[str, dict] = {}
    for run in runs:
        row = summary.setdefault(run['row'], dict(description=run.get('description', {}),
                                                  seeds=[], runs=[]))
        row['seeds'].append(run['seed'])
        row['runs'].append(run)
    for row in summary.values():
        row['values'] = {
            m: np.array([100 * r['metrics'][m] if r['metrics'].get(m, -1) >= 0 else np.nan
                         for r in row['runs']]) for m in TABLE_METRICS}
        row['train_seconds'] = [r['train_seconds'] for r in row['runs']]
        row['params'] = [r['params'] for r in row['runs']]
        row['gates'] = [plateau_gate(r['curve']) for r in row['runs']]
        row['trends'] = [plateau_gate(r['curve'], r['decay_iter']) if r.get('decay_iter')
                         else None for r in row['runs']]
        row['converged'] = all(holds for holds, _ in row['gates'])
        iters = sorted({point['iter'] for r in row['runs'] for point in r['curve']})
        row['curve'] = dict(iters=np.array(iters))
        for m in ('AP', 'AP_S'):
            row['curve'][m] = _curve_values(row['runs'], iters, m)
    return summary


def _mean_interval(values: np.ndarray) -> str:
    """``mean [low, high]`` over seeds, the 95 % t-interval clipped to [0, 100]."""
    values = values[~np.isnan(values)]
    if not len(values):
        return 'n/a'
    if len(values) == 1:
        return f'{values[0]:.1f}'
    half = t_half_width(values)
    low, high = clip(values.mean() - half, values.mean() + half, AP_RANGE)
    return f'{values.mean():.1f} [{low:.1f}, {high:.1f}]'


def format_table(summary: Dict[str, dict]) -> str:
    """Markdown table: one line per row, mean [95 % interval] over seeds, plateau gates."""
    head = ['row', 'levels', 'attention', 'K', 'neck', *TABLE_METRICS, 'plateau', 'train s',
            'params', 'seeds']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, row in summary.items():
        desc = row['description']
        passed = sum(bool(holds) for holds, _ in row['gates'])
        cells = [name, desc.get('levels', ''), desc.get('attention', ''), desc.get('K', ''),
                 desc.get('neck', '')]
        cells += [_mean_interval(row['values'][m]) for m in TABLE_METRICS]
        cells += [f'{"yes" if row["converged"] else "no"} ({passed}/{len(row["gates"])})',
                  f'{np.mean(row["train_seconds"]):.0f}', f'{row["params"][0] / 1e6:.2f} M',
                  str(len(row['seeds']))]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _claim_difference(claim: Claim, summary: Dict[str, dict]):
    """(Difference, None) for a claim that can be judged, else (None or the
    difference of an unconverged pair, the reason)."""
    missing = [r for r in (claim.higher, claim.lower) if r not in summary]
    if missing:
        return None, f'not run ({", ".join(missing)} missing)'
    higher, lower = summary[claim.higher], summary[claim.lower]
    diff = difference(dict(zip(higher['seeds'], higher['values'][claim.metric])),
                      dict(zip(lower['seeds'], lower['values'][claim.metric])))
    if diff is None:
        return None, f'not measurable ({claim.metric} undefined)'
    unconverged = [r for r in (claim.higher, claim.lower) if not summary[r]['converged']]
    if unconverged:
        return diff, f'not judged: {", ".join(unconverged)} not converged'
    return diff, None


def check_claims(claims: Sequence[Claim], summary: Dict[str, dict]) -> Tuple[List[dict], int]:
    """Judge the claims together: tests, Holm's adjustment over them, verdicts.

    A claim whose rows are missing or not converged is not tested and is
    left out of the family (for an unconverged pair the difference of the
    means is shown, marked "mean only", without interval or verdict).
    Orderings: two-sided t-test of "no difference"; equivalence: TOST
    within ± ``EQUIVALENCE_MARGIN``.

    Returns:
        tuple[list[dict], int]: per claim ``difference`` (``mean [low,
        high]`` at the simultaneous level, or ``-``), ``method``, ``p``
        (raw), ``p_holm`` and ``verdict``; and m, the number of claims
        tested (the family of the correction).
    """
    diffs = [_claim_difference(claim, summary) for claim in claims]
    raw = [None if diff is None or reason is not None else
           (diff.tost_p_value(EQUIVALENCE_MARGIN) if claim.no_gain else diff.p_value())
           for claim, (diff, reason) in zip(claims, diffs)]
    m = sum(p is not None for p in raw)
    adjusted = holm(raw)
    confidence = 1 - (1 - CONFIDENCE) / max(m, 1)  # Bonferroni-simultaneous intervals
    results = []
    for claim, (diff, reason), p, p_adj in zip(claims, diffs, raw, adjusted):
        if reason is not None:  # not tested; an unconverged pair's mean difference is shown
            shown = '-' if diff is None else f'{diff.mean:+.1f} (mean only)'
            results.append(dict(difference=shown, method='-', p=None, p_holm=None,
                                verdict=reason))
            continue
        judged = equivalence_verdict(diff, p_adj, confidence) if claim.no_gain else \
            ordering_verdict(diff, p_adj)
        results.append(dict(difference=diff.text(confidence), method=diff.method, p=p,
                            p_holm=p_adj, verdict=judged))
    return results, m


def _p_text(p: Optional[float]) -> str:
    return '-' if p is None else ('<0.001' if p < 1e-3 else f'{p:.3f}')


def _runs_table(summary: Dict[str, dict]) -> str:
    head = ['row', 'seed', *TABLE_METRICS, 'iterations', 'AP at each evaluation (iteration: AP)',
            'plateau gate', 'peak-rate trend', 's/it', 'train s', 'total s', 'cache hits']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, row in summary.items():
        for index, run in enumerate(row['runs']):
            values = [row['values'][m][index] for m in TABLE_METRICS]
            curve = ', '.join(f'{p["iter"]}: {100 * p["AP"]:.1f}' for p in run['curve'])
            holds, words = row['gates'][index]
            trend = row['trends'][index]
            cache = run.get('cache') or {}
            hits = cache.get('hits', 0) / max(cache.get('hits', 0) + cache.get('misses', 0), 1)
            cells = [name, str(run['seed'])]
            cells += ['n/a' if np.isnan(v) else f'{v:.1f}' for v in values]
            extra = _extra_iters(run)
            cells += [f'{run["iters"]}' + (f' (+{extra})' if extra else ''), curve,
                      f'{"pass" if holds else "FAIL"} ({words})',
                      '-' if trend is None else
                      f'{"flat" if trend[0] else "rising or falling"} ({trend[1]})',
                      f'{run["train_seconds"] / max(run["iters"], 1):.3f}',
                      f'{run["train_seconds"]:.0f}', f'{run["total_seconds"]:.0f}',
                      f'{100 * hits:.0f} %' if cache else '-']
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _claims_section(summary: Dict[str, dict]) -> List[str]:
    results, m = check_claims(CLAIMS, summary)
    lines = [
        "## The paper's orderings", '',
        f'{m} of the {len(CLAIMS)} claims are tested together (a claim with a missing or '
        'unconverged row is not judged and not counted). Difference = first row minus second '
        'row, in points, with its Bonferroni-simultaneous interval (each at '
        f'{100 * (1 - (1 - CONFIDENCE) / max(m, 1)):.2f} %, clipped to [-100, 100]): paired by '
        'seed when the rows share two seeds or more, Welch otherwise. p: two-sided t-test of '
        f'"no difference" (orderings) or TOST within ±{EQUIVALENCE_MARGIN:g} AP (the FPN '
        "claim); p Holm: Holm's step-down adjustment over the tested claims. Verdict at "
        f'adjusted p <= {1 - CONFIDENCE:.2f}: reproduced (the paper\'s sign), not reproduced '
        '(the opposite sign), not established otherwise.', '',
        '| claim | rows | metric | paper | here [simultaneous interval] | from | p | p Holm '
        '| verdict |', '|---|---|---|---|---|---|---|---|---|']
    for claim, result in zip(CLAIMS, results):
        lines.append(f'| {claim.text} | {claim.higher} vs {claim.lower} | {claim.metric} | '
                     f'{claim.paper} | {result["difference"]} | {result["method"]} | '
                     f'{_p_text(result["p"])} | {_p_text(result["p_holm"])} | '
                     f'{result["verdict"]} |')
    return lines


def _extra_iters(run: dict) -> int:
    """Iterations a run trained beyond its schedule (PlateauExtensionHook)."""
    return run['iters'] - run.get('scheduled_iters', run['iters'])


def _extension_text(runs: Sequence[dict]) -> str:
    """What the runs' ``PlateauExtensionHook`` did, one sentence ('' without the hook)."""
    records = [r['extension'] for r in runs if r.get('extension')]
    if not records:
        return ''
    # records written before the hook reported its budget lack the fraction
    fractions = [r['max_extra_fraction'] for r in records if 'max_extra_fraction' in r]
    budget = f'{100 * max(fractions):g} % more iterations' if fractions else 'its extra iterations'
    extended = sum(_extra_iters(r) > 0 for r in runs)
    return (f'A run whose gate failed at the end of the schedule trained on at the decayed '
            f'rate, one evaluation interval at a time, until it held or {budget} '
            f'were spent (PlateauExtensionHook): {extended} of {len(runs)} runs were extended '
            f'("iterations" below). ')


def write_report(runs: Sequence[dict], budget: dict, out_file: str,
                 times: Optional[str] = None) -> Tuple[str, str]:
    """Write ``results.md``: the table, the paper's orderings, every run, the times.

    Args:
        runs (Sequence[dict]): Run records (module docstring).
        budget (dict): ``max_iters``, ``batch_size``, ``seeds``, ``synthetic_data``.
        out_file (str): Markdown file to write.
        times (str, optional): The measured times, one line.

    Returns:
        tuple[str, str]: ``out_file`` and the main table.
    """
    summary = summarize(runs)
    table = format_table(summary)
    lines = [
        '# Deformable DETR ablations on synthetic shapes', '',
        f'Every run: {budget["max_iters"]} iterations x batch {budget["batch_size"]}, '
        f'seeds {budget["seeds"]}; data: `{budget["synthetic_data"]}`. '
        f'{_extension_text(runs)}COCO bbox AP in points '
        '(x 100) on the validation split, mean [95 % t-interval over seeds, clipped to '
        '[0, 100]] (the value alone for one seed); n/a: no object of that size. Plateau: '
        f'the last two evaluations within ±{PLATEAU_TOLERANCE:g} AP and '
        f'±{100 * PLATEAU_RELATIVE_TOLERANCE:g} % of their mean in every seed (passed / '
        'runs); a row that fails is not judged. "Every run" also gives the peak-rate trend, '
        'the same comparison on the last two evaluations before the learning-rate decay '
        '(not a gate: it says whether the rows were still climbing when the rate dropped). '
        '"train s": seconds of training iterations (data loading included, evaluation '
        'excluded), mean over seeds.', '', table, '']
    lines += _claims_section(summary)
    lines += ['', '## Every run', '', _runs_table(summary), '']
    backbones = describe_backbones(budget.get('pretrained_backbones', {}))
    if backbones:
        lines += [backbones, '']
    if times:
        lines += [f'Times: {times}', '']
    mkdir_or_exist(osp.dirname(osp.abspath(out_file)))
    with open(out_file, 'w') as f:
        f.write('\n'.join(lines))
    return out_file, table


def claims_rows() -> List[str]:
    """Every row named by :data:`CLAIMS` (for checks that the configs exist)."""
    return sorted({c.higher for c in CLAIMS} | {c.lower for c in CLAIMS})

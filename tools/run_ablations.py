"""Train the ablation rows of Deformable DETR for the same budget and compare them.

Writes ``results.md`` (table, the paper's orderings checked, every run) and
``curves.png`` (AP / AP_S against iteration) under ``--work-dir``. See
:mod:`mmdeform.analysis.ablations` and ``python tools/run_ablations.py --help``.
"""
import os

# OpenMP threads that wait for work sleep instead of spinning (see tools/demo.py).
# Must be set before torch loads; the runs' processes inherit it.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from mmdeform.analysis.ablations import main  # noqa: E402

if __name__ == '__main__':
    main()

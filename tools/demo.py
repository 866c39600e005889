"""``make demo``: generate the synthetic shapes data, train, evaluate, plot.

Ends with ``demo: bbox mAP=<value> in <seconds> s; outputs in <dir>``. See
:mod:`mmdeform.demo` and ``python tools/demo.py --help``.
"""
import os

# OpenMP threads that wait for work sleep instead of spinning. On a busy
# 2-core machine spinning threads make each step up to ~2x slower; on an
# idle one sleeping costs a few percent. Must be set before torch loads.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from mmdeform.demo import main  # noqa: E402

if __name__ == '__main__':
    main()

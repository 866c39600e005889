"""``make demo``: generate the synthetic shapes data, train, evaluate, plot.

Ends with ``demo: bbox mAP=<value> in <seconds> s; outputs in <dir>``. See
:mod:`mmdeform.demo` and ``python tools/demo.py --help``.
"""
from mmdeform.demo import main

if __name__ == '__main__':
    main()

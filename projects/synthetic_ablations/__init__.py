"""Deformable DETR's paper experiments re-run on synthetic shapes (``make demo``, the ablation
rows, the convergence pair): the configs and the machinery that trains and reports them.

A project over the library: it imports :mod:`mmdeform`, never the reverse. The tools
``tools/demo.py``, ``tools/run_ablations.py`` and ``tools/run_convergence.py`` run it.
"""
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'
DEMO_CONFIG = CONFIG_DIR / 'deformable-detr-refine-twostage_r18_1xb8-800i_synthetic.py'
ABLATION_DIR = CONFIG_DIR / 'ablations'
CONVERGENCE_DIR = CONFIG_DIR / 'convergence'

"""Checkpoint converters: the official Deformable DETR and HuggingFace transformers.

``official`` and ``hf`` read foreign state_dicts into mmdeform names,
``hf_export`` writes an mmdeform model as a transformers folder. They sit
above ``models`` (they build models to check shapes) and below ``apis``.
Nothing here imports transformers at import time.
"""

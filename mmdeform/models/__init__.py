"""Model components of mmdeform; importing this registers all of them."""
from . import (backbones, data_preprocessors, decoders, detectors, encoders, heads,  # noqa: F401
               layers, losses, necks, positional_encodings, query_generators, task_modules)

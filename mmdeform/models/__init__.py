"""Model components of mmdeform; importing this registers all of them."""
from . import (  # noqa: F401
               backbones,
               data_preprocessors,
               decoders,
               detectors,
               encoders,
               heads,
               layers,
               losses,
               necks,
               positional_encodings,
               query_generators,
               task_modules,
)

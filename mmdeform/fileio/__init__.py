"""The ground floor of file I/O: atomic writes, weights-only checkpoint reads and the
one checked state-dict loader. Imports nothing of mmdeform above it."""
from .atomic_save import (
    check_output_folder,
    remove_stale_temporaries,
    save_checkpoint_atomic,
    staged_folder,
    torch_save_atomic,
    write_atomic,
    write_text_atomic,
)
from .state_dict import (
    CheckpointMismatchError,
    StateDictDiff,
    load_model_weights,
    load_state_dict_checked,
    state_dict_of,
)
from .weights_only import (
    CheckpointFormatError,
    CheckpointRefusedError,
    checkpoint_safe_globals,
    load_weights_only,
    read_checkpoint,
)

__all__ = ['CheckpointFormatError', 'CheckpointMismatchError', 'CheckpointRefusedError',
           'StateDictDiff', 'check_output_folder', 'checkpoint_safe_globals', 'load_model_weights',
           'load_state_dict_checked', 'load_weights_only', 'read_checkpoint',
           'remove_stale_temporaries', 'save_checkpoint_atomic', 'staged_folder', 'state_dict_of',
           'torch_save_atomic', 'write_atomic', 'write_text_atomic']

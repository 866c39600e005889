"""``--cfg-options KEY=VALUE ...``: parsed with clear errors, applied only to
keys the config has, and the hook types of a config checked by name.

Every tool that takes ``--cfg-options`` uses :class:`CfgOptionsAction` and
:func:`apply_cfg_options` (``tools/train.py``, ``tools/test.py``, the tools
built on :func:`mmdeform.apis.add_model_arguments`, ``tools/browse_dataset.py``).

Rules of :func:`apply_cfg_options` for a key ``a.b.c``:

- every part but the last must exist (a dict key, or an index into a list);
- the last part overrides an existing key, or adds a new key to an existing
  dict unless its name is close to an existing sibling (a likely typo, e.g.
  ``num_clases`` beside ``num_classes``);
- at the top level only existing keys and the Runner's own arguments
  (``randomness``, ``auto_scale_lr``, ...) are accepted, with everything below
  a Runner argument that the config does not set.

A key that breaks a rule raises ``KeyError`` naming the closest existing key
(:mod:`difflib`); nothing is silently added (mmengine's ``merge_from_dict``
alone adds any misspelled key as a new, unused entry).
"""
import difflib
import inspect
from typing import Any, Dict, List, Optional, Sequence

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

# A new key this close to an existing sibling is taken for a typo of it.
_TYPO_CUTOFF = 0.85
_SUGGEST_CUTOFF = 0.6


# Top-level keys read outside the Runner's constructor: by mmengine
# (``runner_type``, ``find_unused_parameters`` of the default DDP wrapper) or
# by :mod:`mmdeform.engine.launch`.
_OTHER_TOP_LEVEL_KEYS = ('runner_type', 'find_unused_parameters')


def runner_keys() -> List[str]:
    """Top-level config keys the Runner reads (its constructor's arguments and
    a few more), which a config may leave unset."""
    params = inspect.signature(Runner.__init__).parameters
    return [name for name in params if name != 'self'] + list(_OTHER_TOP_LEVEL_KEYS)


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` (``KEY=VALUE`` pairs, lists and tuples as
    values) that rejects a pair without ``=`` or without a key with a usage
    message instead of a traceback."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        for pair in values:
            key = pair.split('=', 1)[0]
            if '=' not in pair:
                parser.error(f'{option_string} {pair!r}: expected KEY=VALUE (e.g. '
                             f'train_cfg.max_epochs=12); {pair!r} has no "="')
            if not key or any(not part for part in key.split('.')):
                parser.error(f'{option_string} {pair!r}: the key before "=" is empty or has an '
                             'empty part; expected KEY=VALUE with KEY like '
                             'optim_wrapper.optimizer.lr')
        super().__call__(parser, namespace, values, option_string)


def _closest(name: str, candidates: Sequence[str]) -> Optional[str]:
    match = difflib.get_close_matches(name, [str(c) for c in candidates], n=1,
                                      cutoff=_SUGGEST_CUTOFF)
    return match[0] if match else None


def _unknown_key(key: str, path: List[str], part: str, candidates: Sequence[str],
                 source: str) -> KeyError:
    where = '.'.join(path) if path else 'the top level'
    close = _closest(part, candidates)
    advice = (f"did you mean '{'.'.join(path + [close])}'?" if close
              else f'keys at {where}: {[str(c) for c in candidates][:30]}')
    return KeyError(f"{source} {key!r}: the config has no '{'.'.join(path + [part])}'; {advice}")


def check_cfg_option_key(cfg_dict: dict, key: str, source: str = '--cfg-options') -> None:
    """Check one dotted ``key`` against the config (module doc's rules).

    Args:
        cfg_dict (dict): The config as plain containers.
        key (str): Dotted path, list items by index (``param_scheduler.0.end``).
        source (str): Named in the error.

    Raises:
        KeyError: The key breaks a rule; the message names the closest key.
    """
    node: Any = cfg_dict
    parts = key.split('.')
    path: List[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                raise KeyError(f"{source} {key!r}: '{'.'.join(path)}' is a list of {len(node)} "
                               f"items; '{part}' is not an index of it")
            node = node[int(part)]
        elif not isinstance(node, dict):
            raise KeyError(f"{source} {key!r}: '{'.'.join(path)}' is a "
                           f"{type(node).__name__}, not a dict; it has no '{part}'")
        elif part in node:
            node = node[part]
        elif not path and part in runner_keys():
            return  # a Runner argument the config leaves at its default
        else:
            candidates = sorted(set(node) | set(runner_keys() if not path else []), key=str)
            typo = difflib.get_close_matches(part, [str(c) for c in node], n=1,
                                             cutoff=_TYPO_CUTOFF)
            if not last or not path or typo:
                raise _unknown_key(key, path, part, candidates, source)
            return  # a new key in an existing dict
        path.append(part)


def apply_cfg_options(cfg: Config, options: Optional[Dict[str, Any]],
                      source: str = '--cfg-options') -> Config:
    """Check every key of ``options`` (:func:`check_cfg_option_key`), then
    merge them into ``cfg`` (``Config.merge_from_dict``). Returns ``cfg``."""
    if not options:
        return cfg
    cfg_dict = cfg.to_dict()
    for key in options:
        check_cfg_option_key(cfg_dict, key, source)
    cfg.merge_from_dict(options)
    return cfg


def _registered_hooks() -> List[str]:
    from mmengine.registry import HOOKS as MMENGINE_HOOKS

    from mmdeform.registry import HOOKS
    return sorted(set(HOOKS.module_dict) | set(MMENGINE_HOOKS.module_dict))


def check_hook_types(cfg: Config) -> None:
    """Every ``type`` in ``default_hooks`` and ``custom_hooks`` must be a
    registered hook (mmdeform's or mmengine's).

    Raises:
        KeyError: names the hook entry (``default_hooks.checkpoint``), its
            type and the closest registered hook.
    """
    import mmdeform.engine.hooks  # noqa: F401  registers our hooks
    entries = [(f'default_hooks.{name}', hook)
               for name, hook in (cfg.get('default_hooks') or {}).items()]
    entries += [(f'custom_hooks.{i}', hook) for i, hook in enumerate(cfg.get('custom_hooks') or [])]
    known = _registered_hooks()
    for where, hook in entries:
        hook_type = hook.get('type') if isinstance(hook, dict) else None
        if isinstance(hook_type, str) and hook_type.split('.')[-1] not in known:
            close = _closest(hook_type, known)
            advice = f"; did you mean '{close}'?" if close else f'; registered hooks: {known}'
            raise KeyError(f"{where}: hook type '{hook_type}' is not registered{advice}")

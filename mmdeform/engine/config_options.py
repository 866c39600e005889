"""``--cfg-options KEY=VALUE ...``: parsed with clear errors, applied only to
keys the config has, and the hook types of a config checked by name.

Every tool that takes ``--cfg-options`` uses :class:`CfgOptionsAction` and
:func:`apply_cfg_options` (``tools/train.py``, ``tools/test.py``, the tools
built on :func:`mmdeform.apis.add_model_arguments`, ``tools/browse_dataset.py``).

Rules of :func:`apply_cfg_options` for a key ``a.b.c``:

- every part but the last must exist (a dict key, or an index into a list);
- the last part overrides an existing key, or adds a new key to an existing
  dict ``a.b``:

  - if ``a.b`` has a ``type`` (as the rest of the command line leaves it:
    ``--amp`` turns ``OptimWrapper`` into ``DeviceAmpOptimWrapper``), when
    that registered class's constructor takes ``c``
    (:mod:`mmdeform.engine.registered_args`), e.g.
    ``optim_wrapper.dtype=bfloat16`` with ``--amp`` or
    ``model.backbone.init_cfg.prefix=backbone.``;
  - if ``a.b`` has no ``type`` (or one no registry knows), unless ``c`` is
    close to an existing sibling (a likely typo, e.g. ``num_clases`` beside
    ``num_classes``);
- at the top level only existing keys and the Runner's own arguments
  (``randomness``, ``auto_scale_lr``, ...) are accepted, with everything below
  a Runner argument that the config does not set.

A key that breaks a rule raises ``KeyError`` naming the closest existing key
(:mod:`difflib`) and, under a ``type``, the arguments it takes; nothing is
silently added (mmengine's ``merge_from_dict`` alone adds any misspelled key
as a new, unused entry).
"""
import difflib
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from .registered_args import accepted_arguments

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


def _find_new_key(cfg_dict: dict, key: str, source: str) -> Optional[Tuple[List[str], dict]]:
    """Walk ``key`` through ``cfg_dict``.

    Returns:
        tuple | None: None when the key exists, or is a Runner argument (or
        below one) the config leaves unset; else (the path of the existing
        dict that lacks the last part, that dict).

    Raises:
        KeyError: a part but the last is missing, a list index out of range,
            a part below a value that is not a dict, or a new top-level key.
    """
    node: Any = cfg_dict
    parts = key.split('.')
    path: List[str] = []
    for i, part in enumerate(parts):
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
            return None  # a Runner argument the config leaves at its default
        elif i < len(parts) - 1 or not path:
            candidates = sorted(set(node) | set(runner_keys() if not path else []), key=str)
            raise _unknown_key(key, path, part, candidates, source)
        else:
            return path, node
        path.append(part)
    return None


def _lookup(cfg_dict: dict, path: Sequence[str]) -> Any:
    """The value at ``path`` (dict keys, list indices), None where there is none."""
    node: Any = cfg_dict
    for part in path:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def check_cfg_option_key(cfg_dict: dict, key: str, source: str = '--cfg-options',
                         final_dict: Optional[dict] = None) -> None:
    """Check one dotted ``key`` against the config (module doc's rules).

    Args:
        cfg_dict (dict): The config as written, as plain containers.
        key (str): Dotted path, list items by index (``param_scheduler.0.end``).
        source (str): Named in the error.
        final_dict (dict, optional): The config after every command-line edit
            (``--cfg-options``, ``--amp``, ...): the ``type`` that decides a
            new key is read there. Default: ``cfg_dict``.

    Raises:
        KeyError: The key breaks a rule; the message names the closest key
            (and the accepted arguments of a typed dict).
    """
    found = _find_new_key(cfg_dict, key, source)
    if found is None:
        return
    path, siblings = found
    part = key.split('.')[-1]
    parent = _lookup(cfg_dict if final_dict is None else final_dict, path)
    type_name = parent.get('type') if isinstance(parent, dict) else None
    accepted = None if type_name is None else accepted_arguments(type_name)
    if accepted is None:  # no type, or one no registry knows: only typos are refused
        if difflib.get_close_matches(part, [str(c) for c in siblings], n=1, cutoff=_TYPO_CUTOFF):
            raise _unknown_key(key, path, part, sorted(siblings, key=str), source)
        return
    label, names = accepted
    if part in names:
        return
    where = '.'.join(path)
    close = _closest(part, sorted(set(map(str, siblings)) | names))
    advice = f"did you mean '{where}.{close}'? " if close else ''
    others = sorted(names - set(siblings) - {'_scope_'})
    raise KeyError(f"{source} {key!r}: the config has no '{where}.{part}' and {where}'s type "
                   f"{label} takes no argument '{part}'; {advice}{label} takes "
                   f"{others} besides the keys the config sets "
                   f"({sorted(map(str, siblings))})")


def apply_cfg_options(cfg: Config, options: Optional[Dict[str, Any]],
                      source: str = '--cfg-options',
                      edit: Optional[Callable[[Config], None]] = None) -> Config:
    """Merge ``options`` into ``cfg``, apply ``edit``, then check every key.

    The order is mmengine's (``tools/train.py``: ``--cfg-options`` merged,
    then ``--amp`` and ``--auto-scale-lr`` applied), and the keys are judged
    by the result: ``--amp --cfg-options optim_wrapper.dtype=bfloat16`` is
    valid because ``--amp`` makes the wrapper one that takes ``dtype``.

    Args:
        cfg (Config): Changed in place and returned.
        options (dict, optional): ``{dotted key: value}``.
        source (str): Named in errors.
        edit (callable, optional): The command line's other changes to the
            config, ``edit(cfg)`` (also run without options).

    Raises:
        KeyError: a key breaks a rule (:func:`check_cfg_option_key`).
    """
    options = options or {}
    written = cfg.to_dict()
    # the structural errors first: merge_from_dict fails on them less clearly
    new_keys = [key for key in options if _find_new_key(written, key, source) is not None]
    if options:
        cfg.merge_from_dict(options)
    if edit is not None:
        edit(cfg)
    final = cfg.to_dict() if new_keys else written
    for key in new_keys:
        check_cfg_option_key(written, key, source, final_dict=final)
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

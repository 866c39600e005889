"""The keyword arguments a config dict's ``type`` accepts, for ``--cfg-options``.

A config dict ``dict(type='X', ...)`` is built by a registry as ``X(**rest)``
(mmengine's ``build_from_cfg``), so a key that the dict does not have yet is
valid exactly when ``X``'s constructor takes it. :func:`accepted_arguments`
finds ``X`` in mmdeform's registries (which fall back to mmengine's) and reads
the names off the constructor's signature:

- named parameters (positional-or-keyword and keyword-only) are accepted;
- ``**kwargs`` alone accepts nothing: the search follows it to the next
  class in the method resolution order only when ``__init__`` visibly passes
  it on (``super().__init__(..., **kwargs)``, read from the source), and
  stops at the first constructor that does not;
- the few keys a builder pops before calling the constructor are added
  (``_scope_`` everywhere, ``priority`` of hooks, ``convert_to_iter_based``
  of parameter schedulers, ``constructor`` and ``paramwise_cfg`` of optimizer
  wrappers).
"""
import ast
import inspect
import textwrap
from typing import Any, Callable, List, Optional, Set, Tuple

from mmengine.registry import Registry

# Keys popped by mmengine's builders before the constructor sees the rest, by
# registry name ('_' and ' ' are the same: mmengine's root registries use both).
_BUILDER_KEYS = {
    'hook': ('priority', ),
    'parameter scheduler': ('convert_to_iter_based', ),
    'optim wrapper': ('constructor', 'paramwise_cfg'),
}
_EVERY_BUILDER_KEYS = ('_scope_', )
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _registries() -> List[Registry]:
    from mmdeform import registry
    return [obj for obj in vars(registry).values()
            if isinstance(obj, Registry) and obj.parent is not None]


def find_registered(type_name: Any) -> List[Tuple[Callable, str]]:
    """The (class or function, registry name) pairs a ``type`` value names.

    Args:
        type_name (str | type): A registered name, possibly with a scope
            (``'mmengine.AdamW'``), or the class itself.

    Returns:
        list[tuple]: One pair per registry that knows the name (empty when
        none does). A class given directly comes back with registry name ''.
    """
    if callable(type_name):
        return [(type_name, '')]
    if not isinstance(type_name, str):
        return []
    found = []
    for reg in _registries():
        try:
            obj = reg.get(type_name)
        except Exception:  # an unknown scope prefix, a location that fails to import
            obj = None
        if obj is not None and all(obj is not other for other, _ in found):
            found.append((obj, reg.name))
    return found


def _named_parameters(func: Callable, bound: bool) -> Tuple[List[str], Optional[str]]:
    """(named parameters, name of ``**kwargs`` or None) of ``func``; ``bound``
    drops the first parameter (``self`` of an ``__init__``)."""
    params = list(inspect.signature(func).parameters.values())[1 if bound else 0:]
    var_kw = next((p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    return [p.name for p in params if p.kind in _NAMED], var_kw


def passes_kwargs_to_base(init: Callable, var_kw: str) -> bool:
    """Whether ``init``'s source calls ``super(...).__init__(..., **<var_kw>)``.

    Source that cannot be read (a C extension, an interactive definition)
    counts as not passing them on.
    """
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    except (OSError, TypeError, SyntaxError):
        return False
    for node in ast.walk(tree):
        func = getattr(node, 'func', None)
        if (isinstance(node, ast.Call) and isinstance(func, ast.Attribute)
                and func.attr == '__init__' and isinstance(func.value, ast.Call)
                and getattr(func.value.func, 'id', None) == 'super'
                and any(kw.arg is None and getattr(kw.value, 'id', None) == var_kw
                        for kw in node.keywords)):
            return True
    return False


def constructor_arguments(obj: Callable) -> Set[str]:
    """Keyword names ``obj(**kwargs)`` accepts (module doc's rules).

    Args:
        obj (type | callable): A class (its ``__init__`` chain is read) or a
            registered function.

    Returns:
        set[str]: Names; empty when nothing can be read.
    """
    try:
        if not inspect.isclass(obj):
            return set(_named_parameters(obj, bound=False)[0])
        names: Set[str] = set()
        for klass in obj.__mro__:
            init = vars(klass).get('__init__')
            if init is None:
                continue
            if klass is object:
                break
            params, var_kw = _named_parameters(init, bound=True)
            names.update(params)
            if var_kw is None or not passes_kwargs_to_base(init, var_kw):
                break
        return names
    except (TypeError, ValueError):  # no signature (a builtin)
        return set()


def accepted_arguments(type_name: Any) -> Optional[Tuple[str, Set[str]]]:
    """What a config dict with this ``type`` may contain besides ``type``.

    Args:
        type_name (str | type): The dict's ``type``.

    Returns:
        tuple | None: (the class name(s) for messages, accepted keys: the
        constructors' arguments plus the builders' own keys); None when no
        registry knows ``type_name``.
    """
    found = find_registered(type_name)
    if not found:
        return None
    names = set(_EVERY_BUILDER_KEYS)
    for obj, registry_name in found:
        names |= constructor_arguments(obj)
        names.update(_BUILDER_KEYS.get(registry_name.replace('_', ' '), ()))
    label = ' / '.join(getattr(obj, '__name__', str(obj)) for obj, _ in found)
    return label, names

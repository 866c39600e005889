"""The package's floors: no module imports from a higher floor (README, "Layout").

Read from the source with ``ast``, function-local imports included, so a cycle
cannot hide inside a function. A new subpackage must be given a floor here.
"""
import ast
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'mmdeform'
# lowest first; a subpackage imports only from lower floors (and from itself)
FLOORS = (
    ('registry', 'structures', 'fileio'),
    ('ops',),
    ('models', 'datasets'),
    ('evaluation', 'visualization', 'converters'),
    ('engine',),
    ('apis',),
    ('analysis', 'testing'),
)
FLOOR_OF = {name: level for level, names in enumerate(FLOORS) for name in names}
# what the library never imports: the checkout's projects, scripts, tools and tests
OUTSIDE = ('projects', 'gpu_check', 'tools', 'tests', 'conftest')


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(source: str, package: str) -> Iterator[Tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, a module of ``package``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module
            if node.level:
                parts = package.split('.')
                base = parts[:len(parts) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module else []))
            yield node.lineno, module
            if module == 'mmdeform':  # from mmdeform import models
                for alias in node.names:
                    yield node.lineno, f'mmdeform.{alias.name}'


def subpackage(module: str) -> str:
    """``models`` for ``mmdeform.models.heads``; '' for ``mmdeform`` itself; ``ops`` for
    the compiled op library ``mmdeform._C``."""
    parts = module.split('.')
    name = parts[1] if len(parts) > 1 else ''
    return 'ops' if name == '_C' else name


def violations(source: str, name: str, is_package: bool = False) -> List[str]:
    """The imports of module ``name`` that go up a floor or leave the package."""
    package = name if is_package else name.rpartition('.')[0]
    floor = subpackage(name)
    wrong = []
    for line, module in imported_modules(source, package):
        top = module.split('.')[0]
        if top in OUTSIDE:
            wrong.append(f'line {line}: {module} is outside the package')
        target = subpackage(module) if top == 'mmdeform' else ''
        if floor and target and target != floor and FLOOR_OF[target] >= FLOOR_OF[floor]:
            wrong.append(f'line {line}: {floor} (floor {FLOOR_OF[floor]}) imports {module} '
                         f'(floor {FLOOR_OF[target]})')
    return wrong


MODULES = sorted(PACKAGE.rglob('*.py'))


def test_every_subpackage_has_a_floor():
    names = {subpackage(module_name(path)) for path in MODULES} - {''}
    assert names <= set(FLOOR_OF), f'give these a floor: {sorted(names - set(FLOOR_OF))}'


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_down_the_floors(path):
    wrong = violations(path.read_text(), module_name(path), path.name == '__init__.py')
    assert not wrong, f'{path.relative_to(PACKAGE.parent)}: ' + '; '.join(wrong)


@pytest.mark.parametrize('source, expected', [
    # the old hidden cycle: a function-local import from models up into engine
    ('def f():\n    from mmdeform.engine.atomic_save import torch_save_atomic\n',
     'models (floor 2) imports mmdeform.engine.atomic_save (floor 4)'),
    ('from ...apis import inference_detector\n', 'imports mmdeform.apis (floor 5)'),
    ('from mmdeform import engine\n', 'imports mmdeform.engine (floor 4)'),
    ('import projects.synthetic_ablations\n', 'projects.synthetic_ablations is outside'),
])
def test_a_violation_is_found(source, expected):
    wrong = violations(source, 'mmdeform.models.backbones.pretrained')
    assert len(wrong) == 1 and expected in wrong[0], wrong


def test_downward_and_own_imports_pass():
    source = ('from mmdeform.fileio import read_checkpoint\nfrom ..layers import MLP\n'
              'from .resnet import ResNet\nimport torch\n')
    assert violations(source, 'mmdeform.models.backbones.pretrained') == []

"""The wheels a GPU check carries (``.dev_scripts/gpu_wheels.sh`` downloads them).

The GPU machine has Python 3.12, its own torch and no package index, so the
check installs ``.whl/*.whl`` with ``pip --no-index --no-deps --target``. pip
then checks nothing, so :func:`check_wheels` does beforehand: one version of
each distribution, tags that install on CPython 3.12 manylinux x86-64,
nothing the image provides itself (torch above all), and every requirement
met by another carried wheel or by the image. :func:`install_command` names
the target platform explicitly, so the same command also installs the
3.12 wheels from another Python (the dry run's 3.11).
"""
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

TARGET_PYTHON = (3, 12)
TARGET_PLATFORMS = ('manylinux_2_28_x86_64', 'manylinux_2_27_x86_64', 'manylinux_2_24_x86_64',
                    'manylinux_2_17_x86_64', 'manylinux2014_x86_64', 'manylinux1_x86_64')
# Distributions of the GPU image (its 'cuda' image, /work/.library/device/KINDS.md) that
# the carried wheels require: a carried copy would shadow the image's own.
IMAGE_PACKAGES = frozenset({
    'torch', 'numpy', 'opencv-python-headless', 'matplotlib', 'pyyaml', 'rich', 'packaging',
    'pillow', 'scipy', 'regex', 'setuptools', 'pygments', 'markdown-it-py', 'tqdm',
    'requests', 'psutil', 'pytest', 'ninja', 'onnx', 'onnxruntime'})
# Requirement -> the image's distribution that provides the same modules.
PROVIDED_AS = {'opencv-python': 'opencv-python-headless'}
NEVER_CARRIED = frozenset({'torch', 'numpy', 'opencv-python', 'opencv-python-headless',
                           'matplotlib'})
_MARKER_ENV = dict(python_version='3.12', python_full_version='3.12.3', sys_platform='linux',
                   platform_system='Linux', platform_machine='x86_64', os_name='posix',
                   implementation_name='cpython', platform_python_implementation='CPython',
                   extra='')


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r'[-_.]+', '-', name).lower()


@dataclass
class Wheel:
    """One wheel file: ``requires`` holds (name, marker) of each Requires-Dist."""
    path: Path
    name: str
    version: str
    tags: Tuple[str, str, str]  # python, abi, platform
    requires: List[Tuple[str, str]]


def read_wheel(path: Path) -> Wheel:
    """Name, version, tags and requirements of the wheel at ``path``.

    Raises:
        ValueError: not a wheel file name, or no METADATA inside (names the file).
    """
    parts = path.name[:-len('.whl')].split('-')
    if not path.name.endswith('.whl') or len(parts) not in (5, 6):
        raise ValueError(f'{path}: not a wheel file name (name-version-python-abi-platform.whl)')
    with zipfile.ZipFile(path) as zf:
        metadata = [n for n in zf.namelist() if n.endswith('.dist-info/METADATA')]
        if not metadata:
            raise ValueError(f'{path}: no *.dist-info/METADATA inside')
        text = zf.read(metadata[0]).decode('utf-8', 'replace')
    headers = text.split('\n\n', 1)[0].splitlines()
    requires = []
    for line in headers:
        if line.startswith('Requires-Dist:'):
            spec, _, marker = line[len('Requires-Dist:'):].partition(';')
            name = re.match(r'\s*([A-Za-z0-9][A-Za-z0-9._-]*)', spec)
            requires.append((normalize(name.group(1)), marker.strip()))
    return Wheel(path, normalize(parts[0]), parts[1], tuple(parts[-3:]), requires)


def _marker_holds(marker: str) -> bool:
    """Whether a requirement's marker holds on the GPU machine (no extras chosen)."""
    if not marker:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:  # the CPU venv has no packaging; pip carries a copy
        from pip._vendor.packaging.markers import Marker
    return Marker(marker).evaluate(dict(_MARKER_ENV))


def _installs_on_target(tags: Tuple[str, str, str]) -> bool:
    python, abi, platform = tags
    pythons = python.split('.')
    major, minor = TARGET_PYTHON
    ok_python = (f'py{major}' in pythons or f'cp{major}{minor}' in pythons
                 or (abi == 'abi3' and any(p.startswith(f'cp{major}')
                                           and int(p[3:] or 0) <= minor for p in pythons)))
    ok_platform = platform == 'any' or any(p in TARGET_PLATFORMS for p in platform.split('.'))
    return ok_python and ok_platform


def check_wheels(wheels: Sequence[Wheel], image: frozenset = IMAGE_PACKAGES) -> List[str]:
    """Problems of a set of wheels for the GPU machine (empty: none).

    Args:
        wheels: What :func:`read_wheel` read from the wheel dir.
        image: Distributions the GPU machine has without the wheels.
    """
    problems = [] if wheels else ['no wheels']
    names = {}
    for wheel in wheels:
        names.setdefault(wheel.name, []).append(wheel.path.name)
    problems += [f'{name}: several versions ({", ".join(files)}); keep one'
                 for name, files in sorted(names.items()) if len(files) > 1]
    problems += [f'{name}: the GPU image has its own; do not carry it'
                 for name in sorted(set(names) & NEVER_CARRIED)]
    problems += [f'{w.path.name}: does not install on CPython {TARGET_PYTHON[0]}.'
                 f'{TARGET_PYTHON[1]} manylinux x86-64' for w in wheels
                 if not _installs_on_target(w.tags)]
    for wheel in wheels:
        for name, marker in wheel.requires:
            name = PROVIDED_AS.get(name, name)
            if name not in names and name not in image and _marker_holds(marker):
                problems.append(f'{wheel.path.name} requires {name}, which is neither '
                                'carried nor in the GPU image: add it to '
                                '.dev_scripts/gpu_wheels.sh')
    return problems


def find_wheels(wheel_dir: Path) -> List[Wheel]:
    """The wheels of ``wheel_dir``, sorted by file name.

    Raises:
        FileNotFoundError: ``wheel_dir`` does not exist (says how to fill it).
    """
    if not Path(wheel_dir).is_dir():
        raise FileNotFoundError(f'{wheel_dir} does not exist: run '
                                '`bash .dev_scripts/gpu_wheels.sh` where pip reaches an index, '
                                'and carry the folder')
    return [read_wheel(p) for p in sorted(Path(wheel_dir).glob('*.whl'))]


def install_command(python: str, wheels: Sequence[Wheel], target: Path) -> List[str]:
    """pip command installing ``wheels`` into ``target`` for the GPU machine's
    Python, without an index or dependency resolution (checked before)."""
    platforms = [arg for p in TARGET_PLATFORMS for arg in ('--platform', p)]
    return [python, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile',
            '--no-cache-dir', '--upgrade', '--disable-pip-version-check', '--target',
            str(target), '--only-binary=:all:', '--implementation', 'cp', '--python-version',
            '.'.join(map(str, TARGET_PYTHON)), *platforms, *(str(w.path) for w in wheels)]

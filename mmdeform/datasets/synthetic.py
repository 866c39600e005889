"""A deterministic COCO-format dataset of simple shapes on noisy backgrounds.

Made for demos and tests that must learn something in minutes on a CPU:
four clearly different filled shapes (``SYNTHETIC_CLASSES``) in random
colours that contrast with a random gradient background, sides uniform
from ``min_object_size`` (8 px) to ``max_object_fraction`` (half) of the
image side, so about 60 % of the objects are COCO-"small" (area below
32 * 32; none is "large" at the default 128 px). Objects may overlap a
little (each covers at most a quarter of another's pixels); every box is
the tight box of the object's visible pixels and ``area`` is that pixel
count (COCO's segment area).

Layout written under ``out_dir``: ``train.json``, ``val.json`` and the
images ``train/000001.png``, ``val/000001.png``, ... (``file_name`` in the
json is relative to the split folder). The same arguments give
byte-identical json and images.

With ``size_class_fractions=(small, medium, large)`` (e.g. COCO's
``(0.41, 0.34, 0.25)``), each object's COCO size class (by area: small
below 32 * 32, medium below 96 * 96, large above) is drawn first with those
probabilities, then its side within that class for its shape (a triangle
fills half its box, a square all of it); the large objects of an image are
placed first, so the overlap rule refuses the small ones rather than the
large ones. Occlusion by later objects can move an object down a class, so
the achieved fractions, returned by :func:`make_synthetic_coco`, are a little
below the target for large objects. Without it (the default) the side is
uniform and the draw is that of the earlier versions, byte for byte.
"""
import json
import math
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from mmengine.logging import print_log
from mmengine.utils import ProgressBar, mkdir_or_exist

SYNTHETIC_CLASSES = ('circle', 'square', 'triangle', 'cross')
# info.description of the json files written here (how prepare_synthetic_data knows its own)
SYNTHETIC_DESCRIPTION = 'mmdeform synthetic shapes'
# Written into out_dir after a complete generation: the generator arguments it used.
_DATA_STAMP = 'synthetic_args.json'

_SPLITS = ('train', 'val')
# Largest fraction of an existing object's (or the new one's) pixels that a new object may cover.
_MAX_COVER = 0.25
_PLACEMENT_TRIES = 30
_MIN_COLOUR_DISTANCE = 150  # L1 distance over B, G, R between object and background colour
_NOISE_STD = 8.0
# COCO's area thresholds of the size classes (small, medium, large), in pixels
_CLASS_AREAS = ((0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, math.inf))
# Share of its box that each shape of SYNTHETIC_CLASSES fills (circle, square, triangle, cross:
# two bars a third thick overlap in a ninth)
_FILL = (math.pi / 4, 1.0, 0.5, 5 / 9)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 linear gradient between two random colours."""
    colour_a, colour_b = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    coords = np.arange(size, dtype=np.float32) / max(size - 1, 1)
    ramp = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    return (colour_a + (colour_b - colour_a) * ramp[..., None]).astype(np.float32)


def _shape_mask(label: int, box: Tuple[int, int, int, int], size: int,
                rng: np.random.Generator) -> np.ndarray:
    """Filled shape ``SYNTHETIC_CLASSES[label]`` inscribed in ``box``.

    Args:
        box: (x, y, w, h) integer pixels, inside the image.

    Returns:
        (size, size) bool mask.
    """
    x, y, w, h = box
    mask = np.zeros((size, size), dtype=np.uint8)
    name = SYNTHETIC_CLASSES[label]
    if name == 'circle':
        centre = (x + (w - 1) // 2, y + (h - 1) // 2)
        cv2.ellipse(mask, centre, ((w - 1) // 2, (h - 1) // 2), 0, 0, 360, 1, -1)
    elif name == 'square':
        mask[y:y + h, x:x + w] = 1
    elif name == 'triangle':
        apex, base = (y, y + h - 1) if rng.random() < 0.5 else (y + h - 1, y)
        points = np.array([[x, base], [x + w - 1, base], [x + (w - 1) // 2, apex]], np.int32)
        cv2.fillPoly(mask, [points], 1)
    else:  # cross: two bars a third of the box thick
        bar_w, bar_h = max(w // 3, 1), max(h // 3, 1)
        mask[y:y + h, x + (w - bar_w) // 2:x + (w - bar_w) // 2 + bar_w] = 1
        mask[y + (h - bar_h) // 2:y + (h - bar_h) // 2 + bar_h, x:x + w] = 1
    return mask.astype(bool)


def _sample_box(rng: np.random.Generator, size: int, min_size: float,
                max_size: float) -> Tuple[int, int, int, int]:
    """(x, y, w, h) with uniform scale and log-uniform aspect ratio in [0.8, 1.25]."""
    scale = rng.uniform(min_size, max_size)
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    w = int(round(min(max(scale * math.sqrt(aspect), min_size), size)))
    h = int(round(min(max(scale / math.sqrt(aspect), min_size), size)))
    x = int(rng.integers(0, size - w + 1))
    y = int(rng.integers(0, size - h + 1))
    return x, y, w, h


def _side_range(size_class: int, label: int, min_size: float,
                max_size: float) -> Tuple[float, float]:
    """Sides (in [min_size, max_size]) whose shape ``label`` has an area in ``size_class``.

    Raises:
        ValueError: no side in [min_size, max_size] gives that class.
    """
    low_area, high_area = _CLASS_AREAS[size_class]
    low = max(min_size, math.sqrt(low_area / _FILL[label]))
    high = min(max_size, math.sqrt(high_area / _FILL[label]))
    if low >= high:
        raise ValueError(f'no object side in [{min_size}, {max_size}] px gives a '
                         f'{SYNTHETIC_CLASSES[label]} of COCO size class {size_class} '
                         '(0 small, 1 medium, 2 large)')
    return low, high


def _pick_colour(rng: np.random.Generator, background_colour: np.ndarray) -> np.ndarray:
    """A random colour at least ``_MIN_COLOUR_DISTANCE`` from the background."""
    colour = rng.uniform(0, 255, size=3)
    for _ in range(20):
        if np.abs(colour - background_colour).sum() >= _MIN_COLOUR_DISTANCE:
            break
        colour = rng.uniform(0, 255, size=3)
    else:  # fall back to the background's complement
        colour = 255.0 - background_colour
    return colour


def _place_objects(rng: np.random.Generator, size: int, num_objects: int, min_size: float,
                   max_size: float, size_class_fractions: Optional[Sequence[float]] = None
                   ) -> List[Tuple[int, np.ndarray]]:
    """Labels and masks of objects that cover at most ``_MAX_COVER`` of each other.

    With ``size_class_fractions`` the size classes of all objects are drawn
    first and the objects placed largest class first (module docstring).
    """
    classes: List[Optional[int]] = [None] * num_objects
    if size_class_fractions is not None:
        drawn = rng.choice(3, size=num_objects, p=np.asarray(size_class_fractions, float))
        classes = sorted((int(c) for c in drawn), reverse=True)
    objects: List[Tuple[int, np.ndarray]] = []
    for size_class in classes:
        for _ in range(_PLACEMENT_TRIES):
            label = int(rng.integers(len(SYNTHETIC_CLASSES)))
            sides = (min_size, max_size) if size_class is None else \
                _side_range(size_class, label, min_size, max_size)
            mask = _shape_mask(label, _sample_box(rng, size, *sides), size, rng)
            area = mask.sum()
            if all((mask & other).sum() <= _MAX_COVER * min(area, other.sum())
                   for _, other in objects):
                objects.append((label, mask))
                break
    return objects


def render_image(rng: np.random.Generator, size: int, max_objects: int, min_size: float,
                 max_size: float, size_class_fractions: Optional[Sequence[float]] = None
                 ) -> Tuple[np.ndarray, List[dict]]:
    """Draw one image (``size_class_fractions``: see the module docstring).

    Returns:
        tuple: (size, size, 3) uint8 BGR image and its objects as
        ``dict(label, bbox=[x, y, w, h], area)`` (visible pixels only).
    """
    img = _background(rng, size)
    objects = _place_objects(rng, size, int(rng.integers(1, max_objects + 1)), min_size,
                             max_size, size_class_fractions)
    visible = [mask.copy() for _, mask in objects]
    for i, (_, mask) in enumerate(objects):
        ys, xs = np.nonzero(mask)
        img[mask] = _pick_colour(rng, img[int(ys.mean()), int(xs.mean())])
        for earlier in visible[:i]:
            earlier &= ~mask
    img += rng.normal(0.0, _NOISE_STD, size=img.shape).astype(np.float32)
    annotations = []
    for (label, _), mask in zip(objects, visible):
        ys, xs = np.nonzero(mask)
        x1, y1 = int(xs.min()), int(ys.min())
        annotations.append(dict(label=label, area=int(mask.sum()),
                                bbox=[x1, y1, int(xs.max()) + 1 - x1, int(ys.max()) + 1 - y1]))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), annotations


def _make_split(out_dir: str, split: str, num_images: int, seed: int, image_size: int,
                ext: str, draw: dict, progress: bool) -> dict:
    """Render and write one split; ``draw``: the keyword arguments of :func:`render_image`."""
    mkdir_or_exist(osp.join(out_dir, split))
    images, annotations = [], []
    bar = ProgressBar(num_images) if progress else None
    for index in range(num_images):
        rng = np.random.default_rng([seed, _SPLITS.index(split), index])
        img, objects = render_image(rng, image_size, **draw)
        file_name = f'{index + 1:06d}.{ext}'
        if not cv2.imwrite(osp.join(out_dir, split, file_name), img):
            raise OSError(f'could not write {osp.join(out_dir, split, file_name)}')
        images.append(dict(id=index + 1, file_name=file_name, height=image_size,
                           width=image_size))
        for obj in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=index + 1,
                                    category_id=obj['label'] + 1, bbox=obj['bbox'],
                                    area=obj['area'], iscrowd=0))
        if bar is not None:
            bar.update()
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(SYNTHETIC_CLASSES)]
    info = dict(description=SYNTHETIC_DESCRIPTION, seed=seed, image_size=image_size)
    if draw['size_class_fractions'] is not None:
        info['size_class_fractions'] = list(draw['size_class_fractions'])
    content = dict(info=info, images=images, annotations=annotations, categories=categories)
    with open(osp.join(out_dir, f'{split}.json'), 'w') as f:
        json.dump(content, f, separators=(',', ':'))
    return content


def make_synthetic_coco(out_dir: str, num_train: int = 2000, num_val: int = 200,
                        image_size: int = 128, seed: int = 0, ext: str = 'png',
                        min_object_size: float = 8, max_object_fraction: float = 0.5,
                        max_objects: int = 5,
                        size_class_fractions: Optional[Sequence[float]] = None,
                        progress: bool = True) -> dict:
    """Write the synthetic shapes dataset (see the module docstring).

    Args:
        out_dir (str): Output folder (created).
        num_train (int): Number of training images.
        num_val (int): Number of validation images.
        image_size (int): Side of the square images, in pixels.
        seed (int): Random seed; image ``i`` of a split depends only on
            (seed, split, i).
        ext (str): Image format, ``'png'`` (lossless) or ``'jpg'``.
        min_object_size (float): Smallest object side, in pixels.
        max_object_fraction (float): Largest object side as a fraction of
            ``image_size``.
        max_objects (int): Each image holds 1..max_objects objects (fewer when
            placement fails).
        size_class_fractions (Sequence[float], optional): Probabilities of
            the COCO size classes (small, medium, large) of every object
            (module docstring); None: uniform sides, the earlier draw.
        progress (bool): Show a progress bar.

    Returns:
        dict: per split, ``num_images``, ``num_objects``, the number of
        COCO ``small`` / ``medium`` / ``large`` objects (by area) and their
        shares ``fractions`` (small, medium, large).
    """
    if ext not in ('png', 'jpg'):
        raise ValueError(f'ext must be "png" or "jpg", got {ext!r}')
    max_size = max_object_fraction * image_size
    if not 1 <= min_object_size <= max_size <= image_size:
        raise ValueError(f'need 1 <= min_object_size ({min_object_size}) <= max_object_fraction '
                         f'* image_size ({max_size}) <= image_size ({image_size})')
    if max_objects < 1:
        raise ValueError(f'max_objects must be >= 1, got {max_objects}')
    if size_class_fractions is not None:
        _check_fractions(size_class_fractions, min_object_size, max_size)
    draw = dict(max_objects=max_objects, min_size=min_object_size, max_size=max_size,
                size_class_fractions=size_class_fractions)
    summary = {}
    for split, num_images in zip(_SPLITS, (num_train, num_val)):
        content = _make_split(out_dir, split, num_images, seed, image_size, ext, draw,
                              progress)
        summary[split] = size_class_summary([a['area'] for a in content['annotations']])
        summary[split]['num_images'] = num_images
    return summary


def size_class_summary(areas: Sequence[float]) -> dict:
    """``num_objects``, COCO ``small`` / ``medium`` / ``large`` counts and their
    ``fractions`` (small, medium, large; zeros without objects) of object areas."""
    areas = np.asarray(areas, dtype=float)
    counts = [int(((areas >= low) & (areas < high)).sum()) for low, high in _CLASS_AREAS]
    total = max(len(areas), 1)
    return dict(num_objects=len(areas), small=counts[0], medium=counts[1], large=counts[2],
                fractions=[round(c / total, 4) for c in counts])


def _check_fractions(fractions: Sequence[float], min_size: float, max_size: float) -> None:
    """Three non-negative shares summing to 1, each drawable with these sides."""
    values = list(fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6:
        raise ValueError('size_class_fractions must be 3 non-negative shares (small, medium, '
                         f'large) summing to 1, got {fractions}')
    for size_class, share in enumerate(values):
        if share > 0:
            for label in range(len(SYNTHETIC_CLASSES)):
                _side_range(size_class, label, min_size, max_size)


def _check_not_foreign(data_root: str) -> None:
    """Refuse to overwrite COCO json files that this generator did not write."""
    for split in _SPLITS:
        ann_file = osp.join(data_root, f'{split}.json')
        if not osp.isfile(ann_file):
            continue
        with open(ann_file) as f:
            try:
                description = json.load(f).get('info', {}).get('description')
            except (ValueError, AttributeError):
                description = None
        if description != SYNTHETIC_DESCRIPTION:
            raise FileExistsError(
                f'prepare_synthetic_data: {ann_file} exists and is not a synthetic shapes '
                f'annotation file (info.description {description!r}); choose another data_root')


def prepare_synthetic_data(data_root: str, synthetic_data: dict, progress: bool = True) -> bool:
    """Generate the synthetic dataset into ``data_root`` unless it is already there.

    The data counts as present when ``data_root/synthetic_args.json`` (written
    after a complete generation) records the same generator arguments.

    Args:
        data_root (str): Dataset folder (``train.json``, ``val.json``,
            ``train/``, ``val/``).
        synthetic_data (dict): Keyword arguments of :func:`make_synthetic_coco`
            (except ``out_dir`` and ``progress``), e.g. a config's
            ``synthetic_data``.
        progress (bool): Show the generator's progress bars.

    Returns:
        bool: True if the data was generated, False if it was reused.

    Raises:
        FileExistsError: ``data_root`` holds a ``train.json`` / ``val.json``
            that the generator did not write (it is never overwritten).
    """
    stamp_file = osp.join(data_root, _DATA_STAMP)
    wanted = json.loads(json.dumps(dict(synthetic_data)))
    if osp.isfile(stamp_file):
        with open(stamp_file) as f:
            if json.load(f) == wanted:
                print_log(f'synthetic data in {data_root} is up to date', logger='current')
                return False
    _check_not_foreign(data_root)
    print_log(f'generating synthetic data in {data_root}: {wanted}', logger='current')
    summary = make_synthetic_coco(data_root, progress=progress, **wanted)
    print_log(f'synthetic data: {summary}', logger='current')
    with open(stamp_file, 'w') as f:
        json.dump(wanted, f)
    return True

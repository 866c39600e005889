"""Batch images for the detector: normalize, pad bottom/right, record shapes."""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor

from mmdeform.registry import MODELS
from mmdeform.structures import DetDataSample


@MODELS.register_module()
class DetDataPreprocessor(BaseDataPreprocessor):
    """Move a batch to the device, normalize it and pad it into one tensor.

    Each image is (optionally) flipped from BGR to RGB, converted to float,
    normalized with ``(x - mean) / std`` and then padded with ``pad_value``
    at the bottom and right to the largest height and width of the batch,
    rounded up to a multiple of ``pad_size_divisor``. Padding happens after
    normalization, so the default ``pad_value=0`` is zero in normalized
    space, as in the official Deformable DETR.

    Integer (uint8) images become float32; floating images keep their dtype.

    Every data sample gets the meta fields ``batch_input_shape`` (H, W) of
    the padded batch and ``pad_shape`` (its own (h, w) rounded up to
    ``pad_size_divisor``), and ``img_shape`` (h, w) of its input when the
    pipeline did not set one.

    Args:
        mean (Sequence[float]): Per-channel mean in RGB order if
            ``bgr_to_rgb`` else in input order, in input units (0-255).
        std (Sequence[float]): Per-channel standard deviation, same order.
        bgr_to_rgb (bool): Reverse the channel order of the input first.
        pad_size_divisor (int): The padded height and width are multiples
            of it.
        pad_value (float): Value of the padded pixels (normalized space).
        non_blocking (bool): Passed to mmengine's device transfer.
    """

    def __init__(self,
                 mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375),
                 bgr_to_rgb: bool = True,
                 pad_size_divisor: int = 1,
                 pad_value: float = 0.0,
                 non_blocking: bool = False) -> None:
        super().__init__(non_blocking)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f'mean and std must have 3 values, got {len(mean)} and {len(std)}')
        if any(s <= 0 for s in std):
            raise ValueError(f'std values must be > 0, got {tuple(std)}')
        if int(pad_size_divisor) != pad_size_divisor or pad_size_divisor < 1:
            raise ValueError(f'pad_size_divisor must be a positive integer, got {pad_size_divisor}')
        # Python floats, turned into tensors of the image's dtype per batch, so
        # that casting the model (e.g. .half()) never rounds the statistics.
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.bgr_to_rgb = bgr_to_rgb
        self.pad_size_divisor = int(pad_size_divisor)
        self.pad_value = float(pad_value)

    def extra_repr(self) -> str:
        return (f'mean={self.mean}, std={self.std}, bgr_to_rgb={self.bgr_to_rgb}, '
                f'pad_size_divisor={self.pad_size_divisor}, pad_value={self.pad_value}')

    def forward(self, data: dict, training: bool = False) -> dict:
        """Preprocess one batch from the dataloader.

        Args:
            data (dict): ``inputs``: a list of B (3, h_i, w_i) images (uint8
                BGR as loaded by mmcv, or floating) or one (B, 3, H, W)
                tensor; ``data_samples`` (optional): B ``DetDataSample``.
            training (bool): Passed by mmengine; the preprocessing is the
                same in training and evaluation.

        Returns:
            dict: ``inputs`` (B, 3, H_pad, W_pad) normalized, padded batch;
            ``data_samples``: the samples on the device with their shapes
            recorded (None if none were given).
        """
        data = self.cast_data(data)
        images = self._split_images(data['inputs'])
        images = [self._normalize(image) for image in images]
        dtypes = {image.dtype for image in images}
        if len(dtypes) > 1:
            raise ValueError('DetDataPreprocessor: the images of a batch normalize to different '
                             f'dtypes {sorted(str(d) for d in dtypes)}; give them one dtype')
        image_shapes = [tuple(image.shape[-2:]) for image in images]
        pad_shapes = [self._round_up(shape) for shape in image_shapes]
        batch_input_shape = (max(h for h, _ in pad_shapes), max(w for _, w in pad_shapes))
        inputs = torch.stack([self._pad(image, batch_input_shape) for image in images])
        data_samples: Optional[List[DetDataSample]] = data.get('data_samples')
        if data_samples is not None:
            if len(data_samples) != len(images):
                raise ValueError(f'DetDataPreprocessor: got {len(images)} images but '
                                 f'{len(data_samples)} data_samples')
            for sample, image_shape, pad_shape in zip(data_samples, image_shapes, pad_shapes):
                if 'img_shape' not in sample:
                    sample.set_metainfo(dict(img_shape=image_shape))
                sample.set_metainfo(dict(batch_input_shape=batch_input_shape,
                                         pad_shape=pad_shape))
        return dict(inputs=inputs, data_samples=data_samples)

    @staticmethod
    def _split_images(inputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> List[torch.Tensor]:
        """Check the input and return it as a list of (3, h, w) images."""
        if isinstance(inputs, torch.Tensor):
            if inputs.dim() != 4 or inputs.shape[1] != 3:
                raise ValueError('DetDataPreprocessor: a stacked inputs tensor must be '
                                 f'(B, 3, H, W), got shape {tuple(inputs.shape)}')
            return list(inputs.unbind(0))
        if not isinstance(inputs, Sequence) or len(inputs) == 0:
            raise ValueError('DetDataPreprocessor: inputs must be a (B, 3, H, W) tensor or a '
                             f'non-empty list of (3, h, w) tensors, got {type(inputs).__name__}')
        for i, image in enumerate(inputs):
            if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image)
                raise ValueError(f'DetDataPreprocessor: inputs[{i}] must be a (3, h, w) '
                                 f'tensor, got {shape}')
        return list(inputs)

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(3, h, w) raw image -> (3, h, w) normalized float image."""
        if self.bgr_to_rgb:
            image = image.flip(0)
        if not image.is_floating_point():
            image = image.float()
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device).view(3, 1, 1)
        return (image - mean) / std

    def _round_up(self, shape: Tuple[int, int]) -> Tuple[int, int]:
        """Round (h, w) up to multiples of ``pad_size_divisor``."""
        divisor = self.pad_size_divisor
        return tuple(int(math.ceil(size / divisor)) * divisor for size in shape)

    def _pad(self, image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Pad (3, h, w) at the bottom and right to (3, *size)."""
        pad_bottom, pad_right = size[0] - image.shape[1], size[1] - image.shape[2]
        return F.pad(image, (0, pad_right, 0, pad_bottom), value=self.pad_value)

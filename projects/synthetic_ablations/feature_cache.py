"""``FeatureCachedBackbone``: a frozen backbone whose outputs are remembered per image.

Every row of the synthetic Table 2 and both convergence models share one
backbone, pretrained once and then frozen (as the paper's rows share an
ImageNet backbone). A frozen backbone in eval mode computes the same
features for the same image every time it sees it, so they can be kept:
the training images come back every epoch, the validation images at every
evaluation. This wrapper keeps them, keyed by a hash of the image tensor's
exact bytes (with its shape and dtype): an image changed in any way (a
flip, another padding, another normalization) is a different key, a miss,
never a wrong hit.

It refuses to run a backbone that could change: every parameter must have
``requires_grad=False`` and every module must be in eval mode (the wrapper
keeps the backbone in eval mode whatever ``train()`` it receives, so batch
norm statistics never move). Memory is bounded by ``max_bytes``: once full,
new features are computed and returned but not stored (with epochs visiting
the images in a new order each time, keeping a fixed set beats evicting).

Registered in mmdeform's ``MODELS``; the synthetic configs import this
module through ``custom_imports`` and write
``backbone=dict(type='FeatureCachedBackbone', backbone=dict(type='ResNet', ...))``.
"""
import hashlib
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.model import BaseModule

from mmdeform.registry import MODELS

DEFAULT_MAX_BYTES = 3 * 2**30  # 3 GiB per process


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's exact bytes in row-major order (b'' when empty), for hashing: the image keys
    here, the pretrained backbone's weights digest (``pretraining.weights_digest``)."""
    data = tensor.detach().cpu().contiguous().view(-1)
    return data.view(torch.uint8).numpy().tobytes() if data.numel() else b''


@MODELS.register_module()
class FeatureCachedBackbone(BaseModule):
    """A frozen backbone with a per-image cache of its output maps.

    Args:
        backbone (dict): Config of the wrapped backbone (e.g. ``ResNet`` with
            ``frozen_stages=4``, ``norm_eval=True``); it must declare
            ``out_channels`` and return a tuple of (B, C_l, H_l, W_l) maps.
        max_bytes (int): Most bytes of cached features (default 3 GiB).
        init_cfg (dict, optional): mmengine init config of the wrapper
            (the backbone's own ``init_cfg`` loads its weights).

    Attributes:
        out_channels (list[int]): The wrapped backbone's.
        hits (int): Images answered from the cache.
        misses (int): Images the backbone computed.
        cached_bytes (int): Bytes held now.
    """

    def __init__(self, backbone: dict, max_bytes: int = DEFAULT_MAX_BYTES,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if max_bytes < 0:
            raise ValueError(f'FeatureCachedBackbone: max_bytes must be >= 0, got {max_bytes}')
        self.backbone = MODELS.build(backbone)
        self.out_channels = list(self.backbone.out_channels)
        self.out_strides = list(getattr(self.backbone, 'out_strides', []))
        self.max_bytes = max_bytes
        self._cache: Dict[str, Tuple[torch.Tensor, ...]] = {}
        self.hits = self.misses = self.cached_bytes = 0
        self.backbone.eval()
        self.check_frozen()

    def clear(self) -> None:
        """Forget every cached map (the counters stay)."""
        self._cache.clear()
        self.cached_bytes = 0

    def init_weights(self) -> None:
        """Initialize (the backbone loads its checkpoint), then clear the cache."""
        super().init_weights()
        self.clear()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        """Loading weights (a checkpoint, a resume) clears the cache first."""
        self.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def train(self, mode: bool = True) -> 'FeatureCachedBackbone':
        """Set the wrapper's mode; the wrapped backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def check_frozen(self) -> None:
        """Refuse a backbone that could change its features.

        Raises:
            RuntimeError: a parameter requires grad or a module is in
                training mode (names the first few).
        """
        trainable = [n for n, p in self.backbone.named_parameters() if p.requires_grad]
        training = [n or type(self.backbone).__name__
                    for n, m in self.backbone.named_modules() if m.training]
        if trainable or training:
            raise RuntimeError(
                'FeatureCachedBackbone: the wrapped backbone must be frozen (every parameter '
                'requires_grad=False, e.g. frozen_stages=4) and in eval mode, so that an '
                f'image always gives the same features; trainable: {trainable[:3]}, in '
                f'training mode: {training[:3]}')

    @staticmethod
    def image_key(image: torch.Tensor) -> str:
        """Hash of one image's exact bytes, shape and dtype."""
        digest = hashlib.blake2b(str((tuple(image.shape), image.dtype)).encode(), digest_size=20)
        digest.update(tensor_bytes(image))
        return digest.hexdigest()

    def _store(self, key: str, feats: Tuple[torch.Tensor, ...]) -> None:
        size = sum(f.numel() * f.element_size() for f in feats)
        if self.cached_bytes + size <= self.max_bytes:
            self._cache[key] = feats
            self.cached_bytes += size

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The backbone's maps of every image, computed only for the images not cached.

        Args:
            x (Tensor): (B, 3, H, W) normalized images.

        Returns:
            tuple[Tensor]: one (B, C_l, H_l, W_l) map per backbone output,
            as the wrapped backbone returns them.
        """
        self.check_frozen()
        keys = [self.image_key(image) for image in x]
        missing: List[int] = [i for i, key in enumerate(keys) if key not in self._cache]
        computed: Dict[str, Tuple[torch.Tensor, ...]] = {}
        if missing:
            with torch.no_grad():
                outs = self.backbone(x[missing])  # L maps (M, C_l, H_l, W_l)
            for row, index in enumerate(missing):
                feats = tuple(out[row].clone() for out in outs)
                computed[keys[index]] = feats
                self._store(keys[index], feats)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        per_image = [computed.get(key) or self._cache[key] for key in keys]
        # B tuples of L maps (C_l, H_l, W_l) -> L maps (B, C_l, H_l, W_l)
        return tuple(torch.stack(level) for level in zip(*per_image))

    def cache_info(self) -> dict:
        """``hits``, ``misses``, ``entries`` and ``bytes`` of the cache."""
        return dict(hits=self.hits, misses=self.misses, entries=len(self._cache),
                    bytes=self.cached_bytes)

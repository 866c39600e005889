"""LoadImageFromFile reads the image size from the file header and refuses images above
``max_pixels`` before decoding them."""
import struct
import zlib
from unittest import mock

import cv2
import numpy as np
import pytest

from mmdeform.datasets.transforms import LoadImageFromFile
from mmdeform.datasets.transforms.image_header import image_size_from_header
from mmdeform.datasets.transforms.loading import ImageTooLargeError


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` gray pixels
    (the pixel data holds only the first row: nothing here decodes it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    idat = zlib.compress(b'\x00' * (width + 1))
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', idat) + chunk(b'IEND', b'')


def test_huge_declared_png_refused_without_decoding(tmp_path):
    path = tmp_path / 'bomb.png'
    path.write_bytes(png_declaring(20000, 20000))
    assert path.stat().st_size < 1000
    with mock.patch('mmcv.imfrombytes', side_effect=AssertionError('decoded')) as decode, \
            pytest.raises(ImageTooLargeError, match=r'bomb\.png declares 20000 x 20000 = '
                          r'400,000,000 pixels, more than max_pixels=100,000,000'):
        LoadImageFromFile()(dict(img_path=str(path)))
    decode.assert_not_called()


def test_limit_is_configurable(tmp_path):
    path = tmp_path / 'small.png'
    cv2.imwrite(str(path), np.zeros((30, 40, 3), np.uint8))
    assert LoadImageFromFile(max_pixels=1200)(dict(img_path=str(path)))['img_shape'] == (30, 40)
    with pytest.raises(ImageTooLargeError, match='small.png declares 40 x 30'):
        LoadImageFromFile(max_pixels=1199)(dict(img_path=str(path)))
    with pytest.raises(ValueError, match='max_pixels must be >= 1 or None'):
        LoadImageFromFile(max_pixels=0)


@pytest.mark.parametrize('ext', ['.png', '.jpg', '.bmp', '.webp', '.tif'])
def test_header_size_matches_the_decoded_size(ext):
    ok, data = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
    assert ok and image_size_from_header(data.tobytes()) == (53, 37)


def test_unknown_or_cut_header_gives_none():
    assert image_size_from_header(b'not an image at all') is None
    assert image_size_from_header(png_declaring(9, 9)[:20]) is None

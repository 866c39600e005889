"""The pixel size an image file declares in its header, read without decoding.

A few hundred bytes of PNG can declare 20000 x 20000 pixels; decoding it
allocates gigabytes. :class:`~mmdeform.datasets.transforms.LoadImageFromFile` reads
the size here first and refuses images above its ``max_pixels``.

Formats: PNG, JPEG, BMP, GIF, WebP and TIFF (first image). Other data gives
None (the decoder's own limit then applies: OpenCV refuses more than 2**30
pixels).
"""
import struct
from typing import Optional, Tuple

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic ...)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# JPEG markers without a length field
_JPEG_STANDALONE = {0x01, 0xD8} | set(range(0xD0, 0xD8))


def _png(data: bytes) -> Optional[Tuple[int, int]]:
    if data[12:16] != b'IHDR' or len(data) < 24:
        return None
    return struct.unpack('>II', data[16:24])


def _gif(data: bytes) -> Optional[Tuple[int, int]]:
    return struct.unpack('<HH', data[6:10]) if len(data) >= 10 else None


def _bmp(data: bytes) -> Optional[Tuple[int, int]]:
    if len(data) < 26:
        return None
    if struct.unpack('<I', data[14:18])[0] == 12:  # OS/2 header: 16-bit sizes
        return struct.unpack('<HH', data[18:22])
    width, height = struct.unpack('<ii', data[18:26])
    return abs(width), abs(height)  # negative height: rows stored top-down


def _jpeg(data: bytes) -> Optional[Tuple[int, int]]:
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_SOF:
            height, width = struct.unpack('>HH', data[i + 5:i + 9])
            return width, height
        elif marker in _JPEG_STANDALONE:
            i += 2
        else:
            i += 2 + struct.unpack('>H', data[i + 2:i + 4])[0]
    return None


def _webp(data: bytes) -> Optional[Tuple[int, int]]:
    chunk = data[12:16]
    if chunk == b'VP8 ' and len(data) >= 30:
        width, height = struct.unpack('<HH', data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b'VP8L' and len(data) >= 25:
        b0, b1, b2, b3 = data[21:25]
        return 1 + (((b1 & 0x3F) << 8) | b0), 1 + (((b3 & 0xF) << 10) | (b2 << 2) | (b1 >> 6))
    if chunk == b'VP8X' and len(data) >= 30:
        return (1 + int.from_bytes(data[24:27], 'little'),
                1 + int.from_bytes(data[27:30], 'little'))
    return None


def _tiff(data: bytes) -> Optional[Tuple[int, int]]:
    order = '<' if data[:2] == b'II' else '>'
    (offset,) = struct.unpack(order + 'I', data[4:8])
    if offset + 2 > len(data):
        return None
    (count,) = struct.unpack(order + 'H', data[offset:offset + 2])
    size = {}
    for k in range(count):
        entry = data[offset + 2 + 12 * k:offset + 14 + 12 * k]
        if len(entry) < 12:
            return None
        tag, kind = struct.unpack(order + 'HH', entry[:4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            fmt = order + ('H' if kind == 3 else 'I')
            size[tag] = struct.unpack(fmt, entry[8:8 + struct.calcsize(fmt)])[0]
    return (size[256], size[257]) if len(size) == 2 else None


def image_size_from_header(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` declared by the image file ``data``, or None when
    the format is not one of those listed in the module doc or the header is
    cut short."""
    try:
        if data.startswith(b'\x89PNG\r\n\x1a\n'):
            return _png(data)
        if data.startswith(b'\xff\xd8'):
            return _jpeg(data)
        if data.startswith((b'GIF87a', b'GIF89a')):
            return _gif(data)
        if data.startswith(b'BM'):
            return _bmp(data)
        if data.startswith(b'RIFF') and data[8:12] == b'WEBP':
            return _webp(data)
        if data.startswith((b'II*\x00', b'MM\x00*')):
            return _tiff(data)
    except struct.error:  # a header cut short
        return None
    return None

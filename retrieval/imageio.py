"""Decode one image file into a model-ready tensor, with reasons for every failure.

Shared by the indexer (many files, in worker processes) and the searcher (a query image).
"""

from __future__ import annotations

import os
import warnings
from datetime import datetime

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own bomb limit; about 13k x 13k
EXIF_DATETIME_ORIGINAL = 0x9003
EXIF_DATETIME = 0x0132
EXIF_IFD = 0x8769

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is skipped, not half-embedded


class DecodeError(Exception):
    """A file that cannot be turned into an image; the message is the reason."""


def decode_image(path: str, preprocess, max_pixels: int = DEFAULT_MAX_PIXELS):
    """-> (pixels (3, H, W), width, height, format, taken_at); raises DecodeError."""
    try:
        if os.path.getsize(path) == 0:
            raise DecodeError("empty file (0 bytes)")
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"{width}x{height} = {width * height:,} pixels exceeds the limit of "
                    f"{max_pixels:,} (raise it with --max-pixels)"
                )
            fmt = image.format
            taken_at = _exif_datetime(image)
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
            image = ImageOps.exif_transpose(image)  # camera orientation, as a viewer shows it
            pixels = preprocess(image.convert("RGB"))
    except DecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise DecodeError("not an image (unrecognised format)") from exc
    except PermissionError as exc:
        raise DecodeError("cannot read file: permission denied") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"decompression bomb guard: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DecodeError(f"corrupt or truncated image ({reason})") from exc
    return pixels, width, height, fmt, taken_at


def _exif_datetime(image: Image.Image) -> datetime | None:
    try:
        exif = image.getexif()
        raw = exif.get_ifd(EXIF_IFD).get(EXIF_DATETIME_ORIGINAL) or exif.get(EXIF_DATETIME)
        return datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S") if raw else None
    except Exception:  # EXIF is advisory; a broken tag never costs the image
        return None

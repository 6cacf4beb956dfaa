"""Decode image files into model-ready tensors, with a reason for every failure.

`decode_image` serves one file (a query image); `decode_batches` many, in worker
processes that run ahead of the encoder (indexer, benchmarks, training).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, BinaryIO, cast

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

# PIL's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS, about 9.5k x 9.5k),
# checked here on each file's header before decoding: PIL only warns at this size, and
# turning that warning into an error would need the process-wide warnings filter, which
# another thread may be changing at the same moment.
DEFAULT_MAX_PIXELS = 89_478_485
# Resizing scales the short side to the model's input, so a 400000x1 strip (a 1.2 KB PNG)
# would become 224 x 89.6M pixels: the size after resizing is guarded too, and with it
# the aspect ratio (64:1 leaves every real panorama in).
MAX_ASPECT_RATIO = 64
MAX_RESIZED_PIXELS = 16_777_216  # 4096 x 4096: 64:1 at a 448 px model input fits
# Each scan of a progressive JPEG is another pass over every coefficient, so a small file
# repeating one scan thousands of times decodes for minutes within the pixel limit. Real
# encoders write about 10 (libjpeg's progressive script) and rarely more than 20.
MAX_JPEG_SCANS = 64
JPEG_START_OF_SCAN = b"\xff\xda"  # cannot occur inside entropy-coded data (0xFF is stuffed)
EXIF_DATETIME_ORIGINAL = 0x9003
EXIF_DATETIME = 0x0132
EXIF_IFD = 0x8769
EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)  # orientations that turn the picture a quarter
# JPEGs decode at a reduced scale that still leaves this many times the model's input
# (see _draft): the resize to the input then averages over the same area of the picture.
DRAFT_FACTOR = 2
Preprocess = Callable[[Image.Image], "torch.Tensor"]  # an RGB image -> (3, H, W) floats

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is skipped, not half-embedded


class DecodeError(Exception):
    """A file that cannot be turned into an image; the message is the reason."""


def decode_image(path: str | bytes, preprocess: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS):
    """A file's path, or its bytes (an upload) -> (pixels (3, H, W), width, height, format,
    taken_at); raises DecodeError."""
    try:
        in_memory = isinstance(path, bytes | bytearray)
        if (len(path) if in_memory else os.path.getsize(path)) == 0:
            raise DecodeError("empty file (0 bytes)")
        with Image.open(io.BytesIO(path) if isinstance(path, bytes | bytearray) else path) as image:
            width, height = image.size
            check_pixels(width, height, max_pixels)  # the header's claim, before decoding
            _check_resized(width, height, preprocess)
            if image.format == "JPEG":
                check_jpeg_scans(image.fp)
            fmt = image.format
            taken_at = _exif_datetime(image)
            if _orientation(image) in _SWAPS_SIDES:
                width, height = height, width  # as displayed, after the rotation below
            _draft(image, preprocess)
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


def check_pixels(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise DecodeError when a header claims more pixels than `max_pixels` (per call:
    no shared state, so concurrent decodes cannot change each other's limit)."""
    if width * height > max_pixels:
        raise DecodeError(
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,}; raise the pixel limit to index it"
        )


def check_jpeg_scans(file: BinaryIO, chunk: int = 1 << 20) -> None:
    """Raise DecodeError for a JPEG with more scans than a real encoder writes: with the
    pixel limit this bounds the decoding work of any file. Reads the open `file` (the one
    PIL decodes from) in chunks and puts its position back."""
    position = file.tell()
    file.seek(0)
    scans, tail = 0, b""
    while block := file.read(chunk):
        data = tail + block  # a marker may straddle two chunks
        scans += data.count(JPEG_START_OF_SCAN)
        tail = data[-1:] if data[-1:] == JPEG_START_OF_SCAN[:1] else b""
    file.seek(position)
    if scans > MAX_JPEG_SCANS:
        raise DecodeError(
            f"JPEG with {scans:,} scans (real ones have about 10; the limit is "
            f"{MAX_JPEG_SCANS}): each scan is another full decoding pass"
        )


def _check_resized(width: int, height: int, preprocess) -> None:
    """Refuse an image whose shape, once resized for the model, would not fit in memory."""
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > MAX_ASPECT_RATIO:
        raise DecodeError(
            f"extreme aspect ratio {width}x{height} ({ratio:,.0f}:1, the limit is "
            f"{MAX_ASPECT_RATIO}:1): resized for the model it would be far too large"
        )
    out_w, out_h = _resized_size(width, height, preprocess)
    if out_w * out_h > MAX_RESIZED_PIXELS:
        raise DecodeError(
            f"{width}x{height} resized for the model is {out_w}x{out_h} = {out_w * out_h:,} "
            f"pixels, over the limit of {MAX_RESIZED_PIXELS:,}"
        )


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken tag: exif_transpose leaves such an image as it is
        return 1


def _draft(image: Image.Image, preprocess) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (its DCT scaling) while the result stays
    at least DRAFT_FACTOR times the model's input on each side; other formats are left
    alone. The resize to the model's input then starts from fewer pixels: a 12 MP photo
    decodes about 3x faster, and the vectors stay the same (cosine >= 0.99999 to a full
    decode, tests/test_image_tower.py)."""
    if image.format != "JPEG":
        return
    width, height = image.size
    out_w, out_h = _resized_size(width, height, preprocess)
    if (out_w, out_h) == (width, height):
        return  # no resize step known: decode every pixel
    # the model's input is drawn from the stored (not yet rotated) picture: a rotation
    # swaps both sides, so asking for the larger of the two on each side covers either
    side = DRAFT_FACTOR * max(out_w, out_h)
    scale = side / max(1, min(width, height))
    if scale < 1:
        image.draft(image.mode, (max(1, round(width * scale)), max(1, round(height * scale))))


def _resized_size(width: int, height: int, preprocess) -> tuple[int, int]:
    """(width, height) after the first resize step of a torchvision pipeline (open_clip's:
    an int size scales the short side to it; a pair is the output size)."""
    for step in getattr(preprocess, "transforms", ()):
        size = getattr(step, "size", None)
        if "Resize" not in type(step).__name__ or size is None:
            continue
        if isinstance(size, int) or (isinstance(size, (list, tuple)) and len(size) == 1):
            target = size if isinstance(size, int) else size[0]
            scale = target / max(1, min(width, height))
            return max(1, round(width * scale)), max(1, round(height * scale))
        if isinstance(size, (list, tuple)) and len(size) == 2:
            return int(size[1]), int(size[0])  # torchvision sizes are (h, w)
    return width, height


def _exif_datetime(image: Image.Image) -> datetime | None:
    try:
        exif = image.getexif()
        raw = exif.get_ifd(EXIF_IFD).get(EXIF_DATETIME_ORIGINAL) or exif.get(EXIF_DATETIME)
        return datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S") if raw else None
    except Exception:  # EXIF is advisory; a broken tag never costs the image
        return None


@dataclass
class DecodedImage:
    position: int  # index into the list of files being decoded
    pixels: object | None  # (3, H, W) float tensor, None on failure
    width: int = 0
    height: int = 0
    format: str | None = None
    taken_at: datetime | None = None
    error: str | None = None


class _DecodeDataset:
    """A map-style dataset over paths for torch's DataLoader (decodes in workers)."""

    def __init__(self, paths: list[str], preprocess, max_pixels: int):
        self.paths = paths
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> DecodedImage:
        try:
            pixels, w, h, fmt, taken = decode_image(
                self.paths[position], self.preprocess, self.max_pixels
            )
        except DecodeError as exc:
            return DecodedImage(position, None, error=str(exc))
        except Exception as exc:  # never let one odd file kill the worker pool
            return DecodedImage(position, None, error=f"unexpected error: {exc!r}")
        return DecodedImage(position, pixels, w, h, fmt, taken)


def _keep_list(batch: list[DecodedImage]) -> list[DecodedImage]:
    return batch


def _single_thread_worker(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # workers share the cores with the encoder


def decode_batches(
    paths: list[str], preprocess: Preprocess, batch_size: int, workers: int, max_pixels: int
):
    """Yield lists of DecodedImage, `batch_size` at a time, decoded `workers`-parallel.

    Decoding runs ahead of the consumer (prefetch), so it overlaps with encoding.
    """
    from torch.utils.data import DataLoader, Dataset

    # A map-style dataset by protocol (len, getitem): subclassing would import torch here.
    dataset = cast("Dataset[DecodedImage]", _DecodeDataset(paths, preprocess, max_pixels))
    workers = workers if len(paths) > batch_size else 0  # a pool costs more than tiny jobs
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_keep_list,
        worker_init_fn=_single_thread_worker if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    yield from loader


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))

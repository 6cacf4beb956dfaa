"""Thumbnails for the page: made on first request, EXIF orientation applied, kept on disk.

    DIR/thumbnails/{id}-{size}.jpg

An id's file never changes (a changed file gets a new id), so a kept thumbnail never goes
stale; one of a deleted image is simply never asked for again. Still, a thumbnail is
served only while the file is what was indexed (engine/indexed_files.py), kept or not, and is
made from the descriptor that check opened. On an index folder that cannot be written
(a read-only mount) thumbnails are made each time instead.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

from xmr.engine.indexed_files import open_indexed
from xmr.retrieval.errors import ItemNotFound
from xmr.retrieval.imageio import DecodeError, check_jpeg_scans, check_pixels

if TYPE_CHECKING:
    from xmr.engine.engine import Engine


THUMBNAIL_DIR = "thumbnails"


class Thumbnails:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.folder = Path(engine.directory) / THUMBNAIL_DIR

    def jpeg(self, image_id: int, size: int) -> bytes:
        kept = self.folder / f"{int(image_id)}-{int(size)}.jpg"
        record = self.engine.indexed_file(image_id)  # 404 for ids that are not images
        fd, _ = open_indexed(record)  # 404 / 409 unless it is still what was indexed
        with os.fdopen(fd, "rb") as file:
            try:
                return kept.read_bytes()
            except OSError:
                pass
            data = _make(file, size, image_id)
        _keep(kept, data)
        return data


def _make(file, size: int, image_id: int) -> bytes:
    try:
        with Image.open(file) as image:
            try:
                check_pixels(*image.size)
                if image.format == "JPEG":
                    check_jpeg_scans(file)
            except DecodeError as exc:
                raise ItemNotFound(f"image {image_id} is too large to preview ({exc})") from None
            image.draft("RGB", (size, size))  # JPEG: decode at a fraction of full size
            image = ImageOps.exif_transpose(image)
            image.thumbnail((size, size))
            out = io.BytesIO()
            image.convert("RGB").save(out, "JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ItemNotFound(f"the file of image {image_id} cannot be read now ({exc})") from exc
    return out.getvalue()


def _keep(path: Path, data: bytes) -> None:
    """Write-then-rename, so a reader never sees half a thumbnail; silently skipped where
    the index folder is read-only or full (the thumbnail is made again next time)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass

"""`xmr search --preview`: thumbnails inline in terminals that can show pictures.

Three protocols, picked from the environment as rclip's `-p` does (no query sent to the
terminal, so nothing waits for an answer that never comes):

  kitty   TERM=xterm-kitty, KITTY_WINDOW_ID, or TERM=xterm-ghostty: the kitty graphics
          protocol, a PNG sent base64 in APC chunks of at most 4096 bytes
          (ESC _G a=T,f=100,m=1; ...ESC \\ ... ESC _G m=0; ... ESC \\).
  iterm2  TERM_PROGRAM=iTerm.app or WezTerm, LC_TERMINAL=iTerm2: OSC 1337 File=...
          with the PNG base64 inline.
  sixel   TERM naming a sixel terminal (foot, mlterm, yaft, contour, or "sixel" in the
          name): the picture quantised to 64 colours and written as DEC sixel bands.

XMR_PREVIEW=kitty|iterm2|sixel|none overrides the guess. Nothing is drawn, and no escape
byte is written, when stdout is not a terminal (a pipe, a file): the results are plain
lines then, as without --preview.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping

PROTOCOLS = ("kitty", "iterm2", "sixel")
CHUNK = 4096  # the kitty protocol's largest payload per escape sequence
SIXEL_COLOURS = 64
_SIXEL_TERMS = ("foot", "mlterm", "yaft", "contour")


def detect(environ: Mapping[str, str], is_tty: bool) -> str | None:
    """The image protocol this terminal speaks ("kitty" | "iterm2" | "sixel"), or None:
    not a terminal, or one that shows no pictures (then results print as paths)."""
    if not is_tty:
        return None
    forced = environ.get("XMR_PREVIEW", "").strip().lower()
    if forced:
        return forced if forced in PROTOCOLS else None
    term = environ.get("TERM", "").lower()
    program = environ.get("TERM_PROGRAM", "")
    if term in ("xterm-kitty", "xterm-ghostty") or environ.get("KITTY_WINDOW_ID"):
        return "kitty"
    if program in ("iTerm.app", "WezTerm") or environ.get("LC_TERMINAL") == "iTerm2":
        return "iterm2"
    if "sixel" in term or term.startswith(_SIXEL_TERMS):
        return "sixel"
    return None


def png_bytes(image_bytes: bytes) -> bytes:
    """Any image PIL reads (the engine's JPEG thumbnails) -> PNG bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(image_bytes)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, "PNG")
    return out.getvalue()


def kitty(png: bytes, rows: int) -> str:
    """The kitty graphics protocol: transmit and display a PNG `rows` cells high, in
    base64 chunks of at most CHUNK bytes, the last with m=0."""
    data = base64.standard_b64encode(png).decode("ascii")
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [""]
    out = []
    for n, chunk in enumerate(chunks):
        more = 1 if n < len(chunks) - 1 else 0
        keys = f"a=T,f=100,r={rows},m={more}" if n == 0 else f"m={more}"
        out.append(f"\x1b_G{keys};{chunk}\x1b\\")
    return "".join(out)


def iterm2(png: bytes, rows: int) -> str:
    """iTerm2's inline image protocol (OSC 1337), `rows` cells high."""
    data = base64.standard_b64encode(png).decode("ascii")
    return f"\x1b]1337;File=inline=1;size={len(png)};height={rows};preserveAspectRatio=1:{data}\x07"


def sixel(image_bytes: bytes, colours: int = SIXEL_COLOURS) -> str:
    """DEC sixel: the picture quantised to `colours` colours (PIL's median cut), then
    written six pixel rows at a time, one pass per colour present in the band, with
    run-length encoding of repeated columns."""
    from PIL import Image

    with Image.open(io.BytesIO(image_bytes)) as source:
        image = source.convert("RGB").quantize(colours)
    width, height = image.size
    palette = image.getpalette() or []
    pixels = image.tobytes()  # one palette index a pixel, row by row
    used = sorted(set(pixels))
    out = [f'\x1bPq"1;1;{width};{height}']
    for index in used:  # colour registers, RGB in percent
        r, g, b = palette[3 * index : 3 * index + 3]
        out.append(f"#{index};2;{r * 100 // 255};{g * 100 // 255};{b * 100 // 255}")
    for top in range(0, height, 6):
        band = [pixels[(top + dy) * width : (top + dy + 1) * width] for dy in range(6)
                if top + dy < height]  # fmt: skip
        present = sorted({p for row in band for p in row})
        for n, index in enumerate(present):
            columns = []
            for x in range(width):
                bits = sum(1 << dy for dy, row in enumerate(band) if row[x] == index)
                columns.append(chr(63 + bits))
            out.append(f"#{index}{_run_length(''.join(columns))}")
            out.append("$" if n < len(present) - 1 else "-")  # same band again / next band
    out.append("\x1b\\")
    return "".join(out)


def _run_length(line: str) -> str:
    out, i = [], 0
    while i < len(line):
        j = i
        while j < len(line) and line[j] == line[i]:
            j += 1
        count = j - i
        out.append(f"!{count}{line[i]}" if count > 3 else line[i] * count)
        i = j
    return "".join(out)


def picture(protocol: str, image_bytes: bytes, rows: int) -> str:
    """The escape sequence that draws `image_bytes` in `protocol`."""
    if protocol == "sixel":
        return sixel(image_bytes)
    png = png_bytes(image_bytes)
    return kitty(png, rows) if protocol == "kitty" else iterm2(png, rows)


def stdout_is_tty() -> bool:
    import sys

    try:
        return os.isatty(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a test runner's captured stream
        return False

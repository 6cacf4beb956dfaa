"""`xmr search --preview`: thumbnails in the terminal's own image protocol, detected from
the environment; plain lines, without one escape byte, into a pipe.

The real `xmr` runs under a pseudo-terminal (pty), as a person's terminal runs it."""

from __future__ import annotations

import base64
import io
import os
import pty
import re
import select
import subprocess

import pytest
from conftest import XMR, make_images, run_xmr, xmr_env
from PIL import Image

from xmr.cli import preview

TERMINAL_VARS = ("TERM", "TERM_PROGRAM", "LC_TERMINAL", "KITTY_WINDOW_ID", "XMR_PREVIEW")
KITTY = re.compile(rb"\x1b_G([^;]*);([^\x1b]*)\x1b\\")
ITERM = re.compile(rb"\x1b\]1337;File=([^:]*):([^\x07]*)\x07")


@pytest.fixture
def preview_index(cli, tiny_spec, tmp_path):
    folder = tmp_path / "photos"
    make_images(folder, 5)
    index = tmp_path / "index"
    result = cli("index", folder, "--index", index, "--model", tiny_spec, "--workers", "0")
    assert result.exit_code == 0, result.output
    return index


def _env(**terminal: str) -> dict:
    env = xmr_env()
    for name in TERMINAL_VARS:
        env.pop(name, None)
    env.update(terminal)
    return env


def _search_in_pty(index, env: dict, k: int = 3) -> bytes:
    """`xmr search --preview` with stdout and stderr on a pseudo-terminal: all it wrote."""
    master, slave = pty.openpty()
    args = [str(XMR), "search", "a shape", "--preview", "--no-server", "-k", str(k)]
    process = subprocess.Popen(
        [*args, "--index", str(index)], stdout=slave, stderr=slave, stdin=slave, env=env
    )
    os.close(slave)
    out = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            process.kill()
            raise AssertionError(f"xmr search --preview stalled; so far: {bytes(out)[-300:]!r}")
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert process.wait(timeout=60) == 0, bytes(out)[-2000:]
    return bytes(out)


def _result_lines(out: bytes) -> list[str]:
    text = KITTY.sub(b"", ITERM.sub(b"", out)).decode(errors="replace")
    return [line for line in text.splitlines() if re.match(r"\s+\d+\s+[01]\.\d{3}\s+/", line)]


def test_kitty_gets_its_graphics_protocol_in_chunks_of_a_png(preview_index):
    out = _search_in_pty(preview_index, _env(TERM="xterm-kitty"))
    sequences = KITTY.findall(out)
    pictures, current = [], None
    for keys, payload in sequences:
        fields = dict(item.split(b"=", 1) for item in keys.split(b","))
        assert len(payload) <= preview.CHUNK
        if current is None:  # a picture starts: transmit and show a PNG
            assert fields[b"a"] == b"T" and fields[b"f"] == b"100"
            current = bytearray()
        current += payload
        if fields[b"m"] == b"0":
            pictures.append(base64.standard_b64decode(bytes(current)))
            current = None
        else:
            assert fields[b"m"] == b"1"
    assert current is None  # every picture ended with m=0
    assert len(pictures) == 3 == len(_result_lines(out))
    for png in pictures:
        assert png.startswith(b"\x89PNG")
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            assert 0 < max(image.size) <= 128


def test_a_picture_larger_than_one_chunk_is_split_with_every_chunk_in_bounds():
    noise = Image.effect_noise((128, 128), 80).convert("RGB")
    data = io.BytesIO()
    noise.save(data, "PNG")
    sequence = preview.kitty(data.getvalue(), rows=6).encode()
    found = KITTY.findall(sequence)
    assert len(found) > 2 and all(len(p) <= preview.CHUNK for _, p in found)
    assert base64.standard_b64decode(b"".join(p for _, p in found)) == data.getvalue()


def test_iterm2_gets_osc_1337_inline_files(preview_index):
    out = _search_in_pty(preview_index, _env(TERM="xterm-256color", TERM_PROGRAM="iTerm.app"))
    files = ITERM.findall(out)
    assert len(files) == 3 == len(_result_lines(out))
    assert not KITTY.search(out)
    for header, payload in files:
        fields = dict(item.split(b"=", 1) for item in header.split(b";"))
        data = base64.standard_b64decode(payload)
        assert fields[b"inline"] == b"1" and int(fields[b"size"]) == len(data)
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"


def test_sixel_terminal_gets_sixel_that_decodes_to_the_thumbnail(preview_index):
    out = _search_in_pty(preview_index, _env(TERM="foot"))
    images = re.findall(rb"\x1bPq(.*?)\x1b\\", out, flags=re.S)
    assert len(images) == 3 == len(_result_lines(out))
    width, height = map(int, re.match(rb'"1;1;(\d+);(\d+)', images[0]).groups())
    assert 0 < width <= 128 and 0 < height <= 128


def test_sixel_encoder_round_trips_the_quantised_picture():
    gradient = Image.linear_gradient("L").resize((37, 23)).convert("RGB")
    data = io.BytesIO()
    gradient.save(data, "PNG")
    decoded = _decode_sixel(preview.sixel(data.getvalue(), colours=16))
    quantised = gradient.quantize(16)
    palette = quantised.getpalette()
    want = [tuple(c * 100 // 255 for c in palette[3 * i : 3 * i + 3]) for i in quantised.tobytes()]
    assert decoded == (37, 23, want)


def _decode_sixel(sequence: str):
    """A small sixel reader: (width, height, [RGB-percent of each pixel, row by row])."""
    body = sequence[len("\x1bPq") : -len("\x1b\\")]
    header, body = re.match(r'"1;1;(\d+);(\d+)(.*)', body, flags=re.S).group(0, 3)
    width, height = map(int, re.match(r'"1;1;(\d+);(\d+)', header).groups())
    registers, pixels = {}, [None] * (width * height)
    for n, rgb in re.findall(r"#(\d+);2;(\d+;\d+;\d+)", body):
        registers[int(n)] = tuple(map(int, rgb.split(";")))
    body = re.sub(r"#\d+;2;\d+;\d+;\d+", "", body)
    top, x, colour = 0, 0, None
    for token in re.findall(r"#\d+|!\d+.|[?-~]|\$|-", body):
        if token.startswith("#"):
            colour, x = registers[int(token[1:])], x
        elif token == "$":
            x = 0
        elif token == "-":
            top, x = top + 6, 0
        else:
            count, char = (int(token[1:-1]), token[-1]) if token[0] == "!" else (1, token)
            bits = ord(char) - 63
            for _ in range(count):
                for dy in range(6):
                    if bits >> dy & 1 and top + dy < height:
                        pixels[(top + dy) * width + x] = colour
                x += 1
    return width, height, pixels


def test_a_pipe_gets_plain_lines_and_no_escape_byte(preview_index):
    result = run_xmr(
        "search", "a shape", "--preview", "--no-server", "-k", "3", "--index", preview_index,
        env=_env(TERM="xterm-kitty", KITTY_WINDOW_ID="1"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x1b" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(line.split()[2].endswith(".png") for line in lines)


def test_a_terminal_without_pictures_gets_plain_lines(preview_index):
    out = _search_in_pty(preview_index, _env(TERM="xterm-256color"))
    assert b"\x1b" not in out
    assert len(_result_lines(out)) == 3


@pytest.mark.parametrize(
    ("environ", "tty", "expected"),
    [
        ({"TERM": "xterm-kitty"}, True, "kitty"),
        ({"TERM": "xterm-256color", "KITTY_WINDOW_ID": "3"}, True, "kitty"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "iTerm.app"}, True, "iterm2"),
        ({"TERM": "xterm-256color", "LC_TERMINAL": "iTerm2"}, True, "iterm2"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, True, "iterm2"),
        ({"TERM": "foot"}, True, "sixel"),
        ({"TERM": "mlterm"}, True, "sixel"),
        ({"TERM": "xterm-256color"}, True, None),
        ({"TERM": "xterm-kitty"}, False, None),  # a pipe: never an escape code
        ({"TERM": "xterm-256color", "XMR_PREVIEW": "sixel"}, True, "sixel"),
        ({"TERM": "xterm-kitty", "XMR_PREVIEW": "none"}, True, None),
    ],
)
def test_the_protocol_comes_from_the_environment(environ, tty, expected):
    assert preview.detect(environ, tty) == expected

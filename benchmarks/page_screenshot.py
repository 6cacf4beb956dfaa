"""Screenshots of the `xmr serve` page for the docs, taken in Debian's Chromium.

    xmr demo --dir /tmp/page-demo -n 200 -q     # a corpus and its index (xmr-tiny)
    python benchmarks/page_screenshot.py --index /tmp/page-demo/index \
        --query "a green triangle" --out docs/images

Starts `xmr serve` on a free loopback port and, at 1280 and 390 px wide in the light and
the dark colour scheme, saves: the results of the query (serve-search-WIDTH-SCHEME.png),
the first result in the viewer with its descriptions (serve-viewer-WIDTH-SCHEME.png),
and the duplicates review (serve-duplicates-WIDTH-SCHEME.png); at 1280 light also more
like the first result (serve-like.png). Any xmr index works; the duplicates view shows
groups where the index has some (copy a few files into the folder and re-index).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import start_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
WIDTHS = {1280: 860, 390: 844}  # width -> height (a laptop; a phone)
SCHEMES = ("light", "dark")
# Every tile on the screen has its thumbnail (they fade in as they arrive).
TILES_LOADED = """() => {
  const imgs = Array.from(document.querySelectorAll('.tile img'))
    .filter(i => i.getBoundingClientRect().top < innerHeight);
  return imgs.length > 0 && imgs.every(i => i.classList.contains('loaded') && i.naturalWidth > 0);
}"""
SETTLE_MS = 1000  # the fade-in's transition


def _shoot(page, path: Path) -> None:
    page.mouse.move(1, 1)  # no hover state on a tile
    page.wait_for_timeout(SETTLE_MS)
    page.screenshot(path=str(path))
    print(path)


def _views(page, url: str, query: str, out: Path, suffix: str, like: bool) -> None:
    page.goto(url + "/")
    page.wait_for_selector("#examples .example")
    page.fill("#q", query)
    page.press("#q", "Enter")
    page.wait_for_function(TILES_LOADED)
    page.evaluate("document.activeElement.blur()")
    _shoot(page, out / f"serve-search-{suffix}.png")
    page.click(".tile >> nth=0")
    page.wait_for_selector("#viewer[open]")
    page.wait_for_function("document.querySelector('#viewer-img').naturalWidth > 0")
    page.click("#describe")
    page.wait_for_selector("#descriptions li, #viewer-message.error")
    page.evaluate("document.activeElement.blur()")
    _shoot(page, out / f"serve-viewer-{suffix}.png")
    if like:
        page.click("#more-like-this")
        page.wait_for_url("**like=**")
        page.wait_for_function(TILES_LOADED)
        _shoot(page, out / "serve-like.png")
    else:
        page.keyboard.press("Escape")
    page.goto(url + "/?view=duplicates")
    page.wait_for_function("document.querySelector('#status').textContent.length > 0")
    page.wait_for_function("!document.querySelector('#status').textContent.startsWith('Looking')")
    _shoot(page, out / f"serve-duplicates-{suffix}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--query", required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    process, url = start_server(args.index)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            for width, height in WIDTHS.items():
                for scheme in SCHEMES:
                    page = browser.new_page(
                        viewport={"width": width, "height": height},
                        color_scheme=scheme,
                    )
                    like = width == 1280 and scheme == "light"
                    _views(page, url, args.query, args.out, f"{width}-{scheme}", like)
                    page.close()
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=60)


if __name__ == "__main__":
    main()

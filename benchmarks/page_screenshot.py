"""Screenshots of the `xmr serve` page for the docs, taken in Debian's Chromium.

    python benchmarks/page_screenshot.py --index /tmp/xmr-bench-serve/n10000/index \
        --query "A little blue square is below a big red circle." --out docs/images

Starts `xmr serve` on a free loopback port, searches with the query, opens the first
result and asks for more like it, and saves the search and the similar views as PNG.
The index is any xmr index; bench_serve.py builds a 10,000-image one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import start_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
# Every tile in the first screenful has its thumbnail (they fade in as they arrive).
TILES_LOADED = """() => {
  const imgs = Array.from(document.querySelectorAll('.tile img')).slice(0, 24);
  return imgs.length > 0 && imgs.every(i => i.classList.contains('loaded') && i.naturalWidth > 0);
}"""
SETTLE_MS = 1000  # the fade-in's transition


def _shoot(page, path: Path) -> None:
    page.mouse.move(1, 1)  # no hover state on a tile
    page.wait_for_timeout(SETTLE_MS)
    page.screenshot(path=str(path))


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
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url + "/")
            page.wait_for_selector("#examples .example")
            page.fill("#q", args.query)
            page.press("#q", "Enter")
            page.wait_for_function(TILES_LOADED)
            page.evaluate("document.activeElement.blur()")
            _shoot(page, args.out / "serve-search.png")
            page.click(".tile >> nth=0")
            page.wait_for_selector("#viewer:not([hidden])")
            page.wait_for_function("document.querySelector('#viewer-img').naturalWidth > 0")
            page.click("#more-like-this")
            page.wait_for_url("**like=**")
            page.wait_for_function(TILES_LOADED)
            _shoot(page, args.out / "serve-like.png")
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=60)
    for name in ("serve-search.png", "serve-like.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()

"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright
(`executable_path`, never a browser download), against a real `xmr serve`.

The keyboard alone through a search and the viewer; "load more" against one bigger API
request; date order against the files' dates; the duplicates review's exports; and an
axe-core audit (tests/fixtures/axe.min.js, vendored from the npm registry) of each view.

Under CI (CI=true) a missing browser fails these tests; elsewhere they are skipped with the
command that installs one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlencode

import pytest
from conftest import Served, index_with, make_images, run_xmr

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = Path(__file__).parent / "fixtures" / "axe.min.js"
N_IMAGES = 90
COPIES = 3  # img0000..img0002 each have a byte-identical copy: three duplicate groups
BASE_TIME = 1_600_000_000
TILE_IDS = "Array.from(document.querySelectorAll('#grid .tile'), t => Number(t.dataset.id))"


SWIPE = """([from, to]) => {
  const viewer = document.querySelector('#viewer');
  const touch = (x) => new Touch({identifier: 1, target: viewer, clientX: x, clientY: 300});
  const send = (kind, x) => viewer.dispatchEvent(
    new TouchEvent(kind, {changedTouches: [touch(x)], bubbles: true}));
  send('touchstart', from);
  send('touchend', to);
}"""


def _browser_or_fail():
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is missing (pip install -e '.[dev]')"
    if missing and os.environ.get("CI"):
        pytest.fail(f"browser test cannot run under CI: {missing}")
    if missing:
        pytest.skip(missing)


@pytest.fixture(scope="module")
def page_server(tmp_path_factory, encoder):
    root = tmp_path_factory.mktemp("page")
    folder = root / "photos"
    paths = make_images(folder, N_IMAGES, start_seed=300)
    for i in range(COPIES):
        shutil.copy(folder / f"img{i:04d}.png", folder / f"copy{i:04d}.png")
    for i, path in enumerate(sorted(folder.iterdir())):  # dates unrelated to names
        when = BASE_TIME + ((i * 41) % (N_IMAGES + COPIES)) * 86400
        os.utime(path, (when, when))
    assert len(paths) == N_IMAGES
    index_dir = root / "index"
    index_with(index_dir, encoder, [folder])
    corpus = root / "captions.txt"
    corpus.write_text("a red square\na blue circle on green\nthree yellow shapes\n")
    result = run_xmr("add-texts", corpus, "--index", index_dir, "-q")
    assert result.returncode == 0, result.stderr
    server = Served(index_dir)
    yield server
    server.stop()


@pytest.fixture
def browser(tmp_path):
    _browser_or_fail()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
            accept_downloads=True,
        )
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        context.close()
        assert not errors, errors


def _search(page, url: str, text: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector("#examples .example")
    page.fill("#q", text)
    page.press("#q", "Enter")
    page.wait_for_function(f"{TILE_IDS}.length > 0")


def _api_ids(server, **fields) -> list[int]:
    status, answer = server.json("/api/search?" + urlencode(fields))
    assert status == 200
    return [hit["id"] for hit in answer["results"]]


def _focused(page) -> dict:
    return page.evaluate(
        "() => ({id: document.activeElement.id, tile: document.activeElement.dataset.id,"
        " tag: document.activeElement.tagName})"
    )


def test_the_keyboard_alone_searches_opens_walks_and_closes_the_viewer(page_server, browser):
    page = browser
    page.goto(page_server.url + "/")
    page.wait_for_selector("#examples .example")
    for _ in range(6):  # Tab from the top of the page reaches the search box
        page.keyboard.press("Tab")
        if _focused(page)["id"] == "q":
            break
    assert _focused(page)["id"] == "q"
    page.keyboard.type("a small red square")
    page.keyboard.press("Enter")
    page.wait_for_function(f"{TILE_IDS}.length === 40")  # a page of the server's k
    assert "q=a+small+red+square" in page.url
    ids = page.evaluate(TILE_IDS)
    assert ids == _api_ids(page_server, q="a small red square", k=40)
    for _ in range(30):  # on through the controls to the first tile
        page.keyboard.press("Tab")
        if _focused(page)["tile"]:
            break
    assert _focused(page)["tile"] == str(ids[0])
    page.keyboard.press("Tab")
    assert _focused(page)["tile"] == str(ids[1])

    page.keyboard.press("Enter")  # the second tile opens the viewer: a modal dialog
    page.wait_for_selector("#viewer[open]")
    assert page.evaluate("document.querySelector('#viewer').matches(':modal')")
    src = "document.querySelector('#viewer-img').getAttribute('src')"
    assert page.evaluate(src).endswith(f"/api/images/{ids[1]}")
    page.keyboard.press("ArrowRight")
    assert page.evaluate(src).endswith(f"/api/images/{ids[2]}")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert page.evaluate(src).endswith(f"/api/images/{ids[0]}")
    page.keyboard.press("ArrowRight")
    for _ in range(12):  # focus stays inside the modal whatever Tab does
        page.keyboard.press("Tab")
        inside = page.evaluate("document.querySelector('#viewer').contains(document.activeElement)")
        assert inside
    page.keyboard.press("Escape")
    page.wait_for_function("!document.querySelector('#viewer').open")
    assert _focused(page)["tile"] == str(ids[1])  # back on the tile of the result shown


def test_the_images_texts_radiogroup_moves_with_arrow_keys(page_server, browser):
    page = browser
    _search(page, page_server.url, "a red square")
    page.focus(".segmented [aria-checked=true]")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("document.querySelectorAll('.text-card').length > 0")
    checked = page.eval_on_selector(".segmented [aria-checked=true]", "b => b.dataset.target")
    assert checked == "texts" and "target=texts" in page.url
    assert page.evaluate("document.activeElement.dataset.target") == "texts"
    assert page.get_attribute("#filters-toggle", "aria-expanded") == "false"
    page.click("#filters-toggle")
    assert page.get_attribute("#filters-toggle", "aria-expanded") == "true"
    assert page.is_visible("#filters")


def test_load_more_gives_results_41_to_80_of_one_k_80_request(page_server, browser):
    page = browser
    _search(page, page_server.url, "a blue circle")
    first = page.evaluate(TILE_IDS)
    assert len(first) == 40
    page.click("#load-more")
    page.wait_for_function(f"{TILE_IDS}.length === 80")
    both = page.evaluate(TILE_IDS)
    assert both == _api_ids(page_server, q="a blue circle", k=80)
    page.click("#load-more")
    page.wait_for_function(f"{TILE_IDS}.length === {N_IMAGES + COPIES}")
    assert page.is_hidden("#more")  # nothing further to load


def test_order_by_date_matches_the_files_dates(page_server, browser):
    page = browser
    _search(page, page_server.url, "a blue circle")
    page.select_option("#order", "oldest")
    page.wait_for_url("**order=oldest**")
    page.wait_for_function("document.querySelector('#status').textContent.includes('oldest first')")
    status, answer = page_server.json(
        "/api/search?" + urlencode({"q": "a blue circle", "k": 40, "order": "oldest"})
    )
    paths = {hit["id"]: hit["path"] for hit in answer["results"]}
    ids = page.evaluate(TILE_IDS)
    assert ids == [hit["id"] for hit in answer["results"]]
    dates = [os.stat(paths[i]).st_mtime for i in ids]
    assert dates == sorted(dates)  # the files' own dates, oldest first

    page.fill("#min_score", "0.5")  # a range input: fill sets its value and fires events
    page.dispatch_event("#min_score", "change")
    page.wait_for_url("**min_score=0.5**")
    page.wait_for_function("document.querySelector('#cut-note').textContent.includes('cut')")
    note = page.text_content("#cut-note")
    status, cut = page_server.json(
        "/api/search?"
        + urlencode({"q": "a blue circle", "k": 40, "order": "oldest", "min_score": 0.5})
    )
    assert note == f"{cut['below_min_score']} cut below 0.50"
    assert page.evaluate(TILE_IDS) == [hit["id"] for hit in cut["results"]]


def test_the_duplicates_review_exports_the_paths_not_kept(page_server, browser, tmp_path):
    page = browser
    page.goto(page_server.url + "/?view=duplicates")
    page.wait_for_selector(".dup-group")
    status, api = page_server.json("/api/duplicates")
    groups = api["groups"]
    assert len(groups) == COPIES == page.locator(".dup-group").count()
    facts = page.text_content(".dup-group >> nth=0")
    item = groups[0]["items"][0]
    for shown in (item["path"], f"{item['width']} × {item['height']}", item["format"]):
        assert shown in facts
    # the first of each group is kept unless a person ticks otherwise: keep both of group 1
    boxes = page.locator(".dup-group >> nth=0").locator("input[type=checkbox]")
    boxes.nth(1).check()
    with page.expect_download() as got:
        page.click("#export-txt")
    listed = Path(got.value.path()).read_text().splitlines()
    expected = [g["items"][1]["path"] for g in groups[1:]]
    assert listed == expected
    with page.expect_download() as got:
        page.click("#export-json")
    review = json.loads(Path(got.value.path()).read_text())
    assert [g["others"] for g in review["groups"]] == [[]] + [[p] for p in expected]
    assert review["groups"][0]["keep"] == [i["path"] for i in groups[0]["items"]]
    assert all(Path(p).exists() for g in groups for p in (i["path"] for i in g["items"]))


def _audit(page) -> list[dict]:
    """axe-core's violations of impact serious or critical on the page as it is now."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=AXE.read_text())
    found = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious_in_any_view(page_server, browser, scheme):
    page = browser
    page.emulate_media(color_scheme=scheme)
    _search(page, page_server.url, "a red square")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.tile img')).slice(0, 8)"
        ".every(i => i.classList.contains('loaded'))"
    )
    assert _audit(page) == [], "search results"
    page.click("#filters-toggle")
    assert _audit(page) == [], "filters open"
    page.click(".tile >> nth=0")
    page.wait_for_selector("#viewer[open]")
    page.click("#describe")
    page.wait_for_selector("#descriptions li")
    assert _audit(page) == [], "the viewer"
    page.keyboard.press("Escape")
    page.click("#duplicates-link")
    page.wait_for_selector(".dup-group")
    assert _audit(page) == [], "the duplicates review"


def test_more_like_this_pins_the_query_and_describe_shows_failures(page_server, browser):
    page = browser
    _search(page, page_server.url, "a small red square")
    clicked = page.evaluate(TILE_IDS)[0]
    page.click(".tile >> nth=0")
    page.wait_for_selector("#viewer[open]")
    page.click("#copy-path")
    page.wait_for_function(
        "document.querySelector('#viewer-message').textContent === 'Path copied.'"
    )
    path = page.text_content("#viewer-title")
    assert page.evaluate("navigator.clipboard.readText()") == path

    page.route(
        "**/api/search?*target=texts*",
        lambda route: route.fulfill(
            status=503, content_type="application/json", body='{"error": "model thread busy"}'
        ),
    )
    page.click("#describe")
    page.wait_for_function("document.querySelector('#viewer-message').classList.contains('error')")
    assert page.text_content("#viewer-message") == "Describe failed: model thread busy"
    page.unroute("**/api/search?*target=texts*")

    page.click("#more-like-this")
    page.wait_for_url(f"**like={clicked}**")
    page.wait_for_function(f"{TILE_IDS}.length > 0 && !{TILE_IDS}.includes({clicked})")
    pinned = page.text_content("#pinned")
    assert f"image {clicked}" in pinned and "stage 1 only" in pinned
    assert page.get_attribute("#pinned img", "src").startswith(f"/api/images/{clicked}/")
    similar = page.evaluate(TILE_IDS)
    assert similar == _api_ids(page_server, like=clicked, k=40)
    page.reload()  # the query lives in the address: a reload shows the same results
    page.wait_for_function(f"{TILE_IDS}.length > 0")
    assert page.evaluate(TILE_IDS) == similar


def test_tiles_name_their_file_and_score_and_tiny_pictures_stay_sharp(page_server, browser):
    page = browser
    page.set_viewport_size({"width": 390, "height": 844})
    _search(page, page_server.url, "a red square")
    page.wait_for_function("document.querySelector('.tile img').classList.contains('loaded')")
    status, answer = page_server.json("/api/search?" + urlencode({"q": "a red square", "k": 40}))
    first = answer["results"][0]
    caption = page.text_content(".tile >> nth=0 >> .cap")
    assert Path(first["path"]).name in caption and f"{first['score']:.2f}" in caption
    style = page.eval_on_selector(
        ".tile img", "i => [getComputedStyle(i).imageRendering, i.naturalWidth, i.width]"
    )
    assert style[0] == "pixelated" and style[1] == 48 and style[2] > 48
    page.click(".tile >> nth=0")  # the viewer: a tiny picture scaled up, pixel by pixel
    page.wait_for_function("document.querySelector('#viewer-img').classList.contains('small')")
    rendering = page.eval_on_selector("#viewer-img", "i => getComputedStyle(i).imageRendering")
    assert rendering == "pixelated"
    ids = page.evaluate(TILE_IDS)
    src = "document.querySelector('#viewer-img').getAttribute('src')"
    page.evaluate(SWIPE, [300, 60])  # a finger from right to left: the next result
    assert page.evaluate(src).endswith(f"/api/images/{ids[1]}")
    page.evaluate(SWIPE, [60, 300])
    assert page.evaluate(src).endswith(f"/api/images/{ids[0]}")
    page.keyboard.press("Escape")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing sticks out sideways at a phone's width

"""The search page in a real browser: Debian's Chromium, headless, driven by Playwright.

A uvicorn server on 127.0.0.1 (a free port) serves a store built with a tiny model; the test
types a query and sees thumbnails, searches with an uploaded image and with a dropped one, opens
a result, asks "where in this image?", classifies it and follows "more like this". Screenshots
go to ``artifacts/browser/`` at the repository root (printed at the end).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from clipsearch.server import create_app
from test_server import build_store, item_by_name, make_collection, running_server

CHROMIUM = Path(os.environ.get("CLIPSEARCH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "browser"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def served(tiny_hf_clip: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("browser")
    store = build_store(tiny_hf_clip, folder / "store", make_collection(folder / "collection"))
    with running_server(create_app(store)) as url:
        yield url, store, folder / "collection"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: the browser test needs Debian's chromium; `make test` installs it "
            "(apt-get install -y chromium), or set CLIPSEARCH_CHROMIUM to another Chromium binary",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # launch() gives every run a fresh temporary profile (user-data-dir)
        instance = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


def test_search_page_in_a_real_browser(served, browser) -> None:
    url, store, collection = served
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    shots: list[Path] = []
    problems: list[str] = []

    context = browser.new_context(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    external: list[str] = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None)

    def shot(name: str) -> None:
        path = ARTIFACTS / f"{len(shots) + 1:02d}-{name}.png"
        page.wait_for_function("() => document.getAnimations().every(a => a.playState !== 'running')")
        page.screenshot(path=str(path))
        shots.append(path)

    def wait_for_thumbnails(count: int) -> None:
        page.wait_for_function(
            "n => [...document.querySelectorAll('.card img')].filter(i => i.complete && i.naturalWidth > 0).length >= n",
            arg=count,
        )

    def wait_for_status(text: str) -> None:
        page.wait_for_function("t => document.querySelector('#status').textContent.includes(t)", arg=text)

    # 1. the page, then a typed query: results with thumbnails and scores
    page.goto(url + "/")
    page.wait_for_selector("#hero-stats:not(:empty)")
    assert "9 images · 3 texts" in page.inner_text("#hero-stats")
    assert page.is_hidden("#rerank-label")  # a CLIP checkpoint has no grid cells to rerank with
    shot("empty-page")
    page.fill("#q", "a red circle")
    page.press("#q", "Enter")
    wait_for_status("results for “a red circle”")
    wait_for_thumbnails(6)
    cards = page.locator(".card")
    assert cards.count() == 12
    images = page.locator(".card img")
    assert images.count() == 9
    assert {images.nth(i).get_attribute("loading") for i in range(images.count())} == {"lazy"}
    assert page.locator(".card.text-card").count() == 3
    # "All" in a store of both kinds: one list, images and texts ranked together by calibrated
    # confidence, each card with its confidence in a word and a bar
    assert page.locator(".group-title").count() == 0
    confidences = [float(c) for c in page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.confidence)")]
    assert confidences == sorted(confidences, reverse=True) and all(0 <= c <= 1 for c in confidences)
    words = page.locator(".card .match").all_inner_texts()
    assert len(words) == 12 and set(w.lower() for w in words) <= {"strong", "good", "weak", "none"}
    assert "12 results for “a red circle”" in page.inner_text("#status")
    shown_none = page.locator(".no-match").count() == 1
    assert shown_none == all(w.lower() in ("weak", "none") for w in words)  # said exactly when no result is good
    assert "q=a+red+circle" in page.url
    shot("text-query")

    # 1b. when the server finds no good match, the page says so plainly above the nearest results
    def nothing_good(route) -> None:
        response = route.fetch()
        hits = [{**h, "good_match": False, "match": "none"} for h in response.json()]
        route.fulfill(response=response, json=hits)

    page.route("**/api/search?*", nothing_good)
    page.fill("#q", "a photo of a giraffe")
    page.press("#q", "Enter")
    wait_for_status("results for “a photo of a giraffe”")
    assert page.locator(".no-match").inner_text().startswith("No good match")
    assert page.inner_text("#status").startswith("No good match")
    shot("no-good-match")
    page.unroute("**/api/search?*", nothing_good)
    page.fill("#q", "a red circle")
    page.press("#q", "Enter")
    wait_for_status("results for “a red circle”")

    # 2. the modality switch
    page.click(".segmented button[data-modality=image]")
    page.wait_for_function("() => document.querySelectorAll('.card').length === 9 && !document.querySelector('.card.text-card')")
    wait_for_thumbnails(9)

    # 3. search with an uploaded image: the same picture comes first, at cosine 1
    hopper = item_by_name(store, "hopper.jpg")
    page.fill("#q", "")
    page.set_input_files("#file", str(collection / "hopper.jpg"))
    page.wait_for_selector("#image-chip:not([hidden])")
    wait_for_status("results for image hopper.jpg")
    assert page.locator(".card").first.get_attribute("data-id") == hopper.id
    wait_for_thumbnails(3)
    assert page.locator(".card .score").first.inner_text() == "1.000"
    assert "image hopper.jpg" in page.inner_text("#status")
    shot("image-query")

    # 4. an image dropped onto the page
    flower = item_by_name(store, "flower.jpg")
    page.evaluate(
        """async (id) => {
            const blob = await (await fetch(`/api/items/${id}/image`)).blob();
            const dt = new DataTransfer();
            dt.items.add(new File([blob], "dropped.jpg", {type: blob.type}));
            document.dispatchEvent(new DragEvent("dragenter", {dataTransfer: dt, bubbles: true}));
            document.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        }""",
        flower.id,
    )
    wait_for_status("results for image dropped.jpg")
    assert page.locator(".card").first.get_attribute("data-id") == flower.id
    assert page.inner_text("#chip-name") == "dropped.jpg"
    assert page.is_hidden("#drop-overlay")

    # 5. open the first result: the full image and its metadata
    page.click("#chip-clear")
    page.fill("#q", "a flower")
    page.press("#q", "Enter")
    wait_for_status("results for “a flower”")
    page.click(f".card[data-id='{flower.id}']")
    page.wait_for_selector("#viewer[open]")
    page.wait_for_function("() => { const i = document.querySelector('#viewer-img'); return i.complete && i.naturalWidth > 0; }")
    page.wait_for_function("() => document.querySelector('#viewer-meta').textContent.includes('File size')")
    meta = page.inner_text("#viewer-meta")
    assert "flower.jpg" in meta and f"{flower.width} × {flower.height}" in meta

    # 6. where in this image? (relevance map over the image) and classify
    assert page.is_visible("#where") and page.is_visible("#classify")
    page.fill("#where-q", "a flower")
    page.click("#where-form button")
    page.wait_for_function("() => { const i = document.querySelector('#viewer-overlay'); return !i.hidden && i.complete && i.naturalWidth > 0; }")
    page.fill("#labels", "flower, dog, car")
    page.click("#classify-form button")
    page.wait_for_function("() => document.querySelectorAll('#classify-out .track').length === 3")
    labels = page.locator("#classify-out li > span:first-child").all_inner_texts()
    assert sorted(labels) == ["car", "dog", "flower"]
    shot("viewer")

    # 7. more like this
    page.click("#more-like")
    page.wait_for_selector("#viewer", state="hidden")
    wait_for_status("results like flower.jpg")
    assert page.locator(f".card[data-id='{flower.id}']").count() == 0
    wait_for_thumbnails(3)
    shot("more-like-this")

    # 8. narrow screens, and the dark colour scheme
    page.set_viewport_size({"width": 420, "height": 860})
    shot("narrow")
    page.set_viewport_size({"width": 1280, "height": 860})
    page.emulate_media(color_scheme="dark")
    shot("dark")
    context.close()

    assert not problems, problems
    assert not external, f"the page fetched from elsewhere: {external}"
    for path in shots:
        assert path.stat().st_size > 5_000
        print(f"screenshot: {path}")

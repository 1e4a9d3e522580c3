"""A person in headless Chromium: type a query, upload a picture, see ranked thumbnails.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` test extra; skipped without
them. Set ``IMGSEARCH_SCREENSHOT=path.png`` to keep a screenshot of the page (the README's is made so).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from datasette_imgsearch.images.toyworld import draw_image, label_of

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromium-driver"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(shared_catalog: Path) -> Iterator[str]:
    """``datasette photos.db`` on a loopback port, as a person would start it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "datasette", "serve", str(shared_catalog), "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/-/versions.json", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1000",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the page")


# The page replaces the results section when an upload finishes, so every read is one script run:
# an element handle held across the swap would go stale.
def result_names(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('.imgsearch-grid a.name')].map(a => a.getAttribute('title'));"
    )


def results_text(driver) -> str:
    return driver.execute_script("const r = document.getElementById('imgsearch-results'); return r ? r.innerText : '';")


def thumbnails_loaded(driver) -> bool:
    return driver.execute_script(
        "const images = [...document.querySelectorAll('.imgsearch-grid img')];"
        "images.forEach(i => i.scrollIntoView());"
        "return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);"
    )


def test_typing_a_query_and_uploading_an_image(server: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server + "/photos/images")
    menu_link = browser.find_element(By.CSS_SELECTOR, "a[href$='/photos/images/-/imgsearch']")
    browser.get(menu_link.get_attribute("href"))

    box = browser.find_element(By.NAME, "q")
    box.send_keys("a red circle", Keys.ENTER)
    wait_for(lambda: result_names(browser))
    names = result_names(browser)
    assert "results for" in results_text(browser)
    assert all(label_of(name) == ("red", "circle") for name in names[:4]), names
    wait_for(lambda: thumbnails_loaded(browser))

    picture = tmp_path / "reference.png"
    draw_image("blue", "square", random.Random(4242)).save(picture)
    browser.find_element(By.NAME, "image").send_keys(str(picture))  # the page uploads as soon as a file is chosen
    wait_for(lambda: "for the uploaded image" in results_text(browser))
    wait_for(lambda: browser.execute_script("return !!document.querySelector('#imgsearch-upload-preview img')"))
    names = result_names(browser)
    assert all(label_of(name) == ("blue", "square") for name in names[:4]), names
    wait_for(lambda: thumbnails_loaded(browser))
    browser.execute_script("window.scrollTo(0, 0)")
    if os.environ.get("IMGSEARCH_SCREENSHOT"):
        browser.save_screenshot(os.environ["IMGSEARCH_SCREENSHOT"])


def current_query(driver) -> dict[str, list[str]]:
    import urllib.parse

    return urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query)


def test_filters_facets_the_strong_box_and_a_row_preview(server: str, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server + "/photos/images/-/imgsearch?q=a+circle&k=12&name__startswith=blue-&_facet=format")
    wait_for(lambda: result_names(browser))
    assert all(label_of(name)[0] == "blue" for name in result_names(browser))
    assert "Ranking only rows where name starts with" in results_text(browser)
    facet = browser.execute_script(
        "const a = document.querySelector('.imgsearch-facets a'); return a ? [a.innerText, a.getAttribute('href')] : null;"
    )
    assert facet is not None and facet[0] == "JPEG", facet
    browser.get(server + facet[1])  # the facet value narrows the same search
    wait_for(lambda: current_query(browser).get("format") == ["JPEG"] and result_names(browser))

    box = browser.find_element(By.NAME, "q")
    box.clear()
    box.send_keys("a square", Keys.ENTER)  # a new query keeps the filters and the facet
    wait_for(lambda: current_query(browser).get("q") == ["a square"] and result_names(browser))
    query = current_query(browser)
    assert query["name__startswith"] == ["blue-"] and query["format"] == ["JPEG"] and query["_facet"] == ["format"]
    assert all(label_of(name) == ("blue", "square") for name in result_names(browser)[:4])
    assert browser.execute_script("return document.querySelectorAll('.imgsearch-grid .strength.strong').length") >= 4

    box = browser.find_element(By.NAME, "q")
    box.clear()
    box.send_keys("xyzzy plugh")
    browser.find_element(By.CSS_SELECTOR, "input[name=min_score]").click()  # strong matches only
    box.send_keys(Keys.ENTER)
    wait_for(lambda: current_query(browser).get("min_score") == ["strong"])
    wait_for(lambda: "0 results" in results_text(browser))

    browser.get(server + "/photos/images/-/imgsearch?q=row%3A3")
    wait_for(lambda: browser.execute_script(
        "const i = document.querySelector('.imgsearch-reference img'); return !!i && i.complete && i.naturalWidth > 0;"))
    if os.environ.get("IMGSEARCH_SCREENSHOT_FILTERS"):
        browser.get(server + "/photos/images/-/imgsearch?q=a+square&k=12&name__startswith=blue-&_facet=format")
        wait_for(lambda: thumbnails_loaded(browser))
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(os.environ["IMGSEARCH_SCREENSHOT_FILTERS"])


def pictures_in_view(driver) -> int:
    return driver.execute_script(
        "return [...document.querySelectorAll('.imgsearch-grid li')].filter(li => {"
        "  const r = li.getBoundingClientRect(); return r.top >= 0 && r.bottom <= window.innerHeight; }).length;"
    )


def test_the_gallery_shows_fifteen_pictures_on_a_laptop_screen_and_never_scrolls_sideways_on_a_phone(
    server: str, browser
) -> None:
    def viewport(width: int, height: int) -> None:  # the page's own size, as a 1280x800 screen shows it
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    viewport(1280, 800)
    browser.get(server + "/photos/images/-/imgsearch?_sort=name")
    wait_for(lambda: thumbnails_loaded(browser))
    browser.execute_script("window.scrollTo(0, 0)")
    assert result_names(browser)[:2] == sorted(result_names(browser))[:2]  # sorted by name, no query
    size = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    assert pictures_in_view(browser) >= 15, (pictures_in_view(browser), size)
    if os.environ.get("IMGSEARCH_SCREENSHOT_GALLERY"):
        browser.save_screenshot(os.environ["IMGSEARCH_SCREENSHOT_GALLERY"])
    for path in ("/photos/images/-/imgsearch?q=a+red+circle", "/photos/images/-/imgsearch", "/-/imgsearch"):
        viewport(400, 800)
        browser.get(server + path)
        wait_for(lambda: browser.execute_script("return document.readyState") == "complete")
        overflow = browser.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, (path, overflow)
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

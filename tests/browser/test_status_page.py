"""The status page in a real browser: headless Chromium (Debian's), driven by Selenium.

The daemon runs as in the integration tests; the browser opens its page and watches it change
without reloading. Nothing is downloaded: the browser and its driver are the system's
(``scripts/test`` installs ``chromium`` and ``chromium-driver``). The screenshot of the README
is taken here: ``DRONESYNC_SCREENSHOT=docs/status-page.png`` writes it there too.
"""

from __future__ import annotations

import http.server
import os
import random
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import webpage
from tests.conftest import Box, wait_until

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DEADLINE_S = 60

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()) and not shutil.which("chromedriver"),
    reason="Chromium and its driver are not installed: apt-get install chromium chromium-driver"
    " (scripts/test does, as root)",
)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1000,760",
        "--no-first-run",
    ):
        options.add_argument(argument)
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    """Wait for ``condition`` on the page, failing with ``what`` after the deadline."""
    return WebDriverWait(driver, DEADLINE_S, poll_frequency=0.1).until(condition, message=what)


def _images(folder: Path, count: int, rng: random.Random, size: int = 60_000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"DJI_{i:04d}.JPG").write_bytes(rng.randbytes(size))


def _progress(driver: WebDriver, name: str) -> tuple[int, int] | None:
    """(value, max) of a dataset's progress bar on the page, or None while it is not shown."""
    found = driver.execute_script(
        "const a = [...document.querySelectorAll('article.ds')]"
        "  .find(x => x.dataset.name === arguments[0]);"
        "if (!a) return null; const p = a.querySelector('progress');"
        "return [p.value, p.max];",
        name,
    )
    return None if found is None else (int(found[0]), int(found[1]))


def _block_text(driver: WebDriver, name: str) -> str:
    text = driver.execute_script(
        "const a = [...document.querySelectorAll('article.ds')]"
        "  .find(x => x.dataset.name === arguments[0]);"
        "return a ? a.innerText : '';",
        name,
    )
    return str(text)


def _save(driver: WebDriver, tmp_path: Path) -> Path:
    shot = tmp_path / "status-page.png"
    assert driver.save_screenshot(str(shot))
    wanted = os.environ.get("DRONESYNC_SCREENSHOT")
    if wanted:
        shutil.copyfile(shot, wanted)
    return shot


def test_a_dataset_progresses_live_and_a_failed_file_shows_its_error(
    box: Box, browser: WebDriver, tmp_path: Path
) -> None:
    # 12 x 60 kB at 120 kB/s: about six seconds of visible progress.
    box.write_config(upload="bandwidth_limit = 120000\nattempts = 1\nquick_retries = 0")
    box.archive.mkdir()
    (box.archive / "blocked").write_text("a file where the dataset's folder goes")
    rng = random.Random(7)
    _images(box.inbox / "blocked", 2, rng, size=20_000)
    proc = box.start()
    browser.get(webpage.page_url(box.state))
    assert "dronesync" in browser.title
    browser.execute_script("window.notReloaded = true")

    _images(box.inbox / "survey-north", 12, rng)  # arrives while the page is open
    first = until(browser, lambda d: _progress(d, "survey-north"), "the new dataset on the page")
    until(
        browser,
        lambda d: (p := _progress(d, "survey-north")) and first[0] < p[0] < p[1],
        "the progress bar to move",
    )
    until(browser, lambda d: "/s" in _block_text(d, "survey-north"), "a rate and an ETA")
    until(browser, lambda d: "failed" in _block_text(d, "blocked"), "the failed files")
    _save(browser, tmp_path)
    until(
        browser,
        lambda d: "processed" in _block_text(d, "survey-north"),
        "the dataset processed",
    )
    assert _progress(browser, "survey-north") == (12, 12)
    assert browser.execute_script("return window.notReloaded") is True

    browser.get(webpage.page_url(box.state) + "datasets/blocked?status=failed")
    rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 2
    assert all("a file is where a folder should be" in row.text for row in rows), rows[0].text
    assert box.stop(proc) == 0


def test_retry_all_brings_failed_files_back(box: Box, browser: WebDriver) -> None:
    box.write_config(upload="attempts = 1\nquick_retries = 0")
    box.archive.mkdir()
    (box.archive / "blocked").write_text("a file where the dataset's folder goes")
    _images(box.inbox / "blocked", 3, random.Random(8), size=10_000)
    proc = box.start()
    browser.get(webpage.page_url(box.state))
    until(browser, lambda d: "3 failed" in _block_text(d, "blocked"), "three failed files")
    (box.archive / "blocked").unlink()
    browser.execute_script("window.notReloaded = true")

    browser.find_element(By.XPATH, "//button[text()='Retry all failed files']").click()
    until(
        browser,
        lambda d: "3 failed file(s) back to waiting" in d.find_element(By.ID, "live").text,
        "the daemon's answer on the page",
    )
    browser.execute_script("window.notReloaded = true")  # the form's answer was a new page
    until(browser, lambda d: "processed" in _block_text(d, "blocked"), "processed after retry")
    assert browser.execute_script("return window.notReloaded") is True
    shown = _block_text(browser, "blocked")
    assert "3 uploaded" in shown
    assert "3 failed" not in shown
    assert box.stop(proc) == 0


class _EvilSite(http.server.BaseHTTPRequestHandler):
    """Another origin's page that posts to the box's page as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><title>cute drones</title>"
            f'<form id=f method=post action="{self.target}api/retry">'
            "<input name=csrf value=guess><input name=next value=/></form>"
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


def test_a_post_from_another_origin_is_refused(box: Box, browser: WebDriver) -> None:
    box.write_config(upload="attempts = 1\nquick_retries = 0")
    box.archive.mkdir()
    (box.archive / "blocked").write_text("a file where the dataset's folder goes")
    _images(box.inbox / "blocked", 2, random.Random(9), size=10_000)
    proc = box.start()
    url = webpage.page_url(box.state)
    wait_until(lambda: box.datasets().get("blocked", {}).get("files", {}).get("failed") == 2)
    handler = type("Evil", (_EvilSite,), {"target": url})
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{evil.server_address[1]}/")
        until(browser, lambda d: "refused" in d.page_source, "the page's refusal")
        assert "another site" in browser.page_source
        # A script's fetch, which needs no form, is refused the same way.
        status = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {method: 'POST', mode: 'no-cors', body: 'csrf=x'})"
            "  .then(() => done('sent'), e => done(String(e)));",
            url + "api/retry",
        )
        assert status == "sent"  # the browser sent it; the daemon refused it
    finally:
        evil.shutdown()
        evil.server_close()
    assert not list((box.state / "requests").glob("*.json"))
    assert "request applied" not in box.log()
    assert box.datasets()["blocked"]["files"]["failed"] == 2
    assert box.stop(proc) == 0

"""``s2mts2 serve`` in a real browser: headless Chromium (selenium) uploads real images and
browses a split. Skipped without ../shared/data, selenium or a Chromium with its chromedriver
(Debian: ``apt-get install chromium chromium-driver``).

Screenshots go to the test's temporary folder, or to ``$S2MTS2_SCREENSHOT_DIR`` when set.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from s2mts2.infer.serve.app import create_app  # noqa: E402
from s2mts2.infer.serve.run import build_state  # noqa: E402

TIMEOUT = 120  # seconds for any page state to appear (a loaded 2-core CI machine)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@contextmanager
def serving(app) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    binary = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no Chromium and chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,1000")
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    except WebDriverException as e:
        pytest.skip(f"Chromium does not start: {e.msg}")
    driver.set_page_load_timeout(TIMEOUT)
    driver.set_script_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("S2MTS2_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def loaded(driver, img) -> bool:
    """True once ``img`` has finished loading a picture (not a broken one)."""
    return driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)


def test_page_shows_probabilities_heatmaps_and_the_split(
    browser, shared_data, split_ckpt, prepared, shots, tmp_path
):
    real = shared_data / "real_samples"
    xray = real / "00000001_000.png"
    dicom = next(real.glob("*.dcm"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(xray.read_bytes()[:300])
    state = build_state(split_ckpt, data_dir=prepared, device="cpu", progress=False)
    classes = state.analyst.info.classes
    wait = WebDriverWait(browser, TIMEOUT)
    with serving(create_app(state, allowed_hosts=["127.0.0.1"])) as url:
        browser.get(url)
        wait.until(lambda d: d.find_element(By.ID, "model").text, "the page did not start")
        files = browser.find_element(By.ID, "files")
        files.send_keys("\n".join(str(p) for p in (xray, broken, dicom)))
        bars = "#cards .bars"
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, bars)) == 2, "no probabilities")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#cards .error"), "no error card")
        cards = {
            c.find_element(By.TAG_NAME, "h3").text: c
            for c in browser.find_elements(By.CSS_SELECTOR, "#cards .card")
        }
        assert set(cards) == {xray.name, broken.name, dicom.name}
        assert broken.name in cards[broken.name].find_element(By.CLASS_NAME, "error").text
        card = cards[xray.name]
        values = [float(v.text) for v in card.find_elements(By.CSS_SELECTOR, ".bar .value")]
        assert len(values) == len(classes) and values == sorted(values, reverse=True)
        names = [n.text for n in card.find_elements(By.CSS_SELECTOR, ".bar .name")]
        assert sorted(names) == sorted(classes)
        image, cam = card.find_elements(By.CSS_SELECTOR, "figure img")
        wait.until(lambda d: loaded(d, image) and loaded(d, cam), "no image or heatmap")
        assert card.find_element(By.CSS_SELECTOR, ".bar.selected .name").text == names[0]
        assert names[0] in card.find_element(By.CSS_SELECTOR, ".cam + figcaption").text
        other = card.find_elements(By.CSS_SELECTOR, ".bar")[-1]  # the least probable class
        other.click()
        wait.until(lambda d: names[-1] in cam.find_element(By.XPATH, "..").text, "no new class")
        wait.until(lambda d: loaded(d, cam), "no heatmap of the chosen class")
        assert "selected" in other.get_attribute("class")
        browser.save_screenshot(str(shots / "serve-drop.png"))

        browser.find_element(By.ID, "browse-tab").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card"), "no split images")
        wait.until(lambda d: loaded(d, d.find_element(By.ID, "roc")), "no ROC plot")
        assert "mean AUC" in browser.find_element(By.ID, "metrics").text
        Select(browser.find_element(By.NAME, "sort")).select_by_value("loss desc")
        worst = state.split.query(sort="loss", descending=True)["items"][0]["index"]
        first = "#grid .card h3"
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, first).text.split()[0] == f"#{worst}",
            "the split was not sorted by loss",
        )
        notes = [n.text for n in browser.find_elements(By.CSS_SELECTOR, "#grid .card .note")]
        losses = [float(n.split()[1]) for n in notes]
        assert losses == sorted(losses, reverse=True)
        for img in browser.find_elements(By.CSS_SELECTOR, "#grid img"):
            wait.until(lambda d, img=img: loaded(d, img), "a split image did not load")
        browser.save_screenshot(str(shots / "serve-browse.png"))
        logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert [e["message"] for e in logs if "broken.png" not in e["message"]] == []

"""The web UI's Styles list in a real browser (headless Chromium, as test_ui_browser.py): shown
only when styles.csv has styles, and the chosen styles reach the request and the image."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_SD15
from server_support import serve_process
from test_ui_browser import CHROMEDRIVER, CHROMIUM, KEY, by_id, choose, fill, send_key, wait

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="needs Debian's chromium and chromium-driver",
    ),
]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-dev-shm-usage", "--window-size=1400,1000",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):  # fmt: skip
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.execute_cdp_cmd("Network.enable", {})
    try:
        yield browser
    finally:
        browser.quit()


def _open(driver, port: int) -> None:
    send_key(driver, KEY)
    driver.get(f"http://127.0.0.1:{port}/")
    wait(driver, lambda: driver.find_element("tag name", "body").get_attribute("data-ready") == "true")


def test_styles_are_offered_only_when_there_are_some(hf_home, driver, tmp_path):
    with serve_process(tmp_path, KEY) as port:  # no styles.csv
        _open(driver, port)
        assert by_id(driver, "styles-row").is_displayed() is False


def test_chosen_styles_are_sent_and_expanded(hf_home, driver, tmp_path):
    from selenium.webdriver.support.ui import Select

    (tmp_path / "styles.csv").write_text(
        "name,prompt,negative_prompt\nsharp,sharp focus,blurry\nnoir,{prompt} in noir,\n"
    )
    with serve_process(tmp_path, KEY) as port:
        _open(driver, port)
        wait(driver, lambda: by_id(driver, "styles-row").is_displayed())
        choose(driver, "model", TINY_SD15)
        wait(driver, lambda: "sd15" in by_id(driver, "model-family").text)
        fill(driver, "prompt", "a cat")
        for element_id, value in (
            ("width", 64),
            ("height", 64),
            ("steps", 2),
            ("seed", 5),
            ("num-images", 1),
        ):
            fill(driver, element_id, value)
        styles = Select(by_id(driver, "styles"))
        styles.select_by_value("noir")
        styles.select_by_value("sharp")
        by_id(driver, "generate").click()

        def finished() -> bool:
            return by_id(driver, "status").get_attribute("data-state") in (
                "done",
                "succeeded",
                "failed",
            ) or bool(driver.find_elements("css selector", "#results .metadata pre"))

        wait(driver, finished, timeout=120)
        assert by_id(driver, "error").text == "", by_id(driver, "error").text
        text = driver.find_element("css selector", "#results .metadata pre").get_attribute("textContent")
        # a multiple select sends its choices in the list's (the file's) order: sharp, then noir
        assert text.startswith("a cat, sharp focus in noir\nNegative prompt: blurry\n"), text

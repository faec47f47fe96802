"""The web UI's Styles list in a real browser (headless Chromium, as test_ui_browser.py): shown
only when styles.csv has styles, and the chosen styles reach the request and the image."""

from __future__ import annotations

from conftest import TINY_SD15
from server_support import serve_process
from test_ui_browser import KEY, by_id, choose, fill, generate_and_wait, open_ui, wait
from test_ui_browser import driver as driver  # the browser fixture, shared with test_ui_browser.py
from test_ui_browser import pytestmark as pytestmark  # slow, and skipped without Chromium


def test_styles_are_offered_only_when_there_are_some(hf_home, driver, tmp_path):
    with serve_process(tmp_path, KEY) as port:  # no styles.csv
        open_ui(driver, f"http://127.0.0.1:{port}")
        assert by_id(driver, "styles-row").is_displayed() is False


def test_chosen_styles_are_sent_and_expanded(hf_home, driver, tmp_path):
    from selenium.webdriver.support.ui import Select

    (tmp_path / "styles.csv").write_text(
        "name,prompt,negative_prompt\nsharp,sharp focus,blurry\nnoir,{prompt} in noir,\n"
    )
    with serve_process(tmp_path, KEY) as port:
        open_ui(driver, f"http://127.0.0.1:{port}")
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
        [card] = generate_and_wait(driver, 1, timeout=120)  # the first run loads the model
        text = card.find_element("css selector", ".metadata pre").get_attribute("textContent")
        # a multiple select sends its choices in the list's (the file's) order: sharp, then noir
        assert text.startswith("a cat, sharp focus in noir\nNegative prompt: blurry\n"), text

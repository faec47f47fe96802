"""The web UI's hires fix fieldset in a real browser: it sends `hires`, the picture comes back at
the upscaled size, and "reuse settings" restores the fieldset (slow: a server and Chromium)."""

from __future__ import annotations

import pytest
from conftest import TINY_SD15
from test_ui_browser import (  # noqa: F401 (its fixtures, used here by name)
    base_url,
    by_id,
    choose,
    driver,
    fill,
    generate_and_wait,
    open_ui,
    page,
    pytestmark,
    record_sent_jobs,
    wait,
)

pytestmark = pytestmark  # slow, and skipped without Chromium (as test_ui_browser)


@pytest.mark.slow
def test_hires_fieldset_sends_hires_and_reuse_restores_it(page, base_url):  # noqa: F811
    open_ui(page, base_url)
    choose(page, "model", TINY_SD15)
    wait(page, lambda: "sd15" in by_id(page, "model-family").text)
    options = [
        o.get_attribute("value") for o in by_id(page, "hires-upscaler").find_elements("tag name", "option")
    ]
    assert options[0] == "Latent" and "Lanczos" in options
    fill(page, "prompt", "a red circle")
    for element_id, value in (("width", 64), ("height", 64), ("steps", 2), ("seed", 42), ("num-images", 1)):
        fill(page, element_id, value)
    by_id(page, "hires-enable").click()
    fill(page, "hires-scale", 1.5)
    choose(page, "hires-upscaler", "Lanczos")
    fill(page, "hires-steps", 3)
    fill(page, "hires-strength", 0.5)
    record_sent_jobs(page)
    cards = generate_and_wait(page, 1)
    sent = page.execute_script("return window.sentJobs")[-1]
    assert sent["hires"] == {"upscaler": "Lanczos", "scale": 1.5, "steps": 3, "strength": 0.5}
    size = page.execute_script(
        "const i = arguments[0].querySelector('img'); return [i.naturalWidth, i.naturalHeight]", cards[0]
    )
    assert size == [96, 96]
    text = cards[0].find_element("css selector", ".metadata pre").get_attribute("textContent")
    assert "Hires upscale: 1.5" in text and "Hires upscaler: Lanczos" in text

    by_id(page, "hires-enable").click()  # off, then restored from the image's recipe
    fill(page, "hires-scale", 2)
    cards[0].find_element("css selector", ".reuse-settings").click()
    wait(page, lambda: by_id(page, "hires-enable").is_selected())
    assert by_id(page, "hires-scale").get_attribute("value") == "1.5"
    assert by_id(page, "hires-upscaler").get_attribute("value") == "Lanczos"
    assert by_id(page, "hires-steps").get_attribute("value") == "3"
    by_id(page, "hires-enable").click()  # later tests: no hires fix

"""The web UI's "Upscale x2" button in a real browser (headless Chromium, as tests/test_ui_browser.py):
a result upscaled with the upscaler chosen in the #upscaler select, against `easel serve` with a
tiny model upscaler in its folder; the picture shown is what Upscalers makes of the result.

The button is tested with the built-in Nearest (PIL's resize), which needs nothing more; the
model file is listed either way, and upscaling with it needs spandrel (easel[upscalers]), whose
torchvision does not import beside CI's CPU torch, so that part is skipped without it."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from conftest import TINY_SD15
from server_support import serve_process
from test_ui_browser import (
    KEY,
    by_id,
    choose,
    driver,
    fill,
    generate_and_wait,
    open_ui,
    wait,
)
from test_ui_browser import pytestmark as pytestmark  # slow, and skipped without Chromium

from easel.testing.tiny_upscalers import spandrel_importable, write_tiny_upscaler

__all__ = ["driver"]  # the browser fixture, shared with test_ui_browser.py


@pytest.fixture(scope="module")
def served(hf_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("ui-upscale-home")
    write_tiny_upscaler(home / "upscalers" / "tiny-x2.safetensors", 2)
    with serve_process(home, KEY) as port:
        yield f"http://127.0.0.1:{port}", home


@pytest.mark.parametrize(
    "upscaler",
    [
        "Nearest",
        pytest.param(
            "tiny-x2",
            marks=pytest.mark.skipif(
                not spandrel_importable(),
                reason="model upscalers need spandrel (easel[upscalers]), whose torchvision does not import "
                "beside CI's CPU torch 2.13",
            ),
        ),
    ],
)
def test_upscale_a_result_with_the_chosen_upscaler(driver, served, upscaler):
    from PIL import Image

    from easel.upscalers import Upscalers

    base_url, home = served
    open_ui(driver, base_url)
    options = [
        o.get_attribute("value") for o in by_id(driver, "upscaler").find_elements("tag name", "option")
    ]
    assert options == ["None", "Lanczos", "Nearest", "tiny-x2"]
    choose(driver, "model", TINY_SD15)
    fill(driver, "prompt", "a red circle")
    for element_id, value in (("width", 64), ("height", 64), ("steps", 2), ("seed", 5), ("num-images", 1)):
        fill(driver, element_id, value)
    [card] = generate_and_wait(driver, 1)
    choose(driver, "upscaler", upscaler)
    card.find_element("css selector", "button.upscale").click()
    wait(driver, lambda: driver.find_elements("css selector", "#upscaled figure.upscaled img"))
    assert by_id(driver, "upscale-error").text == ""
    shown = driver.find_element("css selector", "#upscaled figure.upscaled img").get_attribute("src")
    caption = driver.find_element("css selector", "#upscaled figure.upscaled figcaption").text
    assert "128\u00d7128" in caption and f"Postprocess upscaler: {upscaler}" in caption
    upscaled = Image.open(io.BytesIO(base64.b64decode(shown.partition(",")[2])))
    source_url = card.find_element("css selector", "img").get_attribute("src")
    source_png = driver.execute_script(
        "return fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => btoa(String.fromCharCode(...new "
        "Uint8Array(b))))",
        source_url,
    )
    source = Image.open(io.BytesIO(base64.b64decode(source_png)))
    if upscaler == "Nearest":
        expected = source.convert("RGB").resize((128, 128), Image.Resampling.NEAREST)
    else:
        expected = Upscalers(home / "upscalers").upscale(source.convert("RGB"), 128, 128, upscaler)
    assert np.array_equal(np.asarray(upscaled.convert("RGB")), np.asarray(expected))
    assert upscaled.text["parameters"] == source.text["parameters"]
    assert upscaled.text["postprocessing"] == f"Postprocess upscale by: 2, Postprocess upscaler: {upscaler}"

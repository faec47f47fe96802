"""The web UI's "True CFG" field in a real browser (headless Chromium, as tests/test_ui_browser.py drives
it) against `python -m easel serve` with the tiny FLUX.1 models: shown for FLUX.1 only (models/info's
`options`), sent as true_cfg_scale with the negative prompt, and the image is the Python API's."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_FLUX_DEV
from server_support import serve_process
from test_ui_browser import KEY, by_id, choose, driver, fill, generate_and_wait, image_pixels, open_ui, wait
from test_ui_browser import pytestmark as pytestmark  # slow, and skipped without Chromium

from easel import GenerationRequest

__all__ = ["driver"]  # the browser fixture, shared with test_ui_browser.py


@pytest.fixture(scope="module")
def base_url(hf_home, flux_models, tmp_path_factory):
    with serve_process(tmp_path_factory.mktemp("true-cfg-ui-home"), KEY) as port:
        yield f"http://127.0.0.1:{port}"


def test_true_cfg_field_is_flux_only_and_sent(driver, base_url, engine):
    open_ui(driver, base_url)
    choose(driver, "model", "easel-demo")
    wait(driver, lambda: by_id(driver, "model-family").text.startswith("sd15"))
    assert not by_id(driver, "true-cfg-fields").is_displayed()
    choose(driver, "model", TINY_FLUX_DEV)
    wait(driver, lambda: by_id(driver, "true-cfg-fields").is_displayed())
    fill(driver, "prompt", "a red cat")
    fill(driver, "negative", "blue")
    for element_id, value in (("width", 32), ("height", 32), ("steps", 2), ("seed", 5), ("num-images", 1),
                              ("true-cfg", 3)):  # fmt: skip
        fill(driver, element_id, value)
    [card] = generate_and_wait(driver, 1)
    parameters = card.find_element("css selector", ".metadata pre").get_attribute("textContent")
    assert "Negative prompt: blue" in parameters and "CFG scale: 3," in parameters
    expected = engine.generate(
        GenerationRequest(
            model=TINY_FLUX_DEV, prompt="a red cat", negative_prompt="blue", true_cfg_scale=3.0, steps=2,
            seed=5, width=32, height=32,
        )
    )  # fmt: skip
    made = image_pixels(base_url, card.get_attribute("data-image-id"))
    np.testing.assert_array_equal(made, np.asarray(expected.images[0]).astype(int))

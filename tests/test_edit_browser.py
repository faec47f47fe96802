"""The web UI's "Reference images (edit)" field in a real browser (headless Chromium, as
tests/test_ui_browser.py drives it) against `python -m easel serve` with the tiny FLUX.1 Kontext:
the page sends the chosen file as reference_images and the edit is the one the Python API makes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_FLUX_KONTEXT
from server_support import serve_process
from test_ui_browser import (
    KEY,
    by_id,
    choose,
    driver,
    fill,
    generate_and_wait,
    image_pixels,
    open_ui,
    wait,
)
from test_ui_browser import pytestmark as pytestmark  # slow, and skipped without Chromium

from easel import GenerationRequest

__all__ = ["driver"]  # the browser fixture, shared with test_ui_browser.py


@pytest.fixture(scope="module")
def base_url(hf_home, flux_kontext_models, tmp_path_factory):
    with serve_process(tmp_path_factory.mktemp("edit-ui-home"), KEY) as port:
        yield f"http://127.0.0.1:{port}"


def test_reference_images_field_makes_an_edit(driver, base_url, engine, tmp_path):
    from PIL import Image

    reference = tmp_path / "reference.png"
    picture = Image.new("RGB", (48, 32), (128, 128, 128))
    picture.paste((220, 20, 20), (8, 8, 24, 24))
    picture.save(reference)
    open_ui(driver, base_url)
    choose(driver, "model", TINY_FLUX_KONTEXT)
    wait(driver, lambda: by_id(driver, "model-family").text == "flux1_kontext_dev: text2img, edit")
    fill(driver, "prompt", "a blue square")
    for element_id, value in (("width", 32), ("height", 32), ("steps", 1), ("seed", 5), ("num-images", 1)):
        fill(driver, element_id, value)
    by_id(driver, "reference-files").send_keys(str(reference))
    wait(driver, lambda: by_id(driver, "reference-status").text.startswith("1 reference image"))
    [card] = generate_and_wait(driver, 1)
    parameters = card.find_element("css selector", ".metadata pre").get_attribute("textContent")
    assert "Distilled CFG Scale: 2.5" in parameters
    image_id = card.get_attribute("data-image-id")
    expected = engine.generate(
        GenerationRequest(
            model=TINY_FLUX_KONTEXT, prompt="a blue square", reference_images=[str(reference)], steps=1,
            seed=5, width=32, height=32,
        )
    )  # fmt: skip
    made = image_pixels(base_url, image_id)
    np.testing.assert_array_equal(made, np.asarray(expected.images[0]).astype(int))
    by_id(driver, "reference-clear").click()
    assert by_id(driver, "reference-status").text.startswith("Instruction editing")
    # a model that cannot edit: the field is there, greyed out (and never sent)
    choose(driver, "model", "easel-demo")
    wait(driver, lambda: by_id(driver, "model-family").text.startswith("sd15"))
    assert not by_id(driver, "reference-files").is_enabled() and by_id(driver, "strength").is_enabled()

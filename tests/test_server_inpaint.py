"""Inpainting over the native API: the same fields, the same pixels as the Python API."""

from __future__ import annotations

import base64
import io

import numpy as np
from conftest import TINY_SD15
from PIL import Image
from server_support import server

from easel import GenerationRequest


def data_url_of(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def test_native_inpaint_equals_the_python_api_and_keeps_the_unmasked_pixels(engine, tmp_path):
    picture = Image.new("RGB", (64, 64), (20, 40, 200))
    picture.paste((220, 30, 30), (0, 0, 32, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    images = {"init_image": data_url_of(picture), "mask_image": data_url_of(mask)}
    fields = {"model": TINY_SD15, "prompt": "a green", "steps": 3, "seed": 11, "mask_blur": 2, **images}
    with server(tmp_path, engine) as client:
        answer = client.post("/api/v1/generate?include_images=true", json=fields)
        assert answer.status_code == 200, answer.text
        record = answer.json()
        served = Image.open(io.BytesIO(base64.b64decode(record["images"][0]["b64_png"]))).convert("RGB")
    assert "Mask blur: 2" in record["images"][0]["parameters"]
    direct = engine.generate(GenerationRequest(**fields)).images[0]
    np.testing.assert_array_equal(np.asarray(served), np.asarray(direct))
    corner = (slice(0, 8), slice(0, 8))  # far outside the blurred mask: the original, exactly
    np.testing.assert_array_equal(np.asarray(served)[corner], np.asarray(picture)[corner])

"""Inpainting over the native API: the same fields, the same pixels as the Python API."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from conftest import TINY_SD15
from PIL import Image
from server_support import server

from easel import GenerationRequest


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url_of(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_of(image)).decode("ascii")


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


def a1111_body(picture: Image.Image, mask: Image.Image | None, **fields) -> dict:
    """An img2img body as webuiapi sends it (its inpainting defaults are always present)."""
    body = {"prompt": "a green square", "steps": 3, "seed": 11, "denoising_strength": 0.75,
            "init_images": [data_url_of(picture).partition(",")[2]], "mask_blur": 4, "inpainting_fill": 0,
            "inpaint_full_res": True, "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0,
            "override_settings": {"sd_model_checkpoint": TINY_SD15}}  # fmt: skip
    if mask is not None:
        body["mask"] = data_url_of(mask).partition(",")[2]
    return {**body, **fields}


def test_a1111_inpainting_fields_map_onto_easel_and_give_the_same_pixels(engine, tmp_path):
    picture = Image.new("RGB", (64, 64), (20, 40, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    with server(tmp_path, engine) as client:
        fields = {
            "mask_blur": 2,
            "inpainting_fill": 1,
            "inpaint_full_res": False,
            "inpainting_mask_invert": 1,
        }
        answer = client.post("/sdapi/v1/img2img", json=a1111_body(picture, mask, **fields))
        assert answer.status_code == 200, answer.text
        served = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).convert("RGB")
        defaults = client.post("/sdapi/v1/img2img", json=a1111_body(picture, mask))
        assert defaults.status_code == 200, defaults.text
        infotext = json.loads(defaults.json()["info"])["infotexts"][0]  # A1111's API defaults, as A1111
        for entry in (
            "Mask blur: 4",
            "Inpaint area: Only masked",
            "Masked area padding: 0",
            "Masked content: fill",
        ):
            assert entry in infotext
        assert "Mask mode" not in infotext
        unequal = client.post("/sdapi/v1/img2img", json=a1111_body(picture, mask, mask_blur=None,
                                                                   mask_blur_x=2, mask_blur_y=6))  # fmt: skip
        assert unequal.status_code == 422 and unequal.json()["field"] == "mask_blur_x"
        plain = client.post("/sdapi/v1/img2img", json=a1111_body(picture, None))  # defaults, no mask
        assert plain.status_code == 200 and "Mask blur" not in plain.json()["info"]
    direct = engine.generate(
        GenerationRequest(
            model=TINY_SD15,
            prompt="a green square",
            prompt_syntax="a1111",
            steps=3,
            seed=11,
            strength=0.75,
            init_image=data_url_of(picture),
            mask_image=data_url_of(mask),
            mask_blur=2,
            masked_content="original",
            invert_mask=True,
        )
    ).images[0]
    np.testing.assert_array_equal(np.asarray(served), np.asarray(direct))


def test_openai_edits_with_a_mask_repaint_its_transparent_part(engine, tmp_path):
    """OpenAI's convention: the fully transparent pixels of the mask are where to edit."""
    picture = Image.new("RGB", (64, 64), (20, 40, 200))
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))
    as_png = {
        name: (f"{name}.png", png_of(image), "image/png")
        for name, image in (("image", picture), ("mask", mask))
    }
    form = {"prompt": "a green square", "model": TINY_SD15, "steps": "3", "seed": "11", "size": "64x64",
            "response_format": "b64_json"}  # fmt: skip
    with server(tmp_path, engine) as client:
        answer = client.post("/v1/images/edits", files=as_png, data=form)
        assert answer.status_code == 200, answer.text
    served = Image.open(io.BytesIO(base64.b64decode(answer.json()["data"][0]["b64_json"]))).convert("RGB")
    direct = engine.generate(
        GenerationRequest(
            model=TINY_SD15,
            prompt="a green square",
            prompt_syntax="plain",
            steps=3,
            seed=11,
            width=64,
            height=64,
            init_image=data_url_of(picture),
            mask_image=data_url_of(mask),
            invert_mask=True,
        )
    ).images[0]
    np.testing.assert_array_equal(np.asarray(served), np.asarray(direct))
    ours, original = np.asarray(served), np.asarray(picture)
    assert (ours[:4, :4] == original[:4, :4]).all() and (ours[24:40, 24:40] != original[24:40, 24:40]).any()

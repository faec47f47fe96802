"""Hires fix through the HTTP doors: A1111's enable_hr and hr_* fields, and the native `hires`."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from conftest import TINY_SD15
from PIL import Image
from server_support import server

from easel import GenerationRequest

SMALL = {
    "prompt": "a red circle",
    "steps": 3,
    "seed": 5,
    "width": 64,
    "height": 48,
    "sampler_name": "Euler",
    "override_settings": {"sd_model_checkpoint": TINY_SD15},
}
HIRES = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.6, "hr_second_pass_steps": 4}


@pytest.fixture(scope="module")
def client(engine, hf_home, tmp_path_factory):
    with server(tmp_path_factory.mktemp("server-hires"), engine) as test_client:
        yield test_client


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_a1111_txt2img_enable_hr_equals_the_python_api(client, engine):
    answer = client.post("/sdapi/v1/txt2img", json={**SMALL, **HIRES})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    image = decoded(body["images"][0])
    assert image.size == (96, 72)
    info = json.loads(body["info"])
    assert info["width"] == 64 and info["height"] == 48 and info["denoising_strength"] == 0.6
    assert info["extra_generation_params"]["Hires upscale"] == "1.5"
    infotext = info["infotexts"][0]
    for item in (
        "Size: 64x48",
        "Denoising strength: 0.6",
        "Hires upscale: 1.5",
        "Hires steps: 4",
        "Hires upscaler: Latent",
    ):
        assert item in infotext, infotext
    assert body["parameters"]["enable_hr"] is True

    request = GenerationRequest(
        model=TINY_SD15,
        prompt="a red circle",
        prompt_syntax="a1111",
        steps=3,
        seed=5,
        width=64,
        height=48,
        scheduler="Euler",
        hires={"scale": 1.5, "strength": 0.6, "steps": 4},
    )
    expected = engine.generate(request).images[0]
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))

    parsed = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()["parameters"]
    assert parsed["Hires upscale"] == "1.5" and parsed["Size"] == "64x48"


def test_a1111_hr_fields_map_onto_hires(client):
    fields = {
        **HIRES,
        "hr_scale": 2,
        "hr_resize_x": 96,
        "hr_upscaler": "Lanczos",
        "hr_prompt": "a blue square",
        "hr_negative_prompt": "green",
        "hr_sampler_name": "Euler a",
        "hr_cfg": 4.0,
    }
    answer = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert decoded(body["images"][0]).size == (96, 72)
    infotext = json.loads(body["info"])["infotexts"][0]
    for item in (
        "Hires resize: 96x0",
        "Hires upscaler: Lanczos",
        "Hires prompt: a blue square",
        "Hires negative prompt: green",
        "Hires sampler: Euler a",
        "Hires CFG Scale: 4",
    ):
        assert item in infotext, infotext


REFUSED = [
    ({"enable_hr": False, "hr_scale": 1.5}, "hr_scale"),
    ({"hr_upscaler": "Lanczos"}, "hr_upscaler"),
    ({"hr_prompt": "other"}, "hr_prompt"),
    ({**HIRES, "hr_upscaler": "Bicubic"}, "hr_upscaler"),
    ({**HIRES, "hr_checkpoint_name": "other.safetensors"}, "hr_checkpoint_name"),
    ({**HIRES, "hr_resize_x": 128, "hr_resize_y": 128}, "hr_resize_y"),  # A1111 would crop 64x48 to 1:1
    ({**HIRES, "hr_resize_x": 100}, "hr_resize_x"),
    ({**HIRES, "hr_scale": 0.5}, "hr_scale"),
    ({**HIRES, "hr_sampler_name": "No Such Sampler"}, "hr_sampler_name"),
    ({**HIRES, "denoising_strength": 0.1}, "denoising_strength"),  # int(4 x 0.1) = 0 steps
    ({**HIRES, "firstphase_width": 32}, "firstphase_width"),
]


@pytest.mark.parametrize(("fields", "field"), REFUSED, ids=[f for _, f in REFUSED])
def test_a1111_hires_refusals_name_the_a1111_field(client, fields, field):
    answer = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["field"] == field, body
    assert field in body["detail"]


def test_a1111_img2img_refuses_enable_hr(client):
    picture = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(picture, format="PNG")
    init = base64.b64encode(picture.getvalue()).decode("ascii")
    answer = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [init], "enable_hr": True})
    assert answer.status_code == 422 and answer.json()["field"] == "enable_hr", answer.text


def test_native_hires_field_flows(client):
    body = {
        "model": TINY_SD15,
        "prompt": "a red circle",
        "steps": 2,
        "seed": 4,
        "width": 64,
        "height": 64,
        "scheduler": "Euler",
        "hires": {"scale": 1.5, "upscaler": "Nearest", "strength": 0.5},
    }
    answer = client.post("/api/v1/generate?include_images=true", json=body)
    assert answer.status_code == 200, answer.text
    record = answer.json()
    assert record["status"] == "succeeded", record
    assert decoded(record["images"][0]["b64_png"]).size == (96, 96)
    assert record["result"]["request"]["hires"]["upscaler"] == "Nearest"
    assert record["progress"]["step"] == record["progress"]["total"] == 2 + 1
    refused = client.post("/api/v1/generate", json={**body, "hires": {"scale": 1.5, "upscaler": "Bicubic"}})
    assert refused.status_code in (400, 422), refused.text
    assert "hires.upscaler" in refused.text


def test_a1111_latent_upscale_modes_are_hr_upscalers(client):
    modes = [mode["name"] for mode in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes[0] == "Latent" and "Latent (bicubic antialiased)" in modes
    body = {**SMALL, **HIRES, "hr_upscaler": modes[-1]}
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    assert f"Hires upscaler: {modes[-1]}" in json.loads(answer.json()["info"])["infotexts"][0]

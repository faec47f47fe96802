"""The real thing: `python -m easel serve` on a free loopback port, driven by the PyPI
clients `webuiapi` and `openai`, unchanged, with an API key."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from conftest import TINY_SD15
from PIL import Image
from server_support import serve_process

KEY = "process-test-key"


@pytest.fixture(scope="module")
def live_server(hf_home, tmp_path_factory):
    with serve_process(tmp_path_factory.mktemp("live-home"), KEY) as port:
        yield port


def test_webuiapi_client_unchanged(live_server, init_png):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=live_server, username="webui", password=KEY)
    assert TINY_SD15 in api.util_get_model_names()
    api.util_set_model(TINY_SD15)
    assert api.util_get_current_model() == TINY_SD15
    assert "Euler a" in api.util_get_sampler_names()

    result = api.txt2img(
        prompt="a red circle",
        negative_prompt="blue",
        seed=42,
        steps=2,
        width=64,
        height=64,
        cfg_scale=6,
        batch_size=2,
        sampler_name="Euler a",
    )
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [42, 43] and result.info["sd_model_name"] == "stable-diffusion-v1-5"
    assert result.info["infotexts"][0].startswith(
        "a red circle\nNegative prompt: blue\nSteps: 2, Sampler: Euler a"
    )
    assert result.images[0].info["parameters"] == result.info["infotexts"][0]

    edited = api.img2img(
        images=[Image.open(init_png)],
        prompt="paint",
        denoising_strength=0.5,
        steps=4,
        seed=3,
        width=64,
        height=64,
    )
    assert edited.images[0].size == (64, 64) and edited.info["denoising_strength"] == 0.5

    # inpainting as webuiapi sends it: a mask image and its defaults (blur 4, fill, only masked)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    repainted = api.img2img(images=[Image.open(init_png)], mask_image=mask, prompt="paint", steps=4, seed=3)
    assert "Mask blur: 4, Inpaint area: Only masked" in repainted.info["infotexts"][0]
    original, ours = (np.asarray(image.convert("RGB")) for image in (Image.open(init_png), repainted.image))
    assert (original[:4, :4] == ours[:4, :4]).all()  # outside the blurred mask: the original pixels
    assert (original[24:40, 24:40] != ours[24:40, 24:40]).any()  # inside: repainted

    assert api.png_info(result.images[0]).info == result.info["infotexts"][0]
    assert api.get_progress()["state"]["job_count"] == 0

    # ControlNet units as webuiapi sends them (the bundled demo model and its demo ControlNet)
    assert "demo" in api.controlnet_model_list() and "canny" in api.controlnet_module_list()
    unit = webuiapi.ControlNetUnit(image=Image.open(init_png), module="canny", model="demo", weight=0.7)
    steered = api.txt2img(
        prompt="x",
        steps=2,
        width=64,
        height=64,
        seed=1,
        controlnet_units=[unit],
        override_settings={"sd_model_checkpoint": "easel-demo"},
    )
    assert "ControlNet 0:" in steered.info["infotexts"][0] and "Weight: 0.7" in steered.info["infotexts"][0]
    unknown = webuiapi.ControlNetUnit(image=Image.open(init_png), module="canny", model="None")
    with pytest.raises(RuntimeError) as refused:
        api.txt2img(prompt="x", steps=1, width=64, height=64, controlnet_units=[unknown])
    assert refused.value.args[0] == 422 and "args[0].model is required" in refused.value.args[1]

    stranger = webuiapi.WebUIApi(host="127.0.0.1", port=live_server, username="webui", password="wrong")
    with pytest.raises(RuntimeError) as denied:
        stranger.txt2img(prompt="x", steps=1)
    assert denied.value.args[0] == 401


def test_openai_client_unchanged(live_server, init_png):
    import openai

    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{live_server}/v1", api_key=KEY, max_retries=0, timeout=120
    )
    made = client.images.generate(
        prompt="a green triangle",
        model=TINY_SD15,
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 5, "steps": 2},
    )
    images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))) for item in made.data]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert "Seed: 5," in images[0].info["parameters"] and "Seed: 6," in images[1].info["parameters"]
    again = client.images.generate(
        prompt="a green triangle",
        model=TINY_SD15,
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 5, "steps": 2},
    )
    assert [item.b64_json for item in again.data] == [item.b64_json for item in made.data]

    with init_png.open("rb") as upload:
        edited = client.images.edit(
            image=upload,
            prompt="paint it",
            model=TINY_SD15,
            size="64x64",
            response_format="b64_json",
            extra_body={"strength": 0.5, "steps": 4, "seed": 1},
        )
    edited_image = Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json)))
    assert "Denoising strength: 0.5" in edited_image.info["parameters"]

    # with a mask, as OpenAI defines it: its fully transparent pixels are where to edit
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))
    mask_png = io.BytesIO()
    mask.save(mask_png, format="PNG")
    with init_png.open("rb") as upload:
        repainted = client.images.edit(
            image=upload, mask=("mask.png", mask_png.getvalue(), "image/png"), prompt="paint it",
            model=TINY_SD15, size="64x64", response_format="b64_json", extra_body={"steps": 4, "seed": 1},
        )  # fmt: skip
    repainted_image = Image.open(io.BytesIO(base64.b64decode(repainted.data[0].b64_json)))
    assert "Mask mode: Inpaint not masked, Mask blur: 4" in repainted_image.info["parameters"]
    original, ours = (np.asarray(image.convert("RGB")) for image in (Image.open(init_png), repainted_image))
    assert (original[:4, :4] == ours[:4, :4]).all() and (original[24:40, 24:40] != ours[24:40, 24:40]).any()

    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        client.images.generate(prompt="x", size="65x64")
    assert invalid.value.body["param"] == "size"
    wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{live_server}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.images.generate(prompt="x")


@pytest.mark.slow
def test_openai_client_reads_the_image_stream(live_server):
    import openai

    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{live_server}/v1", api_key=KEY, max_retries=0, timeout=120
    )
    # the server's default previews (every 5 steps) give the partial images
    stream = client.images.generate(
        prompt="a green triangle", model=TINY_SD15, size="64x64", stream=True, partial_images=2,
        extra_body={"seed": 5, "steps": 20},
    )  # fmt: skip
    events = list(stream)
    partials = [event for event in events if event.type == "image_generation.partial_image"]
    assert 1 <= len(partials) <= 2 and [e.partial_image_index for e in partials] == list(range(len(partials)))
    assert events[-1].type == "image_generation.completed" and len(events) == len(partials) + 1
    for event in events:
        assert Image.open(io.BytesIO(base64.b64decode(event.b64_json))).size == (64, 64)
    final = Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json)))
    assert "Seed: 5," in final.info["parameters"]

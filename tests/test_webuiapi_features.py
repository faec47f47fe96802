"""The rest of A1111 (issue 15), proven the way its users meet it: the PyPI `webuiapi` client,
unchanged, against a real `python -m easel serve` process."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_SD15
from PIL import Image
from server_support import serve_process

KEY = "webuiapi-features-key"
SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 7, "cfg_scale": 6}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(hf_home, tmp_path_factory):
    import webuiapi

    from easel.testing.tiny_upscalers import write_tiny_upscaler

    home = tmp_path_factory.mktemp("webuiapi-home")
    (home / "styles.csv").write_text(
        'name,prompt,negative_prompt\n"Blue hour","{prompt}, at the blue hour","sunny"\n', encoding="utf-8"
    )
    write_tiny_upscaler(home / "upscalers" / "tiny-2x.safetensors", scale=2)
    with serve_process(home, KEY) as port:
        client = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="webui", password=KEY)
        client.util_set_model(TINY_SD15)
        yield client


def rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def test_prompt_editing_and_alternation(api):
    # 4 steps: with 2, A1111's schedule switches only after the last step
    edited = api.txt2img(prompt="a [red circle:blue square:0.5] on [grey|white]", **{**SMALL, "steps": 4})
    plain = api.txt2img(prompt="a red circle on grey", **{**SMALL, "steps": 4})
    assert edited.image.size == (64, 64)
    assert not np.array_equal(rgb(edited.image), rgb(plain.image))
    assert edited.info["infotexts"][0].startswith("a [red circle:blue square:0.5] on [grey|white]\n")


def test_hires_fix_returns_the_scaled_size(api):
    result = api.txt2img(prompt="a red circle", enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                         hr_second_pass_steps=2, denoising_strength=0.6, **SMALL)  # fmt: skip
    assert result.image.size == (128, 128)
    infotext = result.info["infotexts"][0]
    assert "Hires upscale: 2" in infotext and "Hires upscaler: Latent" in infotext
    assert "Denoising strength: 0.6" in infotext


def test_tiling_reaches_the_engine(api):
    """`tiling: true` gives exactly the image the engine's tiling gives for the same fields (the
    property itself, edges that continue each other, is measured in tests/test_tiling.py over
    several seeds; one seed's seam can mislead, as a shape may lie across the wrap)."""
    from easel import Easel, GenerationRequest

    demo = {**SMALL, "seed": 11, "steps": 20, "override_settings": {"sd_model_checkpoint": "easel-demo"}}
    tiled = api.txt2img(prompt="a red circle", tiling=True, **demo)
    untiled = api.txt2img(prompt="a red circle", tiling=False, **demo)
    assert "Tiling: True" in tiled.info["infotexts"][0]
    request = GenerationRequest(
        prompt="a red circle", seed=11, steps=20, guidance_scale=6, width=64, height=64, scheduler="Euler a",
        tiling=True,
    )  # fmt: skip
    engine = rgb(Easel().generate(request).images[0])
    assert np.array_equal(rgb(tiled.image), engine)
    assert not np.array_equal(rgb(untiled.image), engine)


def test_clip_skip_changes_the_image(api):
    skipped = api.txt2img(prompt="a red circle", override_settings={"CLIP_stop_at_last_layers": 2}, **SMALL)
    plain = api.txt2img(prompt="a red circle", **SMALL)
    assert "Clip skip: 2" in skipped.info["infotexts"][0]
    assert not np.array_equal(rgb(skipped.image), rgb(plain.image))


def test_styles_apply(api):
    assert [style["name"] for style in api.get_prompt_styles()] == ["Blue hour"]
    styled = api.txt2img(prompt="a red circle", styles=["Blue hour"], **SMALL)
    spelled = api.txt2img(prompt="a red circle, at the blue hour", negative_prompt="sunny", **SMALL)
    assert styled.info["prompt"] == "a red circle, at the blue hour"
    assert np.array_equal(rgb(styled.image), rgb(spelled.image))


def test_variation_seeds(api):
    varied = api.txt2img(prompt="a red circle", subseed=99, subseed_strength=0.5, **SMALL)
    again = api.txt2img(prompt="a red circle", subseed=99, subseed_strength=0.5, **SMALL)
    plain = api.txt2img(prompt="a red circle", **SMALL)
    assert "Variation seed: 99, Variation seed strength: 0.5" in varied.info["infotexts"][0]
    assert np.array_equal(rgb(varied.image), rgb(again.image))
    assert not np.array_equal(rgb(varied.image), rgb(plain.image))


def test_send_images_false_returns_none(api):
    result = api.txt2img(prompt="a red circle", send_images=False, **SMALL)
    assert result.images == [] and result.info["seed"] == 7


def test_upscalers_and_the_extras_route(api):
    names = [upscaler["name"] for upscaler in api.get_upscalers()]
    assert {"Lanczos", "Nearest", "tiny-2x"} <= set(names)  # a model file is listed without spandrel too
    picture = Image.new("RGB", (32, 24), (200, 40, 40))
    bigger = api.extra_single_image(picture, upscaler_1="Lanczos", upscaling_resize=2)
    assert bigger.image.size == (64, 48)
    assert np.array_equal(rgb(bigger.image), rgb(picture.resize((64, 48), Image.Resampling.LANCZOS)))

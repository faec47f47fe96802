"""Variation seeds (A1111's subseed, subseed_strength, seed_resize_from): the initial noise of
image i is slerp(strength, noise(seed+i), noise(variation_seed+i)), drawn as diffusers draws it
and passed as `latents=`; seed resize pastes the seed's noise drawn at another size, centred."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_KANDINSKY, TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER
from PIL import Image
from server_support import data_url, server, wait_for
from test_ui_browser import base_url, driver, page  # noqa: F401  (the browser test's fixtures)

from easel import GenerationRequest, InvalidRequest, UnsupportedFeature
from easel.noise import initial_latents, slerp
from easel.storage.metadata import parse_parameters, read_metadata

BASE = {"model": TINY_SD15, "prompt": "a red circle", "steps": 3, "seed": 5}


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def all_pixels(result) -> np.ndarray:
    return np.stack([pixels(image) for image in result.images])


@pytest.mark.slow  # over 3 s: the quick set stays under 8 minutes
def test_strength_0_is_byte_identical_to_a_run_without_variation(engine):
    """With an ancestral sampler too: the main noise comes from the generator the pipeline then
    uses for its step noise, so the generator's state is as without variation."""
    for scheduler in ("Euler a", None):
        request = GenerationRequest(**BASE, num_images=2, scheduler=scheduler)
        plain = engine.generate(request)
        varied = engine.generate(request.model_copy(update={"variation_seed": 99, "variation_strength": 0.0}))
        np.testing.assert_array_equal(all_pixels(varied), all_pixels(plain))  # the PNGs differ in the recipe
        same_size = engine.generate(request.model_copy(update={"seed_resize_from": (64, 64)}))
        np.testing.assert_array_equal(all_pixels(same_size), all_pixels(plain))


def test_strength_1_is_the_variation_seeds_image(engine):
    """Strength 1 starts from exactly the variation seed's noise: with a sampler that draws no
    noise per step the images equal a plain run with seed = variation seed (tolerance: 1 level
    of 255, none measured); image i pairs with variation_seed + i."""
    varied = engine.generate(
        GenerationRequest(**BASE, num_images=2, variation_seed=9, variation_strength=1.0)
    )
    other = engine.generate(GenerationRequest(**{**BASE, "seed": 9}, num_images=2))
    assert np.abs(all_pixels(varied) - all_pixels(other)).max() <= 1
    plain = engine.generate(GenerationRequest(**BASE, num_images=2))
    assert not np.array_equal(all_pixels(varied), all_pixels(plain))


def test_half_strength_differs_from_both_and_is_reproducible(engine):
    request = GenerationRequest(**BASE, variation_seed=9, variation_strength=0.5)
    half = engine.generate(request)
    again = engine.generate(request)
    assert half.encode(0) == again.encode(0)
    plain = engine.generate(GenerationRequest(**BASE))
    other = engine.generate(GenerationRequest(**{**BASE, "seed": 9}))
    for image in (plain, other):
        assert np.abs(pixels(half.images[0]) - pixels(image.images[0])).mean() > 1


def test_parity_with_plain_diffusers_given_the_same_latents(engine):
    """The blend computed here, passed to a plain pipeline as latents, gives the engine's pixels."""
    from diffusers import StableDiffusionPipeline

    varied = engine.generate(
        GenerationRequest(**BASE, num_images=2, variation_seed=40, variation_strength=0.3)
    )
    plain = StableDiffusionPipeline.from_pretrained(TINY_SD15)
    plain.set_progress_bar_config(disable=True)
    side = 64 // plain.vae_scale_factor
    generators = [torch.Generator("cpu").manual_seed(5 + i) for i in range(2)]
    noise = [  # the seed's noise from the generator the pipeline then gets, as the engine draws it
        slerp(
            0.3,
            torch.randn((1, 4, side, side), generator=generators[i]),
            torch.randn((1, 4, side, side), generator=torch.Generator("cpu").manual_seed(40 + i)),
        )
        for i in range(2)
    ]
    expected = plain(
        "a red circle",
        width=64,
        height=64,
        num_inference_steps=3,
        num_images_per_prompt=2,
        latents=torch.cat(noise),
        generator=generators,
    ).images
    np.testing.assert_array_equal(all_pixels(varied), np.stack([pixels(image) for image in expected]))


def test_slerp_is_spherical_and_falls_back_to_lerp_when_parallel():
    low = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    high = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    low, high = low / low.norm(), high / high.norm()  # on the unit sphere: the arc's middle is equidistant

    def angle(a, b):
        return torch.acos(torch.dot(a.flatten(), b.flatten()) / (a.norm() * b.norm()))

    middle = slerp(0.5, low, high)
    assert torch.isclose(angle(middle, low), angle(middle, high), atol=1e-4)
    assert torch.isclose(angle(low, high), 2 * angle(middle, low), atol=1e-4)  # on the arc between them
    assert torch.equal(slerp(0.0, low, high), low) and torch.equal(slerp(1.0, low, high), high)
    near = low * 1.5 + 1e-4 * high  # |cos| > 0.9995: linear
    torch.testing.assert_close(slerp(0.25, low, near), 0.75 * low + 0.25 * near)


def test_seed_resize_pastes_the_small_noise_centred():
    pipe = SimpleNamespace(
        unet=SimpleNamespace(config=SimpleNamespace(in_channels=4), dtype=torch.float32), vae_scale_factor=8
    )
    request = GenerationRequest(**{**BASE, "width": 64, "height": 96}, seed_resize_from=(32, 128))
    latents = initial_latents(pipe, request, [torch.Generator("cpu").manual_seed(5)])
    small = torch.randn((1, 4, 16, 4), generator=torch.Generator("cpu").manual_seed(5))
    full = torch.randn((1, 4, 12, 8), generator=torch.Generator("cpu").manual_seed(5))
    assert latents.shape == (1, 4, 12, 8)
    torch.testing.assert_close(latents[..., :, 2:6], small[..., 2:14, :], rtol=0, atol=0)  # centre, cropped
    torch.testing.assert_close(latents[..., :, :2], full[..., :, :2], rtol=0, atol=0)  # the rest: full size
    torch.testing.assert_close(latents[..., :, 6:], full[..., :, 6:], rtol=0, atol=0)


def test_seed_resize_changes_the_image_and_replays(engine, tmp_path):
    request = GenerationRequest(**BASE, seed_resize_from=(32, 32), variation_seed=3, variation_strength=0.4)
    resized = engine.generate(request)
    plain = engine.generate(GenerationRequest(**BASE, variation_seed=3, variation_strength=0.4))
    assert not np.array_equal(pixels(resized.images[0]), pixels(plain.images[0]))
    saved = resized.save(tmp_path / "resized.png")
    settings = parse_parameters(read_metadata(saved).parameters)["settings"]
    assert (settings["Variation seed"], settings["Variation seed strength"]) == ("3", "0.4")
    assert settings["Seed resize from"] == "32x32"
    again, index = engine.replay(saved)
    assert again.encode(index) == saved.read_bytes()


def test_a_random_variation_seed_is_drawn_recorded_and_replays(engine, tmp_path):
    result = engine.generate(
        GenerationRequest(**BASE, num_images=2, variation_seed=-1, variation_strength=0.3)
    )
    drawn = result.request.variation_seed
    assert isinstance(drawn, int)
    saved = result.save(tmp_path / "second.png", index=1)
    settings = parse_parameters(read_metadata(saved).parameters)["settings"]
    assert settings["Seed"] == "6" and settings["Variation seed"] == str(drawn + 1)  # image 1's
    again, index = engine.replay(saved)
    assert again.encode(index) == saved.read_bytes()
    # the infotext alone (seed and variation seed of that image) makes that image again, as a batch
    # of one: batched and single runs may differ by one level in a few pixels (CPU kernels pick
    # different paths for batch 2 and 1), so up to that
    alone = engine.generate(
        GenerationRequest(**{**BASE, "seed": 6}, variation_seed=drawn + 1, variation_strength=0.3)
    )
    difference = np.abs(pixels(alone.images[0]).astype(int) - pixels(result.images[1]).astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    unused = engine.generate(GenerationRequest(**BASE, variation_seed=-1))
    assert unused.request.variation_seed is None  # strength 0: nothing to draw


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"init_image": "x.png", "variation_seed": 3, "variation_strength": 0.5}, "variation_seed"),
        ({"init_image": "x.png", "variation_strength": 0.5}, "variation_strength"),
        ({"init_image": "x.png", "seed_resize_from": (64, 64)}, "seed_resize_from"),
        ({"seed_resize_from": (100, 64)}, "seed_resize_from"),
        ({"variation_strength": 1.5}, "variation_strength"),
        ({"variation_seed": -2}, "variation_seed"),
    ],
)
def test_bad_values_are_refused_naming_the_field(fields, field):
    with pytest.raises(InvalidRequest) as refused:
        GenerationRequest(**{**BASE, **fields})
    assert refused.value.field == field and field in str(refused.value)


@pytest.mark.slow  # over 3 s: the quick set stays under 8 minutes
def test_sdxl_base_and_refiner_take_the_variation_latents(engine, sdxl_models):
    for refiner in (None, TINY_SDXL_REFINER):
        request = GenerationRequest(model=TINY_SDXL, prompt="a red circle", steps=4, seed=5, refiner=refiner)
        plain = engine.generate(request)
        same = engine.generate(request.model_copy(update={"variation_seed": 9, "variation_strength": 0.0}))
        np.testing.assert_array_equal(pixels(same.images[0]), pixels(plain.images[0]))
        varied = engine.generate(request.model_copy(update={"variation_seed": 9, "variation_strength": 0.6}))
        assert not np.array_equal(pixels(varied.images[0]), pixels(plain.images[0]))


def test_kandinsky_refuses_variation_naming_the_field(engine, kandinsky_models):
    for fields, field in (
        ({"variation_strength": 0.5}, "variation_strength"),
        ({"seed_resize_from": (64, 64)}, "seed_resize_from"),
    ):
        with pytest.raises(UnsupportedFeature, match=field) as refused:
            engine.generate(GenerationRequest(model=TINY_KANDINSKY, prompt="a", steps=2, seed=0, **fields))
        assert refused.value.field == field  # type: ignore[attr-defined]


def test_cli_flags(hf_home, engine, tmp_path):
    from typer.testing import CliRunner

    from easel.cli.app import app

    out = tmp_path / "cli.png"
    flags = ["--variation-seed", "9", "--variation-strength", "0.5", "--seed-resize-from", "32x32"]
    done = CliRunner().invoke(
        app,
        [
            "generate",
            "a red circle",
            "-m",
            TINY_SD15,
            "--steps",
            "3",
            "--seed",
            "5",
            *flags,
            "-o",
            str(out),
            "--no-gallery",
        ],
    )
    assert done.exit_code == 0, done.output
    api = engine.generate(
        GenerationRequest(**BASE, variation_seed=9, variation_strength=0.5, seed_resize_from=(32, 32))
    )
    np.testing.assert_array_equal(pixels(Image.open(out)), pixels(api.images[0]))
    bad = CliRunner().invoke(app, ["generate", "a", "-m", TINY_SD15, "--seed-resize-from", "big"])
    assert bad.exit_code == 2 and "--seed-resize-from" in bad.output
    bad = CliRunner().invoke(app, ["generate", "a", "-m", TINY_SD15, "--variation-strength", "2"])
    assert bad.exit_code == 2 and "variation-strength" in bad.output


# -- HTTP doors ---------------------------------------------------------------------------------

SMALL = {
    "prompt": "a red circle",
    "steps": 3,
    "seed": 5,
    "width": 64,
    "height": 64,
    "override_settings": {"sd_model_checkpoint": TINY_SD15},
}


@pytest.fixture(scope="module")
def client(engine, hf_home, tmp_path_factory):
    with server(tmp_path_factory.mktemp("variation"), engine) as test_client:
        yield test_client


def b64_pixels(text: str) -> np.ndarray:
    return pixels(Image.open(io.BytesIO(base64.b64decode(text))))


def test_a1111_fields_are_honoured_with_infotext(client, engine):
    body = {
        **SMALL,
        "batch_size": 2,
        "subseed": 9,
        "subseed_strength": 0.3,
        "seed_resize_from_w": 32,
        "seed_resize_from_h": 48,
        "tiling": True,
    }
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert (info["subseed"], info["all_subseeds"], info["subseed_strength"]) == (9, [9, 10], 0.3)
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (32, 48)
    assert "Variation seed: 10, Variation seed strength: 0.3, Seed resize from: 32x48" in info["infotexts"][1]
    assert "Tiling: True" in info["infotexts"][1]
    expected = engine.generate(
        GenerationRequest(
            **BASE,
            num_images=2,
            variation_seed=9,
            variation_strength=0.3,
            seed_resize_from=(32, 48),
            tiling=True,
            prompt_syntax="a1111",
        )
    )
    for index, image in enumerate(answer.json()["images"]):
        np.testing.assert_array_equal(b64_pixels(image), pixels(expected.images[index]))
    random = json.loads(
        client.post("/sdapi/v1/txt2img", json={**SMALL, "subseed": -1, "subseed_strength": 0.2}).json()[
            "info"
        ]
    )
    assert random["subseed"] >= 0 and f"Variation seed: {random['subseed']}," in random["infotexts"][0]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"subseed": 3, "subseed_strength": 1.5}, "subseed_strength"),
        ({"subseed": -5, "subseed_strength": -0.1}, "subseed_strength"),
        ({"seed_resize_from_w": 100, "seed_resize_from_h": 64}, "seed_resize_from_w"),
        ({"seed_resize_from_w": 64}, "seed_resize_from_w"),  # one alone: A1111 would ignore it
        ({"tiling": "yes"}, "tiling"),
    ],
)
def test_a1111_bad_values_are_refused_naming_its_field(client, fields, field):
    answer = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and field in answer.json()["detail"]


def test_a1111_img2img_refuses_variation(client, init_png):
    body = {
        **SMALL,
        "init_images": [data_url(init_png).split(",", 1)[1]],
        "subseed": 3,
        "subseed_strength": 0.5,
    }
    answer = client.post("/sdapi/v1/img2img", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "subseed"


def test_native_job_with_variation_and_tiling(client, engine):
    fields = {
        "model": TINY_SD15,
        "prompt": "a red circle",
        "steps": 3,
        "seed": 5,
        "variation_seed": 9,
        "variation_strength": 0.5,
        "seed_resize_from": [32, 32],
        "tiling": True,
    }
    job = client.post("/api/v1/jobs", json=fields).json()
    done = wait_for(
        lambda: (r := client.get(f"/api/v1/jobs/{job['id']}").json())["status"] == "succeeded" and r
    )
    image = client.get(done["images"][0]["url"])
    expected = engine.generate(GenerationRequest(**{**fields, "seed_resize_from": (32, 32)}))
    np.testing.assert_array_equal(pixels(Image.open(io.BytesIO(image.content))), pixels(expected.images[0]))
    refused = client.post("/api/v1/jobs", json={**fields, "variation_strength": 2})
    assert refused.status_code == 422 and "variation_strength" in refused.text


def test_web_ui_controls_and_png_info(client):
    html = client.get("/").text
    for element_id in ("tiling", "variation", "variation-seed", "variation-strength", "seed-resize-width",
                       "seed-resize-height"):  # fmt: skip
        assert f'id="{element_id}"' in html
    script = client.get("/ui/app.js").text
    for field in ("tiling", "variation_seed", "variation_strength", "seed_resize_from"):
        assert f"request.{field}" in script or f"fields.{field}" in script
    other = (
        "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 12, Size: 512x512, Variation seed: 99, "
        "Variation seed strength: 0.25, Seed resize from: 384x448, Tiling: True"
    )
    buffer = io.BytesIO()
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", other)
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    fields = client.post("/api/v1/png-info", json={"image": image}).json()["request"]
    assert (fields["variation_seed"], fields["variation_strength"]) == (99, 0.25)
    assert fields["seed_resize_from"] == [384, 448] and fields["tiling"] is True


@pytest.mark.slow  # a browser and an `easel serve` process
def test_web_ui_sends_and_restores_tiling_and_variation(request):
    import test_ui_browser as ui

    if not (ui.Path(ui.CHROMIUM).exists() and ui.Path(ui.CHROMEDRIVER).exists()):
        pytest.skip("needs chromium and chromium-driver")
    browser = request.getfixturevalue("page")
    browser.get(request.getfixturevalue("base_url") + "/")
    ui.wait(browser, lambda: browser.find_element("tag name", "body").get_attribute("data-ready") == "true")
    ui.choose(browser, "model", TINY_SD15)
    ui.wait(browser, lambda: "sd15" in ui.by_id(browser, "model-family").text)
    ui.fill(browser, "prompt", "a red circle")
    for element_id, value in (("width", 64), ("height", 64), ("steps", 2), ("seed", 42), ("num-images", 1),
                              ("variation-seed", 9), ("variation-strength", 0.5), ("seed-resize-width", 32),
                              ("seed-resize-height", 48)):  # fmt: skip
        ui.fill(browser, element_id, value)
    ui.by_id(browser, "tiling").click()
    ui.record_sent_jobs(browser)
    (card,) = ui.generate_and_wait(browser, 1)
    sent = browser.execute_script("return window.sentJobs")[-1]
    assert (sent["variation_seed"], sent["variation_strength"], sent["seed_resize_from"]) == (
        9,
        0.5,
        [32, 48],
    )
    assert sent["tiling"] is True
    parameters = card.find_element("css selector", ".metadata pre").get_attribute("textContent")
    assert "Variation seed: 9, Variation seed strength: 0.5, Seed resize from: 32x48" in parameters
    assert "Tiling: True" in parameters
    for element_id in ("variation-seed", "variation-strength", "seed-resize-width", "seed-resize-height"):
        ui.by_id(browser, element_id).clear()
    ui.by_id(browser, "tiling").click()
    card.find_element("css selector", ".reuse-settings").click()
    ui.wait(browser, lambda: ui.by_id(browser, "variation-seed").get_attribute("value") == "9")
    assert ui.by_id(browser, "variation-strength").get_attribute("value") == "0.5"
    assert ui.by_id(browser, "seed-resize-height").get_attribute("value") == "48"
    assert ui.by_id(browser, "tiling").is_selected()

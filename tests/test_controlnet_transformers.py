"""ControlNet on the transformer families (issue 20): FLUX.1 (FluxControlNetModel, several at once,
union modes) and SD 3.5 (SD3ControlNetModel), with tiny random ControlNets under real repo ids;
pixel parity with plain diffusers, refusals before weights load, shared weights, replay, the doors."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from conftest import TINY_CANNY, TINY_FLUX_DEV, TINY_FLUX_SCHNELL, TINY_SD15, TINY_SD35_MEDIUM
from PIL import Image, ImageDraw
from test_flux import SMALL, check_native_door, generators, pixels, png
from test_flux import client as client  # the fixture: a server on the session's engine

from easel import GenerationRequest, InvalidRequest, UnsupportedFeature
from easel.testing.tiny_dit_controlnets import FLUX_CANNY_ID, FLUX_DEPTH_ID, FLUX_UNION_ID, SD3_CANNY_ID


@pytest.fixture(scope="module", autouse=True)
def dit_controlnets(hf_home, flux_models, sd3_models):
    """The tiny FLUX.1 and SD 3.5 bases and their tiny ControlNets, in the HF cache."""
    from easel.testing.tiny_dit_controlnets import install_tiny_dit_controlnets

    return install_tiny_dit_controlnets(hf_home)


@pytest.fixture(scope="module")
def disc_png(tmp_path_factory):
    """A white disc on black, 32x32 (the size these tests generate at)."""
    path = tmp_path_factory.mktemp("dit-control") / "disc.png"
    image = Image.new("RGB", (32, 32))
    ImageDraw.Draw(image).ellipse([6, 8, 22, 26], fill=(255, 255, 255))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def bars_png(tmp_path_factory):
    """Vertical grey bars, 32x32: a second, different control image."""
    path = tmp_path_factory.mktemp("dit-control") / "bars.png"
    array = np.zeros((32, 32, 3), np.uint8)
    array[:, ::8] = 200
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def plain_flux(dit_controlnets):
    """Plain diffusers: the tiny FLUX.1 bases and ControlNets, loaded by repo id."""
    from diffusers import FluxControlNetModel, FluxPipeline

    bases = {repo: FluxPipeline.from_pretrained(repo) for repo in (TINY_FLUX_DEV, TINY_FLUX_SCHNELL)}
    nets = {
        repo: FluxControlNetModel.from_pretrained(repo)
        for repo in (FLUX_CANNY_ID, FLUX_DEPTH_ID, FLUX_UNION_ID)
    }
    return bases, nets


def _per_unit(units: list[dict], key: str, default):
    values = [unit.get(key, default) for unit in units]
    return values[0] if len(units) == 1 else values


FLUX_CASES = {
    # dev, one unit, two images per prompt
    "dev-one": (TINY_FLUX_DEV, [dict(model=FLUX_CANNY_ID, conditioning_scale=0.8)], {}),
    # schnell, two units at once: a single-purpose one and a union one with its mode (by name)
    "schnell-two-union": (
        TINY_FLUX_SCHNELL,
        [
            dict(model=FLUX_DEPTH_ID, conditioning_scale=1.0, guidance_end=0.5),
            dict(model=FLUX_UNION_ID, conditioning_scale=0.6, guidance_start=0.3, mode="depth"),
        ],
        {},
    ),
    "dev-img2img": (TINY_FLUX_DEV, [dict(model=FLUX_CANNY_ID, guidance_start=0.2)], {"strength": 0.8}),
    # the union one with its mode by index, alone (one FluxControlNetModel: an int control_mode)
    "dev-union": (TINY_FLUX_DEV, [dict(model=FLUX_UNION_ID, mode=4)], {}),
}


@pytest.mark.parametrize("case", list(FLUX_CASES))
def test_flux_equals_plain_diffusers_controlnet_pipeline(
    engine, plain_flux, disc_png, bars_png, init_png, case
):
    from diffusers import FluxControlNetImg2ImgPipeline, FluxControlNetPipeline, FluxMultiControlNetModel
    from diffusers.utils import load_image

    from easel.request import UNION_MODES

    repo, units, extra = FLUX_CASES[case]
    images = [str(disc_png), str(bars_png)][: len(units)]
    units = [{**unit, "image": image} for unit, image in zip(units, images, strict=True)]
    img2img = "strength" in extra
    fields = dict(init_image=str(init_png), **extra) if img2img else {}
    result = engine.generate(
        GenerationRequest(
            model=repo, prompt="a red cat", steps=3, seed=9, num_images=2, controls=units, **SMALL, **fields
        )
    )
    bases, nets = plain_flux
    chosen = [nets[unit["model"]] for unit in units]
    controlnet = chosen[0] if len(units) == 1 else FluxMultiControlNetModel(chosen)
    pipeline_class = FluxControlNetImg2ImgPipeline if img2img else FluxControlNetPipeline
    plain = pipeline_class.from_pipe(bases[repo], controlnet=controlnet)
    plain.set_progress_bar_config(disable=True)
    modes = [unit.get("mode") for unit in units]
    modes = [UNION_MODES.index(mode) if isinstance(mode, str) else mode for mode in modes]
    arguments = dict(
        control_image=[load_image(image) for image in images] if len(units) > 1 else load_image(images[0]),
        controlnet_conditioning_scale=_per_unit(units, "conditioning_scale", 1.0),
        control_guidance_start=_per_unit(units, "guidance_start", 0.0),
        control_guidance_end=_per_unit(units, "guidance_end", 1.0),
        # schnell has no guidance input; its ControlNets (made on dev) get dev's default, 3.5
        guidance_scale=3.5,
        max_sequence_length=512 if repo == TINY_FLUX_DEV else 256,
    )
    if any(mode is not None for mode in modes):
        arguments["control_mode"] = modes if len(units) > 1 else modes[0]
    if img2img:
        arguments.update(image=load_image(str(init_png)), strength=extra["strength"])
    expected = plain(
        "a red cat", num_inference_steps=3, num_images_per_prompt=2, generator=generators(9, 2), **SMALL,
        **arguments,
    ).images  # fmt: skip
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))
    assert sorted(key for key in result.model_hashes if key.startswith("control_")) == [
        f"control_{i}" for i in range(len(units))
    ]


def test_sd35_equals_plain_diffusers_and_leaves_the_global_generator_alone(engine, disc_png):
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline
    from diffusers.utils import load_image

    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    result = engine.generate(
        GenerationRequest(
            model=TINY_SD35_MEDIUM, prompt="a red cat", negative_prompt="blurry", steps=3, seed=5,
            num_images=2, width=32, height=32,
            controls=[
                dict(model=SD3_CANNY_ID, image=str(disc_png), conditioning_scale=0.7, guidance_end=0.8)
            ],
        )
    )  # fmt: skip
    assert torch.equal(torch.random.get_rng_state(), state)  # the control sample drew from a fork
    plain = StableDiffusion3ControlNetPipeline.from_pretrained(
        TINY_SD35_MEDIUM, controlnet=SD3ControlNetModel.from_pretrained(SD3_CANNY_ID)
    )
    plain.set_progress_bar_config(disable=True)
    torch.manual_seed(5)  # the pipeline samples the control image's latents from the global generator
    expected = plain(
        "a red cat", negative_prompt="blurry", control_image=load_image(str(disc_png)),
        controlnet_conditioning_scale=0.7, control_guidance_end=0.8, guidance_scale=4.5, width=32, height=32,
        num_inference_steps=3, num_images_per_prompt=2, generator=generators(5, 2),
    ).images  # fmt: skip
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))


def test_the_control_image_steers_the_picture(engine, disc_png, bars_png):
    common = dict(model=TINY_FLUX_DEV, prompt="a red cat", steps=2, seed=3, **SMALL)
    plain = engine.generate(GenerationRequest(**common)).images[0]
    disc, bars = (
        engine.generate(GenerationRequest(**common, controls=[dict(model=FLUX_CANNY_ID, image=str(image))]))
        for image in (disc_png, bars_png)
    )
    assert not np.array_equal(pixels(disc.images[0]), pixels(plain))
    assert not np.array_equal(pixels(disc.images[0]), pixels(bars.images[0]))
    # the union model's control type is an input of the model: another mode, another picture
    union = [
        engine.generate(
            GenerationRequest(**common, controls=[dict(model=FLUX_UNION_ID, image=str(disc_png), mode=mode)])
        ).images[0]
        for mode in ("canny", "pose")
    ]
    assert not np.array_equal(pixels(union[0]), pixels(union[1]))


def _wide_flux_controlnet(tmp_path) -> str:
    """A FLUX ControlNet folder whose heads do not fit the tiny FLUX.1 transformer."""
    from diffusers import FluxControlNetModel

    folder = tmp_path / "wide-flux-controlnet"
    FluxControlNetModel(
        in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
    ).save_pretrained(folder)  # fmt: skip
    return str(folder)


def _single_file(tmp_path) -> str:
    from safetensors.torch import save_file

    path = tmp_path / "flux-control.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    return str(path)


REFUSALS = {
    "sd15-on-flux": (TINY_FLUX_DEV, lambda t: dict(model=TINY_CANNY), "controls[0].model",
                     "ControlNetModel, a ControlNet for sd15 / sdxl models"),
    "flux-on-sd35": (TINY_SD35_MEDIUM, lambda t: dict(model=FLUX_CANNY_ID), "controls[0].model",
                     "FluxControlNetModel, a ControlNet for flux1_dev / flux1_schnell"),
    "sd35-on-flux": (TINY_FLUX_SCHNELL, lambda t: dict(model=SD3_CANNY_ID), "controls[0].model",
                     "SD3ControlNetModel, a ControlNet for sd35_medium"),
    "flux-on-sd15": (TINY_SD15, lambda t: dict(model=FLUX_CANNY_ID), "controls[0].model",
                     "this model is sd15 (it takes: ControlNetModel)"),
    "wrong-width": (TINY_FLUX_DEV, lambda t: dict(model=_wide_flux_controlnet(t)), "controls[0].model",
                    "does not fit the model's transformer (num_attention_heads 3 vs the model's 2)"),
    "single-file": (TINY_FLUX_DEV, lambda t: dict(model=_single_file(t)), "controls[0].model",
                    "single-file ControlNet cannot be loaded for FLUX.1-dev"),
    "mode-on-non-union": (TINY_FLUX_DEV, lambda t: dict(model=FLUX_CANNY_ID, mode="canny"),
                          "controls[0].mode", "not a union ControlNet"),
    "union-without-mode": (TINY_FLUX_DEV, lambda t: dict(model=FLUX_UNION_ID), "controls[0].mode",
                           "is a union ControlNet (10 control types)"),
    "mode-out-of-range": (TINY_FLUX_DEV, lambda t: dict(model=FLUX_UNION_ID, mode=10), "controls[0].mode",
                          "has 10 control types (0 to 9)"),
    "union-img2img": (TINY_FLUX_DEV, lambda t: dict(model=FLUX_UNION_ID, mode=2, init=True),
                      "controls[0].mode", "text-to-image only here"),
    "mode-on-sd15": (TINY_SD15, lambda t: dict(model=TINY_CANNY, mode=0), "controls[0].mode",
                     "not a union ControlNet"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS))
def test_what_does_not_fit_is_refused_by_name_before_its_weights_load(
    controlnet_models, disc_png, tmp_path, case
):
    from easel import Easel, Settings

    model, unit, field, fragment = REFUSALS[case]
    unit = {**unit(tmp_path), "image": str(disc_png)}
    fields = {"init_image": str(disc_png)} if unit.pop("init", False) else {}
    fresh = Easel(Settings.from_env())  # its own cache: what the refusal loaded, if anything
    with pytest.raises(InvalidRequest) as caught:
        fresh.generate(
            GenerationRequest(model=model, prompt="x", steps=2, controls=[unit], **SMALL, **fields)
        )
    assert caught.value.field == field
    assert fragment in str(caught.value) and field in str(caught.value)
    assert fresh.cache.components() == []  # the ControlNet's weights never loaded
    if case != "wrong-width":  # refused from the request and the configs: not even the base loaded
        assert fresh.cache.loaded() == []


def test_sd35_img2img_with_controls_is_refused_by_name(engine, disc_png, init_png):
    request = GenerationRequest(
        model=TINY_SD35_MEDIUM, prompt="x", steps=2, init_image=str(init_png),
        controls=[dict(model=SD3_CANNY_ID, image=str(disc_png))],
    )  # fmt: skip
    with pytest.raises(UnsupportedFeature, match=r"controls: SD 3.5 Medium|controls: sd35_medium") as caught:
        engine.generate(request)
    assert "for img2img" in str(caught.value) and "flux1_dev" in str(caught.value)


def test_units_share_the_cached_base_weights(engine, disc_png, bars_png):
    units = [
        dict(model=FLUX_CANNY_ID, image=str(disc_png)),
        dict(model=FLUX_UNION_ID, image=str(bars_png), mode="tile"),
    ]
    request = GenerationRequest(model=TINY_FLUX_DEV, prompt="x", steps=2, seed=1, controls=units, **SMALL)
    engine.generate(request)
    (base,) = [entry for entry in engine.cache.loaded() if entry.source.reference == TINY_FLUX_DEV]
    controls = {entry.source.reference: entry.module for entry in engine.cache.components()}
    modules = [controls[unit["model"]] for unit in units]
    for chosen in (modules[:1], modules):
        pipe = engine.task_pipeline(base, request, controlnets=chosen)
        assert type(pipe).__name__ == "FluxControlNetPipeline"
        assert pipe.transformer is base.pipeline.transformer and pipe.vae is base.pipeline.vae
        assert all(
            a is b
            for a, b in zip(
                pipe.transformer.parameters(), base.pipeline.transformer.parameters(), strict=True
            )
        )
        nets = [pipe.controlnet] if len(chosen) == 1 else list(pipe.controlnet.nets)
        assert nets == chosen and all(net is module for net, module in zip(nets, chosen, strict=True))


@pytest.mark.parametrize(
    "model, units",
    [
        (
            TINY_FLUX_SCHNELL,
            [dict(model=FLUX_UNION_ID, mode="gray"), dict(model=FLUX_CANNY_ID, preprocessor="canny")],
        ),
        (  # two units: SD3MultiControlNetModel (the same model twice)
            TINY_SD35_MEDIUM,
            [
                dict(model=SD3_CANNY_ID, preprocessor="canny", conditioning_scale=0.5),
                dict(model=SD3_CANNY_ID),
            ],
        ),
    ],
    ids=["flux-union", "sd35"],
)
def test_metadata_records_the_units_and_replay_is_byte_identical(engine, disc_png, tmp_path, model, units):
    units = [{**unit, "image": str(disc_png)} for unit in units]
    result, recorded = check_units_replay(engine, tmp_path, model, units)
    assert [unit["mode"] for unit in recorded] == [unit.get("mode") for unit in units]
    if any("mode" in unit for unit in units):
        assert "Union Mode: gray" in result.parameters()


def check_units_replay(engine, tmp_path, model: str, units: list[dict]):
    """Generate with `units` on `model` into a fresh gallery: the metadata records each unit's model
    and scale, and replaying the PNG gives it byte for byte. Returns the result and the recorded units."""
    from easel import Easel, Settings
    from easel.storage.gallery import Gallery
    from easel.storage.metadata import read_metadata

    gallery = Gallery(tmp_path / "home")
    engine = Easel(Settings.from_env(home=tmp_path / "home"), cache=engine.cache)
    result = engine.generate(
        GenerationRequest(model=model, prompt="a cat", steps=2, seed=8, controls=units, **SMALL)
    )
    (entry,) = gallery.add_result(result)
    recorded = read_metadata(entry.path).document["request"]["controls"]
    assert [(unit["model"], unit["conditioning_scale"]) for unit in recorded] == [
        (unit["model"], unit.get("conditioning_scale", 1.0)) for unit in units
    ]
    again, index = engine.replay(entry.path)
    assert index == 0
    assert again.encode(index) == entry.path.read_bytes()
    return result, recorded


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def test_native_door(client, engine, disc_png):
    unit = {"model": FLUX_UNION_ID, "image": "data:image/png;base64," + _b64(disc_png), "mode": "depth"}
    check_native_door(
        client, engine, TINY_FLUX_SCHNELL, family="flux1_schnell", cfg="1", count=(4, 256), controls=[unit]
    )
    refused = client.post(
        "/api/v1/generate",
        json={
            "model": TINY_FLUX_SCHNELL,
            "prompt": "x",
            "steps": 2,
            **SMALL,
            "controls": [{**unit, "mode": None}],
        },
    )
    assert refused.status_code in (400, 422), refused.text
    assert "controls[0].mode" in refused.text


def test_a1111_door_alwayson_controlnet(client, engine, disc_png):
    unit = {
        "image": _b64(disc_png),
        "module": "none",
        "model": FLUX_CANNY_ID,
        "weight": 0.7,
        "guidance_end": 0.8,
    }
    body = {
        "prompt": "a blue square", "steps": 2, "seed": 6, **SMALL,
        "override_settings": {"sd_model_checkpoint": TINY_FLUX_SCHNELL},
    }  # fmt: skip
    steered = client.post(
        "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    )
    assert steered.status_code == 200, steered.text
    infotext = json.loads(steered.json()["info"])["infotexts"][0]
    assert 'ControlNet 0: "Module: none, Model: FLUX.1-dev-Controlnet-Canny [' in infotext
    direct = engine.generate(
        GenerationRequest(
            model=TINY_FLUX_SCHNELL, prompt="a blue square", prompt_syntax="a1111", steps=2, seed=6, **SMALL,
            controls=[
                dict(model=FLUX_CANNY_ID, image=str(disc_png), conditioning_scale=0.7, guidance_end=0.8)
            ],
        )
    )  # fmt: skip
    np.testing.assert_array_equal(
        pixels(png(base64.b64decode(steered.json()["images"][0]))), pixels(direct.images[0])
    )
    listed = client.get("/controlnet/model_list").json()["model_list"]
    assert {FLUX_CANNY_ID, FLUX_UNION_ID, SD3_CANNY_ID} <= set(listed)
    wrong = {**unit, "model": SD3_CANNY_ID}
    refused = client.post(
        "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [wrong]}}}
    )
    assert refused.status_code in (400, 422), refused.text
    assert "SD3ControlNetModel" in refused.text


@pytest.mark.slow
def test_cli_control_mode(engine, disc_png, tmp_path):
    from test_cli import run_easel

    out = tmp_path / "cli.png"
    common = ("generate", "a cat", "-m", TINY_FLUX_SCHNELL, "--steps", "2", "--seed", "5", "--width", "32",
              "--height", "32", "-o", str(out))  # fmt: skip
    done = run_easel(*common, "--control", f"{FLUX_UNION_ID}={disc_png}", "--control-mode", "2")
    assert done.returncode == 0, done.stderr
    api = engine.generate(
        GenerationRequest(
            model=TINY_FLUX_SCHNELL, prompt="a cat", steps=2, seed=5, **SMALL,
            controls=[dict(model=FLUX_UNION_ID, image=str(disc_png), mode=2)],
        )
    )  # fmt: skip
    np.testing.assert_array_equal(pixels(Image.open(out)), pixels(api.images[0]))
    refused = run_easel(*common, "--control", f"{FLUX_CANNY_ID}={disc_png}", "--control-mode", "depth")
    assert refused.returncode == 2, refused.stderr
    assert "--control-mode" in refused.stderr and "not a union ControlNet" in refused.stderr


def test_flux_inpaint_with_a_control_equals_plain_diffusers(engine, plain_flux, init_png, tmp_path):
    from diffusers import FluxControlNetInpaintPipeline

    mask, control = tmp_path / "mask.png", tmp_path / "control.png"
    Image.new("L", (64, 64), 0).save(mask)
    with Image.open(mask) as image:  # repaint the right half
        image.paste(255, (32, 0, 64, 64))
        image.save(mask)
    disc = Image.new("RGB", (64, 64))
    ImageDraw.Draw(disc).ellipse([12, 16, 44, 52], fill=(255, 255, 255))
    disc.save(control)
    result = engine.generate(
        GenerationRequest(
            model=TINY_FLUX_DEV, prompt="a cat", init_image=str(init_png), mask_image=str(mask),
            strength=0.75, mask_blur=0, paste_back=False, steps=3, seed=2,
            controls=[dict(model=FLUX_CANNY_ID, image=str(control), conditioning_scale=0.9)],
        )
    )  # fmt: skip
    bases, nets = plain_flux
    plain = FluxControlNetInpaintPipeline.from_pipe(bases[TINY_FLUX_DEV], controlnet=nets[FLUX_CANNY_ID])
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        "a cat", image=Image.open(init_png).convert("RGB"), mask_image=Image.open(mask),
        control_image=disc, controlnet_conditioning_scale=0.9, strength=0.75, num_inference_steps=3,
        guidance_scale=3.5, width=64, height=64, max_sequence_length=512, generator=generators(2, 1),
    ).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))

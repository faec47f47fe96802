"""ControlNet through the Python API: parity with plain diffusers ControlNet pipelines (same
seeds, pixel-equal), MultiControlNet, img2img + control, SDXL, weight sharing, canny, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    TINY_CANNY,
    TINY_DEPTH,
    TINY_OPENPOSE,
    TINY_SD15,
    TINY_SDXL,
    TINY_SDXL_CANNY,
    TINY_SDXL_REFINER,
)
from PIL import Image, ImageDraw

from easel import ControlUnit, GenerationRequest, InvalidRequest, UnsupportedFeature


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def generators(seed: int, count: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


@pytest.fixture(autouse=True)
def _installed(controlnet_models):
    """Every test here needs the tiny ControlNets (and their bases) in the HF cache."""


@pytest.fixture(scope="module")
def mask_png(tmp_path_factory: pytest.TempPathFactory):
    """A white disc on black, 64x64: the kind of map a ControlNet is conditioned on."""
    path = tmp_path_factory.mktemp("control") / "mask.png"
    image = Image.new("RGB", (64, 64))
    ImageDraw.Draw(image).ellipse([12, 16, 44, 52], fill=(255, 255, 255))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def bars_png(tmp_path_factory: pytest.TempPathFactory):
    """Vertical grey bars, 64x64: a second, different control image."""
    path = tmp_path_factory.mktemp("control") / "bars.png"
    array = np.zeros((64, 64, 3), np.uint8)
    array[:, ::16] = 200
    array[:, 1::16] = 200
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def plain_sd15():
    """Plain diffusers: the tiny SD 1.5 base and the ControlNets, loaded by repo id."""
    from diffusers import ControlNetModel, StableDiffusionPipeline

    base = StableDiffusionPipeline.from_pretrained(TINY_SD15)
    base.set_progress_bar_config(disable=True)
    nets = {repo: ControlNetModel.from_pretrained(repo) for repo in (TINY_CANNY, TINY_OPENPOSE)}
    return base, nets


UNITS = {
    1: [dict(model=TINY_CANNY, conditioning_scale=0.8)],
    2: [
        dict(model=TINY_CANNY, conditioning_scale=1.0, guidance_end=0.7),
        dict(model=TINY_OPENPOSE, conditioning_scale=0.5, guidance_start=0.2),
    ],
}


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("img2img", [False, True], ids=["txt2img", "img2img"])
def test_sd15_equals_plain_diffusers_controlnet_pipeline(
    engine, plain_sd15, mask_png, bars_png, init_png, count, img2img
):
    from diffusers import (
        MultiControlNetModel,
        StableDiffusionControlNetImg2ImgPipeline,
        StableDiffusionControlNetPipeline,
    )
    from diffusers.utils import load_image

    images = [str(mask_png), str(bars_png)][:count]
    units = [{**unit, "image": image} for unit, image in zip(UNITS[count], images, strict=True)]
    fields = dict(init_image=str(init_png), strength=0.75) if img2img else {}
    result = engine.generate(
        GenerationRequest(
            model=TINY_SD15, prompt="a red circle", steps=3, seed=11, num_images=2, controls=units, **fields
        )
    )

    base, nets = plain_sd15
    chosen = [nets[unit["model"]] for unit in units]
    controlnet = chosen[0] if count == 1 else MultiControlNetModel(chosen)
    pipeline_class = (
        StableDiffusionControlNetImg2ImgPipeline if img2img else StableDiffusionControlNetPipeline
    )
    plain = pipeline_class.from_pipe(base, controlnet=controlnet)
    plain.set_progress_bar_config(disable=True)

    def per_unit(key: str, default: float):
        values = [unit.get(key, default) for unit in units]
        return values[0] if count == 1 else values

    control = [load_image(image) for image in images]
    arguments = dict(
        controlnet_conditioning_scale=per_unit("conditioning_scale", 1.0),
        control_guidance_start=per_unit("guidance_start", 0.0),
        control_guidance_end=per_unit("guidance_end", 1.0),
    )
    if img2img:
        arguments.update(
            image=load_image(str(init_png)),
            control_image=control[0] if count == 1 else control,
            strength=0.75,
        )
    else:
        arguments.update(image=control[0] if count == 1 else control)
    expected = plain(
        "a red circle",
        num_inference_steps=3,
        num_images_per_prompt=2,
        generator=generators(11, 2),
        **arguments,
    ).images
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))
    assert sorted(key for key in result.model_hashes if key.startswith("control_")) == [
        f"control_{i}" for i in range(count)
    ]


def test_sdxl_single_unit_equals_plain_diffusers(engine, mask_png):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
    from diffusers.utils import load_image

    result = engine.generate(
        GenerationRequest(
            model=TINY_SDXL, prompt="a red cat", steps=2, seed=5,
            controls=[ControlUnit(model=TINY_SDXL_CANNY, image=str(mask_png), conditioning_scale=0.6)],
        )
    )  # fmt: skip
    plain = StableDiffusionXLControlNetPipeline.from_pretrained(
        TINY_SDXL, controlnet=ControlNetModel.from_pretrained(TINY_SDXL_CANNY)
    )
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        "a red cat", image=load_image(str(mask_png)), controlnet_conditioning_scale=0.6,
        num_inference_steps=2, generator=generators(5, 1),
    ).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


def test_control_image_steers_and_scale_zero_is_no_control(engine, mask_png, bars_png):
    common = dict(model=TINY_SD15, prompt="a red circle", steps=2, seed=3)
    plain = engine.generate(GenerationRequest(**common)).images[0]
    with_mask = engine.generate(
        GenerationRequest(**common, controls=[dict(model=TINY_CANNY, image=str(mask_png))])
    )
    with_bars = engine.generate(
        GenerationRequest(**common, controls=[dict(model=TINY_CANNY, image=str(bars_png))])
    )
    off = engine.generate(
        GenerationRequest(
            **common, controls=[dict(model=TINY_CANNY, image=str(mask_png), conditioning_scale=0)]
        )
    )
    assert not np.array_equal(pixels(with_mask.images[0]), pixels(plain))
    assert not np.array_equal(pixels(with_mask.images[0]), pixels(with_bars.images[0]))
    np.testing.assert_array_equal(pixels(off.images[0]), pixels(plain))


def test_switching_plain_one_two_units_loads_no_base_weights_again(mask_png, bars_png):
    from easel import Easel, Settings

    engine = Easel(Settings.from_env())
    common = dict(model=TINY_SD15, prompt="a red circle", steps=2, seed=1)
    one = [dict(model=TINY_CANNY, image=str(mask_png))]
    two = [*one, dict(model=TINY_DEPTH, image=str(bars_png))]
    requests = [GenerationRequest(**common, controls=units) for units in ([], one, two, [], one)]
    first = engine.generate(requests[0])
    (base_entry,) = engine.cache.loaded()
    base_parameters = list(base_entry.pipeline.unet.parameters())
    results = [first] + [engine.generate(request) for request in requests[1:]]

    assert engine.cache.loaded() == [base_entry]  # one base in the cache, never reloaded
    controls = {entry.source.reference: entry for entry in engine.cache.components()}
    assert sorted(controls) == sorted([TINY_CANNY, TINY_DEPTH])  # each ControlNet loaded once
    for units in ([], one, two):
        request = GenerationRequest(**common, controls=units, width=64, height=64)
        modules = [controls[unit["model"]].module for unit in units]
        pipe = engine.task_pipeline(base_entry, request, controlnets=modules)
        assert pipe.unet is base_entry.pipeline.unet and pipe.vae is base_entry.pipeline.vae
        assert all(a is b for a, b in zip(pipe.unet.parameters(), base_parameters, strict=True))
        if len(units) == 1:
            assert pipe.controlnet is modules[0]
        elif units:
            assert list(pipe.controlnet.nets) == modules
    np.testing.assert_array_equal(pixels(results[0].images[0]), pixels(results[3].images[0]))
    np.testing.assert_array_equal(pixels(results[1].images[0]), pixels(results[4].images[0]))


def test_canny_is_opencv_canny_at_the_output_size(engine, tmp_path):
    import cv2

    from easel.control.preprocessors import canny

    photo = Image.new("RGB", (128, 128), (20, 40, 200))
    ImageDraw.Draw(photo).rectangle([30, 40, 90, 100], fill=(250, 200, 10))
    path = tmp_path / "photo.png"
    photo.save(path)
    edges = canny(photo, 50, 150)
    expected = cv2.Canny(np.asarray(photo), 50, 150)
    assert edges.mode == "RGB" and edges.size == (128, 128)
    for channel in range(3):
        np.testing.assert_array_equal(pixels(edges)[:, :, channel], expected)

    result = engine.generate(
        GenerationRequest(
            model=TINY_SD15, prompt="a square", steps=2, seed=2, width=64, height=64,
            controls=[
                dict(model=TINY_CANNY, image=str(path), preprocessor="canny", canny_low=50, canny_high=150)
            ],
        )
    )  # fmt: skip
    # resized to the output size first, then edges found there (lines stay one pixel wide)
    fitted = photo.resize((64, 64), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(pixels(result.control_inputs[0]), pixels(fitted))
    np.testing.assert_array_equal(
        pixels(result.control_images[0])[:, :, 0], cv2.Canny(np.asarray(fitted), 50, 150)
    )
    assert 'ControlNet 0: "Module: canny, Model: sd-controlnet-canny [' in result.parameters()
    assert "Threshold A: 50, Threshold B: 150, Guidance Start: 0, Guidance End: 1" in result.parameters()


def test_size_defaults_to_the_control_image(engine, tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (96, 64), (255, 255, 255)).save(path)
    result = engine.generate(
        GenerationRequest(
            model=TINY_SD15, prompt="x", steps=2, seed=1, controls=[dict(model=TINY_CANNY, image=str(path))]
        )
    )
    assert (result.request.width, result.request.height) == (96, 64)
    assert result.images[0].size == (96, 64)


def test_demo_controlnet_by_name_and_by_folder(engine, mask_png):
    from easel.demo import demo_controlnet_path

    by_name = engine.generate(
        GenerationRequest(
            prompt="a red circle on a blue background",
            steps=2,
            seed=4,
            controls=[dict(model="demo", image=str(mask_png))],
        )
    )
    by_folder = engine.generate(
        GenerationRequest(
            prompt="a red circle on a blue background", steps=2, seed=4,
            controls=[dict(model=str(demo_controlnet_path()), image=str(mask_png))],
        )
    )  # fmt: skip
    np.testing.assert_array_equal(pixels(by_name.images[0]), pixels(by_folder.images[0]))
    assert by_name.model_hashes["control_0"] == by_folder.model_hashes["control_0"]
    assert "Model: easel-demo-controlnet [" in by_name.parameters()


def _garbage(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"not a picture")
    return str(path)


@pytest.mark.parametrize(
    "model, units, field, fragment",
    [
        (
            TINY_SD15,
            lambda m, t: [dict(model=TINY_CANNY, image=_garbage(t))],
            "controls[0].image",
            "not a readable image",
        ),
        (
            TINY_SD15,
            lambda m, t: [dict(model=TINY_CANNY, image=str(t / "missing.png"))],
            "controls[0].image",
            "no such file",
        ),
        (
            TINY_SDXL,
            lambda m, t: [dict(model=TINY_CANNY, image=m)],
            "controls[0].model",
            "ControlNet for sd15 models",
        ),
        (
            TINY_SD15,
            lambda m, t: [dict(model=TINY_SDXL_CANNY, image=m)],
            "controls[0].model",
            "ControlNet for sdxl models",
        ),
        (
            TINY_SD15,
            lambda m, t: [dict(model=TINY_CANNY, image=m), dict(model="demo", image=m)],
            "controls[1].model",
            "does not fit",
        ),
        (
            TINY_SD15,
            lambda m, t: [dict(model=TINY_SD15, image=m)],
            "controls[0].model",
            "not a ControlNetModel",
        ),
        (
            TINY_SD15,
            lambda m, t: [dict(model="not a repo", image=m)],
            "controls[0].model",
            "not a local path",
        ),
    ],
    ids=["unreadable", "missing", "sd15-on-sdxl", "sdxl-on-sd15", "demo-on-tiny", "pipeline", "bad-ref"],
)
def test_bad_control_input_names_the_unit_and_field(
    engine, mask_png, tmp_path, model, units, field, fragment
):
    request = GenerationRequest(model=model, prompt="x", steps=2, controls=units(str(mask_png), tmp_path))
    with pytest.raises(InvalidRequest, match=fragment.replace("[", r"\[")) as caught:
        engine.generate(request)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_control_image_of_another_shape_is_refused(engine, mask_png, tmp_path):
    tall = tmp_path / "tall.png"
    Image.new("RGB", (32, 64)).save(tall)
    request = GenerationRequest(
        model=TINY_SD15, prompt="x", steps=2, width=64, height=64,
        controls=[dict(model=TINY_CANNY, image=str(mask_png)), dict(model=TINY_DEPTH, image=str(tall))],
    )  # fmt: skip
    with pytest.raises(InvalidRequest, match=r"controls\[1\]\.image size 32x64") as caught:
        engine.generate(request)
    assert caught.value.field == "controls[1].image"


@pytest.mark.parametrize(
    "unit, field",
    [
        (dict(conditioning_scale=2.5), "controls[1].conditioning_scale"),
        (dict(conditioning_scale=-0.1), "controls[1].conditioning_scale"),
        (dict(guidance_start=0.6, guidance_end=0.4), "controls[1].guidance_start"),
        (dict(guidance_end=1.2), "controls[1].guidance_end"),
        (dict(preprocessor="sobel"), "controls[1].preprocessor"),
        (dict(canny_low=200, canny_high=100), "controls[1].canny_low"),
        (dict(image=""), "controls[1].image"),
    ],
)
def test_bad_unit_values_are_refused_at_the_door(unit, field):
    units = [dict(model="demo", image="a.png"), {"model": "demo", "image": "b.png", **unit}]
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(prompt="x", controls=units)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"invalid {field}=")


def test_families_without_controlnet_refuse_controls(engine, mask_png, init_png):
    request = GenerationRequest(
        model=TINY_SDXL_REFINER,
        prompt="x",
        init_image=str(init_png),
        controls=[dict(model=TINY_SDXL_CANNY, image=str(mask_png))],
    )
    with pytest.raises(UnsupportedFeature, match="cannot be steered by a ControlNet"):
        engine.generate(request)


def test_detector_without_controlnet_aux_says_what_to_install(engine, mask_png):
    import importlib.util

    if importlib.util.find_spec("controlnet_aux") is not None:
        pytest.skip("controlnet_aux is installed here")
    request = GenerationRequest(
        model=TINY_SD15,
        prompt="x",
        steps=2,
        controls=[dict(model=TINY_OPENPOSE, image=str(mask_png), preprocessor="openpose")],
    )
    with pytest.raises(UnsupportedFeature, match=r"pip install 'easel\[detectors\]'") as caught:
        engine.generate(request)
    assert "controls[0].preprocessor='openpose'" in str(caught.value)


def test_replay_of_a_controlnet_image_is_byte_identical(engine, mask_png, tmp_path):
    from easel import Easel, Settings
    from easel.storage.gallery import Gallery

    gallery = Gallery(tmp_path / "home")
    # replay resolves the gallery's stored inputs under its own home; the cache is shared
    engine = Easel(Settings.from_env(home=tmp_path / "home"), cache=engine.cache)
    result = engine.generate(
        GenerationRequest(
            model=TINY_SD15, prompt="a red circle", steps=2, seed=8, num_images=2,
            controls=[
                dict(model=TINY_CANNY, image=str(mask_png), preprocessor="canny"),
                dict(model=TINY_OPENPOSE, image=str(mask_png), conditioning_scale=0.5),
            ],
        )
    )  # fmt: skip
    entries = gallery.add_result(result)
    from easel.storage.metadata import read_metadata

    document = read_metadata(entries[1].path).document
    stored = [unit["image"] for unit in document["request"]["controls"]]
    assert all(reference.startswith("easel-input:") for reference in stored)  # no server path inside
    assert {"control_0", "control_1"} <= set(document["model"]["hashes"])
    mask_png.rename(mask_png.with_suffix(".moved"))  # replay must not need the original file
    try:
        again, index = engine.replay(entries[1].path)
    finally:
        mask_png.with_suffix(".moved").rename(mask_png)
    assert index == 1
    assert again.encode(index) == entries[1].path.read_bytes()

"""Inpainting and outpainting through the Python API and the CLI: parity with plain diffusers
inpaint pipelines (4- and 9-channel UNets, SD 1.5, SDXL, ControlNet, padding_mask_crop), the
paste-back keeping the original pixels, outpainting, masked content, refusals before loading,
weight sharing, records and replay."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import (
    TINY_CANNY,
    TINY_FLAGGING,
    TINY_KANDINSKY,
    TINY_KANDINSKY_INPAINT,
    TINY_SD15,
    TINY_SD15_INPAINT,
    TINY_SDXL,
    TINY_SDXL_CANNY,
    TINY_SDXL_INPAINT,
    TINY_SDXL_REFINER,
)
from PIL import Image

from easel import GenerationRequest, InvalidRequest, UnsupportedFeature


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def generators(seed: int, count: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


def a1111_blur(mask: Image.Image, sigma: int) -> Image.Image:
    """AUTOMATIC1111's mask blur, written out: cv2 gaussian along x then y, its kernel size."""
    import cv2

    kernel = 2 * int(2.5 * sigma + 0.5) + 1
    array = cv2.GaussianBlur(np.asarray(mask), (kernel, 1), sigma)
    return Image.fromarray(cv2.GaussianBlur(array, (1, kernel), sigma))


@pytest.fixture(autouse=True)
def _installed(inpaint_models):
    """Every test here needs the tiny inpainting models (and the SD 1.5 / SDXL bases)."""


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory):
    """A 64x64 picture with some structure (gradient + a square), so paste-back is visible."""
    path = tmp_path_factory.mktemp("inpaint") / "picture.png"
    y, x = np.mgrid[0:64, 0:64]
    array = np.stack([x * 4, y * 4, 255 - x * 2], axis=-1).astype(np.uint8)
    array[8:24, 40:56] = (250, 240, 10)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def mask_png(picture):
    """White box (repaint) on black (keep), the picture's size."""
    path = picture.with_name("mask.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 24, 44, 48))
    mask.save(path)
    return path


def common(model: str, picture, mask_png, **fields):
    return dict(
        model=model, prompt="a red circle", init_image=str(picture), mask_image=str(mask_png),
        steps=3, seed=21, strength=0.75, guidance_scale=6.0, **fields,
    )  # fmt: skip


def plain_inpaint(pipeline_class, model: str, **components):
    pipe = pipeline_class.from_pretrained(model, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "model, pipeline_name",
    [
        (TINY_SD15, "StableDiffusionInpaintPipeline"),  # 4-channel UNet: known region blended each step
        (TINY_SD15_INPAINT, "StableDiffusionInpaintPipeline"),  # 9-channel dedicated inpainting UNet
        (TINY_SDXL, "StableDiffusionXLInpaintPipeline"),
        (TINY_SDXL_INPAINT, "StableDiffusionXLInpaintPipeline"),
    ],
    ids=["sd15-4ch", "sd15-9ch", "sdxl-4ch", "sdxl-9ch"],
)
def test_equals_plain_diffusers_and_paste_back_keeps_the_original(
    engine, picture, mask_png, model, pipeline_name
):
    import diffusers

    off = engine.generate(
        GenerationRequest(**common(model, picture, mask_png), num_images=2, paste_back=False)
    )
    on = engine.generate(GenerationRequest(**common(model, picture, mask_png), num_images=2))

    blurred = a1111_blur(Image.open(mask_png), 4)  # A1111's default mask_blur
    plain = plain_inpaint(getattr(diffusers, pipeline_name), model)
    expected = plain(
        "a red circle", image=Image.open(picture).convert("RGB"), mask_image=blurred, strength=0.75,
        num_inference_steps=3, guidance_scale=6.0, num_images_per_prompt=2, generator=generators(21, 2),
    ).images  # fmt: skip
    overlay = np.minimum(np.asarray(blurred).astype(int) * 2, 255)  # A1111's whole-picture overlay
    original = pixels(Image.open(picture))
    for raw, pasted, theirs in zip(off.images, on.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(raw), pixels(theirs))  # paste_back=False: the pipeline's pixels
        assert (overlay == 0).any() and (overlay == 255).any()
        np.testing.assert_array_equal(pixels(pasted)[overlay == 0], original[overlay == 0])
        np.testing.assert_array_equal(pixels(pasted)[overlay == 255], pixels(theirs)[overlay == 255])
        assert not np.array_equal(pixels(raw)[overlay == 0], original[overlay == 0])  # the VAE round trip
    assert on.request.task == "inpaint" and on.effective_steps == 2
    assert on.inpainting_conditioning == (model in (TINY_SD15_INPAINT, TINY_SDXL_INPAINT))  # 9 channels


def test_controlnet_inpaint_equals_plain_diffusers(engine, controlnet_models, picture, mask_png):
    from diffusers import ControlNetModel, StableDiffusionControlNetInpaintPipeline

    units = [dict(model=TINY_CANNY, image=str(mask_png), conditioning_scale=0.7)]
    fields = common(TINY_SD15, picture, mask_png, mask_blur=0, paste_back=False)
    result = engine.generate(GenerationRequest(**fields, controls=units))
    plain = plain_inpaint(
        StableDiffusionControlNetInpaintPipeline,
        TINY_SD15,
        controlnet=ControlNetModel.from_pretrained(TINY_CANNY),
    )
    expected = plain(
        "a red circle", image=Image.open(picture).convert("RGB"), mask_image=Image.open(mask_png),
        control_image=Image.open(mask_png).convert("RGB"), controlnet_conditioning_scale=0.7, strength=0.75,
        num_inference_steps=3, guidance_scale=6.0, generator=generators(21, 1),
    ).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    assert 'ControlNet 0: "Module: none' in result.parameters()


def test_controlnet_with_only_masked_crops_the_control_image_as_diffusers_does(
    engine, controlnet_models, picture, tmp_path
):
    from diffusers import ControlNetModel, StableDiffusionControlNetInpaintPipeline

    small = tmp_path / "small.png"
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 36, 54, 52))
    mask.save(small)
    units = [dict(model=TINY_CANNY, image=str(picture), conditioning_scale=0.8)]
    fields = common(TINY_SD15, picture, small, mask_blur=2, inpaint_area="masked", inpaint_padding=6)
    result = engine.generate(GenerationRequest(**fields, controls=units))
    plain = plain_inpaint(
        StableDiffusionControlNetInpaintPipeline,
        TINY_SD15,
        controlnet=ControlNetModel.from_pretrained(TINY_CANNY),
    )
    expected = plain(
        "a red circle", image=Image.open(picture).convert("RGB"), mask_image=a1111_blur(mask, 2),
        control_image=Image.open(picture).convert("RGB"), controlnet_conditioning_scale=0.8, strength=0.75,
        num_inference_steps=3, guidance_scale=6.0, generator=generators(21, 1), padding_mask_crop=6,
        height=64, width=64,
    ).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


def test_sdxl_controlnet_inpaint_equals_plain_diffusers(engine, controlnet_models, picture, mask_png):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetInpaintPipeline

    units = [dict(model=TINY_SDXL_CANNY, image=str(mask_png), conditioning_scale=0.6)]
    fields = common(TINY_SDXL, picture, mask_png, mask_blur=0, paste_back=False)
    result = engine.generate(GenerationRequest(**fields, controls=units))
    plain = plain_inpaint(
        StableDiffusionXLControlNetInpaintPipeline,
        TINY_SDXL,
        controlnet=ControlNetModel.from_pretrained(TINY_SDXL_CANNY),
    )
    expected = plain(
        "a red circle", image=Image.open(picture).convert("RGB"), mask_image=Image.open(mask_png),
        control_image=Image.open(mask_png).convert("RGB"), controlnet_conditioning_scale=0.6, strength=0.75,
        num_inference_steps=3, guidance_scale=6.0, generator=generators(21, 1),
    ).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    assert result.model_family == "sdxl"


def test_inpaint_area_masked_equals_diffusers_padding_mask_crop(engine, picture, tmp_path):
    from diffusers import StableDiffusionInpaintPipeline

    small = tmp_path / "small.png"
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (44, 40, 52, 50))  # a small mask: the box around it is upscaled to 64x64
    mask.save(small)
    fields = common(TINY_SD15, picture, small, mask_blur=2, inpaint_area="masked", inpaint_padding=4)
    result = engine.generate(GenerationRequest(**fields))
    plain = plain_inpaint(StableDiffusionInpaintPipeline, TINY_SD15)
    expected = plain(
        "a red circle", image=Image.open(picture).convert("RGB"), mask_image=a1111_blur(mask, 2),
        strength=0.75, num_inference_steps=3, guidance_scale=6.0, generator=generators(21, 1),
        padding_mask_crop=4, height=64, width=64,
    ).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    assert "Inpaint area: Only masked, Masked area padding: 4" in result.parameters()
    # far from the box, the picture is untouched
    np.testing.assert_array_equal(pixels(result.images[0])[:30, :30], pixels(Image.open(picture))[:30, :30])


def test_masked_content_changes_only_the_start_below_strength_1(engine, picture, mask_png):
    made = {
        content: engine.generate(
            GenerationRequest(**common(TINY_SD15, picture, mask_png, masked_content=content))
        )
        for content in ("original", "fill", "latent_noise", "latent_nothing")
    }
    images = {content: pixels(result.images[0]) for content, result in made.items()}
    for one in images:
        for other in images:
            assert one == other or not np.array_equal(images[one], images[other]), (one, other)
    assert "Masked content: latent noise" in made["latent_noise"].parameters()
    assert "Masked content" not in made["original"].parameters()  # A1111 writes only the others
    # strength 1 starts from pure noise in diffusers: the latent modes (which both fill the
    # picture first, as A1111 does) then make the same image
    full = {
        content: engine.generate(
            GenerationRequest(
                **{**common(TINY_SD15, picture, mask_png), "strength": 1.0}, masked_content=content
            )
        )
        for content in ("latent_noise", "latent_nothing")
    }
    np.testing.assert_array_equal(
        pixels(full["latent_noise"].images[0]), pixels(full["latent_nothing"].images[0])
    )


@pytest.mark.parametrize("content", ["latent_noise", "latent_nothing"])
def test_latent_modes_replace_the_masked_start_latents(engine, picture, mask_png, content):
    """The first step starts, inside the (latent) mask, from the image's own noise (latent
    noise) or zeros (latent nothing) noised to the first timestep; outside it, unchanged."""
    from easel.inpaint import prepare

    request = GenerationRequest(**common(TINY_SD15, picture, mask_png, masked_content=content))
    source = engine.resolve_model(TINY_SD15)
    from easel.models.cache import detect_family

    with engine.cache.lease(
        source, detect_family(source), device="cpu", dtype=torch.float32, allow_pickle=False
    ) as loaded:
        pipe = engine.task_pipeline(loaded, request.model_copy(update={"width": 64, "height": 64}))
    plain_prepare = pipe.prepare_latents
    job = prepare(
        request, Image.open(picture).convert("RGB"), Image.open(mask_png).convert("L"), pipe, (64, 64)
    )
    job.install_latent_fill(pipe)
    pipe.scheduler.set_timesteps(3)
    timestep = pipe.scheduler.timesteps[:1]
    image = pipe.image_processor.preprocess(job.image)
    arguments = dict(
        image=image, timestep=timestep, is_strength_max=False, return_noise=True, return_image_latents=True
    )
    plain = plain_prepare(1, 4, 64, 64, torch.float32, "cpu", generators(3, 1), None, **arguments)
    ours = pipe.prepare_latents(1, 4, 64, 64, torch.float32, "cpu", generators(3, 1), None, **arguments)
    (plain_latents, noise, image_latents), (latents, our_noise, our_image_latents) = plain, ours
    assert torch.equal(noise, our_noise) and torch.equal(image_latents, our_image_latents)
    inside = pipe.mask_processor.preprocess(job.mask, height=64, width=64)
    inside = torch.nn.functional.interpolate(inside, size=(32, 32)).expand_as(latents) > 0.5
    start = noise if content == "latent_noise" else torch.zeros_like(noise)
    expected = pipe.scheduler.add_noise(start, noise, timestep)
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(latents[inside], expected[inside], rtol=0, atol=1e-6)
    torch.testing.assert_close(latents[~inside], plain_latents[~inside], rtol=0, atol=1e-6)


def test_an_image_the_safety_checker_flags_stays_black(engine, picture, mask_png):
    result = engine.generate(GenerationRequest(**common(TINY_FLAGGING, picture, mask_png)))
    assert result.nsfw == [True]
    assert pixels(result.images[0]).max() == 0  # not pasted over the original


def test_fill_replaces_the_masked_area_by_blurred_colours():
    from easel.inpaint import fill_masked

    image = Image.new("RGB", (32, 32), (200, 30, 30))
    image.paste((0, 0, 0), (8, 8, 24, 24))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    filled = pixels(fill_masked(image, mask))
    np.testing.assert_array_equal(filled[np.asarray(mask) == 0], pixels(image)[np.asarray(mask) == 0])
    assert (
        np.abs(filled[16, 16] - np.array([200, 30, 30])).max() <= 2
    )  # the black hole took the red around it


def test_outpaint_extends_the_canvas_and_keeps_the_original(engine, picture):
    fields = dict(
        model=TINY_SD15, prompt="a red circle", init_image=str(picture), outpaint=(8, 0, 24, 16),
        steps=3, seed=5, strength=0.9,
    )  # fmt: skip
    result = engine.generate(GenerationRequest(**fields))
    assert result.images[0].size == (64 + 32, 64 + 16)
    assert (result.request.width, result.request.height) == (96, 80)
    out, original = pixels(result.images[0]), pixels(Image.open(picture))
    # the original sits at (8, 0); beyond the blur's reach (kernel radius 10) of the new border
    # its pixels are exactly the original's
    np.testing.assert_array_equal(out[0:53, 19:61], original[0:53, 11:53])
    edge = np.repeat(original[:, -1:], 24, axis=1)  # the border started from the repeated edge
    assert not np.array_equal(out[:64, 72:96], edge)
    assert 'Outpaint: "8,0,24,16"' in result.parameters()
    # width/height, when given, are the extended size: the same request written out replays
    again = engine.generate(result.request)
    np.testing.assert_array_equal(pixels(again.images[0]), out)


@pytest.mark.parametrize(
    "fields, field, fragment",
    [
        (dict(mask_image="m.png"), "mask_image", "give init_image too"),
        (dict(init_image="i.png", outpaint=(0, 0, 12, 0)), "outpaint", "multiple of 8"),
        (dict(init_image="i.png", outpaint=(0, 0, 0, 0)), "outpaint", "adds nothing"),
        (dict(init_image="i.png", outpaint=(8, 0, 8, 0), width=16), "outpaint", "leaves 0 pixels"),
        (dict(init_image="i.png", mask_blur=8), "mask_blur", "only used for inpainting"),
        (dict(init_image="i.png", mask_image="m.png", mask_blur=-1), "mask_blur", "invalid mask_blur=-1"),
        (
            dict(init_image="i.png", mask_image="m.png", inpaint_area="box"),
            "inpaint_area",
            "'whole' or 'masked'",
        ),
        (dict(init_image="i.png", mask_image="m.png", masked_content="x"), "masked_content", "invalid"),
        (dict(init_image="i.png", outpaint=(8, 0, 0, 0), invert_mask=True), "invert_mask", "no mask_image"),
    ],
)
def test_bad_inpainting_fields_are_refused_at_the_door(fields, field, fragment):
    with pytest.raises(InvalidRequest, match=fragment) as caught:
        GenerationRequest(prompt="x", **fields)
    assert caught.value.field == field


def _saved(tmp_path, name: str, image: Image.Image) -> str:
    path = tmp_path / name
    image.save(path)
    return str(path)


@pytest.mark.parametrize(
    "mask, fields, fragment",
    [
        (Image.new("L", (64, 32), 255), {}, "its shape does not match"),
        (Image.new("L", (64, 64), 0), {}, "nothing to repaint, the mask is all black"),
        (Image.new("L", (64, 64), 255), dict(invert_mask=True), "once inverted"),
    ],
    ids=["aspect", "all-black", "all-white-inverted"],
)
def test_bad_masks_are_refused_before_loading(picture, tmp_path, mask, fields, fragment):
    from easel import Easel, Settings

    fresh = Easel(Settings.from_env())
    request = GenerationRequest(
        model=TINY_SD15,
        prompt="x",
        init_image=str(picture),
        mask_image=_saved(tmp_path, "m.png", mask),
        **fields,
    )
    with pytest.raises(InvalidRequest, match=fragment) as caught:
        fresh.generate(request)
    assert caught.value.field == "mask_image"
    assert fresh.cache.loaded() == []  # nothing loaded


def test_mask_of_another_size_is_resized_and_a_transparent_mask_is_its_alpha(
    engine, picture, mask_png, tmp_path
):
    big = Image.open(mask_png).resize((128, 128), Image.Resampling.NEAREST)
    resized = engine.generate(
        GenerationRequest(
            **{**common(TINY_SD15, picture, mask_png), "mask_image": _saved(tmp_path, "big.png", big)}
        )
    )
    assert any("the mask was resized" in warning for warning in resized.warnings)
    # strokes painted on a transparent layer (what mask editors save): opaque = repaint
    strokes = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    strokes.paste((255, 0, 0, 255), (20, 24, 44, 48))
    painted = engine.generate(
        GenerationRequest(
            **{**common(TINY_SD15, picture, mask_png), "mask_image": _saved(tmp_path, "strokes.png", strokes)}
        )
    )
    plain = engine.generate(GenerationRequest(**common(TINY_SD15, picture, mask_png)))
    np.testing.assert_array_equal(pixels(painted.images[0]), pixels(plain.images[0]))


def test_kandinsky_inpainting_decoder_equals_the_combined_pipeline(engine, picture, mask_png):
    from diffusers import AutoPipelineForInpainting

    fields = {**common(TINY_KANDINSKY_INPAINT, picture, mask_png, prior_steps=3), "strength": None}
    result = engine.generate(GenerationRequest(**fields, num_images=2, paste_back=False))
    assert result.model_family == "kandinsky22_inpaint" and result.request.strength == 1.0
    assert result.effective_steps == 3  # no strength: it always repaints from noise
    plain = AutoPipelineForInpainting.from_pretrained(TINY_KANDINSKY_INPAINT)  # the prior from the card
    plain.set_progress_bar_config(disable=True)
    blurred = a1111_blur(Image.open(mask_png), 4)
    for index, ours in enumerate(result.images):  # one call per image, as for text-to-image
        expected = plain(
            "a red circle", image=Image.open(picture).convert("RGB"), mask_image=blurred,
            num_inference_steps=3, prior_num_inference_steps=3, guidance_scale=6.0, height=64, width=64,
            generator=torch.Generator("cpu").manual_seed(21 + index),
        ).images[0]  # fmt: skip
        np.testing.assert_array_equal(pixels(ours), pixels(expected))
    with pytest.raises(UnsupportedFeature, match=r"strength=0\.5"):
        engine.generate(GenerationRequest(**{**fields, "strength": 0.5}))


def test_families_that_cannot_inpaint_say_so(engine, picture, mask_png):
    fields = common(TINY_SD15, picture, mask_png)
    with pytest.raises(UnsupportedFeature, match=r"mask_image.*kandinsky-2-2-decoder-inpaint"):
        engine.generate(GenerationRequest(**{**fields, "model": TINY_KANDINSKY, "strength": None}))
    with pytest.raises(UnsupportedFeature, match=r"refiner=.*does not inpaint"):
        engine.generate(GenerationRequest(**{**fields, "model": TINY_SDXL}, refiner=TINY_SDXL_REFINER))
    with pytest.raises(UnsupportedFeature, match="dedicated inpainting model"):
        engine.generate(GenerationRequest(model=TINY_SD15_INPAINT, prompt="x", steps=2, seed=1))


def test_refiner_alone_inpaints_with_its_aesthetic_scores(engine, picture, mask_png):
    from diffusers import StableDiffusionXLInpaintPipeline

    fields = common(TINY_SDXL_REFINER, picture, mask_png, mask_blur=0, paste_back=False)
    result = engine.generate(GenerationRequest(**fields))
    plain = plain_inpaint(StableDiffusionXLInpaintPipeline, TINY_SDXL_REFINER)
    expected = plain(
        "a red circle", image=Image.open(picture).convert("RGB"), mask_image=Image.open(mask_png),
        strength=0.75, num_inference_steps=3, guidance_scale=6.0, generator=generators(21, 1),
        aesthetic_score=6.0, negative_aesthetic_score=2.5,
    ).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    assert result.request.aesthetic_score == 6.0


def test_inpaint_pipelines_share_the_base_weights(engine):
    from easel.models.cache import detect_family

    for model in (TINY_SD15, TINY_SDXL):
        source = engine.resolve_model(model)
        with engine.cache.lease(
            source, detect_family(source), device="cpu", dtype=torch.float32, allow_pickle=False
        ) as loaded:
            text2img = engine.task_pipeline(loaded, GenerationRequest(prompt="x"))
            inpaint = engine.task_pipeline(
                loaded, GenerationRequest(prompt="x", init_image="i.png", mask_image="m.png")
            )
        assert type(inpaint).__name__.endswith("InpaintPipeline")
        assert inpaint.unet is text2img.unet is loaded.pipeline.unet and inpaint.vae is text2img.vae
        assert all(a is b for a, b in zip(inpaint.unet.parameters(), text2img.unet.parameters(), strict=True))
        assert inpaint.scheduler is not loaded.pipeline.scheduler  # its own scheduler


def test_records_and_replay_after_the_inputs_are_gone(engine, picture, mask_png, tmp_path):
    import shutil

    from easel import Easel, Settings
    from easel.storage.gallery import Gallery
    from easel.storage.metadata import read_metadata

    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    shutil.copy(picture, init)
    Image.open(mask_png).point(lambda v: 255 - v).save(mask)  # inverted: repaint where black
    gallery = Gallery(tmp_path / "home")
    engine = Easel(Settings.from_env(home=tmp_path / "home"), cache=engine.cache)
    result = engine.generate(
        GenerationRequest(
            model=TINY_SD15, prompt="a red circle", init_image=str(init), mask_image=str(mask),
            invert_mask=True, mask_blur=3, masked_content="latent_noise", steps=3, seed=9, num_images=2,
        )
    )  # fmt: skip
    entries = gallery.add_result(result)
    metadata = read_metadata(entries[1].path)
    recorded = metadata.document["request"]
    assert recorded["mask_image"].startswith("easel-input:") and recorded["init_image"].startswith(
        "easel-input:"
    )
    assert recorded["invert_mask"] is True and recorded["mask_blur"] == 3
    settings = metadata.parsed_parameters()["settings"]
    assert settings["Mask blur"] == "3" and settings["Mask mode"] == "Inpaint not masked"
    assert settings["Masked content"] == "latent noise" and settings["Denoising strength"] == "0.8"
    init.unlink()
    mask.unlink()
    again, index = engine.replay(entries[1].path)
    assert index == 1
    assert again.encode(index) == entries[1].path.read_bytes()


@pytest.mark.slow
def test_cli_inpaints_and_names_the_flag_of_a_bad_value(hf_home, picture, mask_png, tmp_path):
    from test_cli import run_easel

    out = tmp_path / "out.png"
    done = run_easel(
        "generate", "a red circle", "-m", TINY_SD15, "--image", str(picture), "--mask", str(mask_png),
        "--mask-blur", "2", "--inpaint-area", "masked", "--inpaint-padding", "8", "--masked-content", "fill",
        "--steps", "3", "--strength", "0.7", "--seed", "4", "--no-gallery", "-o", str(out), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["effective_steps"] == 2 and summary["request"]["inpaint_area"] == "masked"
    assert Image.open(out).size == (64, 64)
    from easel.storage.metadata import read_metadata

    assert "Mask blur: 2, Inpaint area: Only masked, Masked area padding: 8, Masked content: fill" in (
        read_metadata(out).parameters
    )
    bad = run_easel("generate", "x", "-m", TINY_SD15, "--image", str(picture), "--outpaint", "8,0,12,0")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid --outpaint=(8, 0, 12, 0)"), bad.stderr

"""Hires fix through the Python API: pixels equal to a plain diffusers sequence (txt2img to
latents, upscale, img2img), sizes, replay, progress, refusals, metadata and the CLI flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_KANDINSKY, TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER
from PIL import Image

from easel import GenerationRequest, InvalidRequest
from easel.errors import UnsupportedFeature
from easel.limits import Limits


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def plain_pipelines():
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

    text2img = AutoPipelineForText2Image.from_pretrained(TINY_SD15)
    text2img.set_progress_bar_config(disable=True)
    img2img = AutoPipelineForImage2Image.from_pipe(text2img)
    img2img.set_progress_bar_config(disable=True)
    return text2img, img2img


def generators(seed: int, count: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


def test_latent_hires_equals_plain_diffusers(engine):
    request = GenerationRequest(
        model=TINY_SD15,
        prompt="a red circle",
        negative_prompt="blue",
        steps=4,
        seed=7,
        num_images=2,
        width=64,
        height=48,
        hires={"scale": 1.5, "strength": 0.6, "steps": 5},
    )
    result = engine.generate(request)

    text2img, img2img = plain_pipelines()
    latents = text2img(
        "a red circle",
        negative_prompt="blue",
        num_inference_steps=4,
        width=64,
        height=48,
        num_images_per_prompt=2,
        generator=generators(7, 2),
        output_type="latent",
    ).images
    factor = text2img.vae_scale_factor  # the tiny VAE's
    upscaled = torch.nn.functional.interpolate(latents, size=(72 // factor, 96 // factor), mode="bilinear")
    expected = img2img(
        "a red circle",
        negative_prompt="blue",
        image=upscaled,
        strength=0.6,
        num_inference_steps=5,
        num_images_per_prompt=2,
        generator=generators(7, 2),
    ).images
    assert [image.size for image in result.images] == [(96, 72), (96, 72)]
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))
    assert result.request.width == 64 and result.request.height == 48  # the first pass's size
    assert result.request.hires is not None and result.request.hires.scale == 1.5


def test_lanczos_hires_with_its_own_prompt_equals_plain_diffusers(engine):
    hires = {
        "width": 96,
        "upscaler": "Lanczos",
        "strength": 0.5,
        "prompt": "a green square",
        "guidance_scale": 5.0,
        "scheduler": "Euler",
    }
    request = GenerationRequest(
        model=TINY_SD15, prompt="a red circle", steps=4, seed=3, width=64, height=64, hires=hires
    )
    result = engine.generate(request)

    from diffusers import EulerDiscreteScheduler

    text2img, img2img = plain_pipelines()
    first = text2img(
        "a red circle", num_inference_steps=4, width=64, height=64, generator=generators(3, 1)
    ).images
    bigger = [image.resize((96, 96), Image.Resampling.LANCZOS) for image in first]
    img2img.scheduler = EulerDiscreteScheduler.from_config(text2img.scheduler.config)
    expected = img2img(
        "a green square",
        image=bigger,
        strength=0.5,
        num_inference_steps=4,
        guidance_scale=5.0,
        generator=generators(3, 1),
    ).images
    assert result.images[0].size == (96, 96)
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected[0]))
    text = result.parameters(0)
    for item in (
        "Size: 64x64",
        "Denoising strength: 0.5",
        "Hires resize: 96x0",
        "Hires upscaler: Lanczos",
        "Hires prompt: a green square",
        "Hires sampler: Euler",
        "Hires CFG Scale: 5",
    ):
        assert item in text, text


def test_replay_is_byte_identical_and_infotext_parses_back(engine, tmp_path):
    from easel.storage.metadata import read_metadata

    request = GenerationRequest(
        model=TINY_SD15,
        prompt="a red circle",
        steps=3,
        seed=11,
        width=64,
        height=64,
        hires={"scale": 1.25, "upscaler": "Latent (bicubic antialiased)", "steps": 4},
    )
    result = engine.generate(request)
    path = tmp_path / "hires.png"
    path.write_bytes(result.encode(0))
    again, index = engine.replay(path)
    assert again.encode(index) == path.read_bytes()
    settings = read_metadata(path).parsed_parameters()["settings"]
    assert settings["Size"] == "64x64"
    assert settings["Hires upscale"] == "1.25" and settings["Hires steps"] == "4"
    assert settings["Hires upscaler"] == "Latent (bicubic antialiased)"
    assert settings["Denoising strength"] == "0.7"


def test_progress_counts_both_passes_and_cancel_stops_the_second(engine):
    seen = []
    request = GenerationRequest(
        model=TINY_SD15,
        prompt="x",
        steps=4,
        seed=1,
        width=64,
        height=64,
        scheduler="Euler",
        hires={"scale": 1.5, "strength": 0.5, "steps": 6},
    )
    engine.generate(request, on_progress=seen.append)
    total = 4 + int(6 * 0.5)
    assert [(p.step, p.total) for p in seen] == [(step, total) for step in range(1, total + 1)]

    import threading

    from easel import Cancelled

    cancel = threading.Event()

    def cancel_in_second_pass(progress):
        if progress.step == 5:
            cancel.set()

    with pytest.raises(Cancelled):
        engine.generate(request, on_progress=cancel_in_second_pass, cancel=cancel)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"init_image": "x.png", "hires": {}}, "hires"),
        ({"hires": {"scale": 2, "width": 64}}, "hires.scale"),
        ({"hires": {"scale": 0.5}}, "hires.scale"),
        ({"hires": {"width": 60}}, "hires.width"),
        ({"width": 4096, "height": 64, "hires": {}}, "hires.scale"),
        ({"steps": 2, "hires": {"strength": 0.2}}, "hires.strength"),
        ({"hires": {"scheduler": "No Such"}}, "hires.scheduler"),
        ({"hires": {"upscale": 2}}, "hires.upscale"),
        ({"prompt_syntax": "a1111", "hires": {"prompt": "a <lora:x:1>"}}, "hires.prompt"),
    ],
)
def test_refusals_name_the_field(fields, field, engine):
    with pytest.raises(InvalidRequest) as caught:
        engine.generate(GenerationRequest(**{"model": TINY_SD15, "prompt": "x", **fields}))
    assert caught.value.field == field
    assert field in str(caught.value)


def test_unknown_upscaler_and_limits(engine):
    with pytest.raises(InvalidRequest) as caught:
        engine.generate(
            GenerationRequest(model=TINY_SD15, prompt="x", steps=2, hires={"upscaler": "Bicubic"})
        )
    assert caught.value.field == "hires.upscaler" and "Lanczos" in str(caught.value)
    request = GenerationRequest(model=TINY_SD15, prompt="x", steps=4, width=64, height=64, hires={"scale": 2})
    with pytest.raises(InvalidRequest) as caught:
        engine.generate(request, limits=Limits(max_pixels=64 * 64 * 2))
    assert caught.value.field == "hires.scale"
    with pytest.raises(InvalidRequest) as caught:  # 4 first-pass steps + int(4 x 0.7) = 6 in all
        engine.generate(request, limits=Limits(max_steps=5))
    assert caught.value.field == "hires.steps" and "6 steps" in str(caught.value)
    small = request.model_copy(update={"hires": request.hires.model_copy(update={"scale": 1.0})})
    assert engine.generate(small, limits=Limits(max_steps=6, max_pixels=64 * 64)).images[0].size == (64, 64)


def test_kandinsky_refuses_hires(engine, kandinsky_models):
    with pytest.raises(UnsupportedFeature) as caught:
        engine.generate(GenerationRequest(model=TINY_KANDINSKY, prompt="x", steps=2, hires={}))
    assert "hires" in str(caught.value)


def test_cli_flags_equal_the_python_api(hf_home, engine, tmp_path):
    from typer.testing import CliRunner

    from easel.cli.app import app

    out = tmp_path / "cli.png"
    args = ["generate", "a red circle", "-m", TINY_SD15, "--steps", "2", "--seed", "4", "--width", "64",
            "--height", "64", "-o", str(out), "--no-gallery"]  # fmt: skip
    hires = ["--hires-size", "96x0", "--hires-steps", "3", "--hires-strength", "0.5", "--upscaler", "Nearest",
             "--hires-prompt", "a blue square", "--hires-negative-prompt", "green"]  # fmt: skip
    done = CliRunner().invoke(app, [*args, *hires])
    assert done.exit_code == 0, done.output
    assert "64x64 -> 96x96 (hires fix)" in done.output
    fields = {"width": 96, "steps": 3, "strength": 0.5, "upscaler": "Nearest", "prompt": "a blue square",
              "negative_prompt": "green"}  # fmt: skip
    api = engine.generate(
        GenerationRequest(
            model=TINY_SD15, prompt="a red circle", steps=2, seed=4, width=64, height=64, hires=fields
        )
    )
    saved = Image.open(out)
    assert saved.size == (96, 96)
    np.testing.assert_array_equal(pixels(saved), pixels(api.images[0]))

    for extra, flag in (
        (["--hires-steps", "3"], "--hires-steps"),  # without --hires: it would do nothing
        (["--hires", "1.5", "--upscaler", "Bicubic"], "--upscaler"),
        (["--hires", "0.5"], "--hires"),
        (["--hires-size", "96"], "--hires-size"),
        (["--hires", "2", "--hires-size", "96x96"], "--hires-size"),
    ):
        refused = CliRunner().invoke(app, [*args, *extra])
        assert refused.exit_code == 2, (extra, refused.output)
        assert flag in refused.output, (extra, refused.output)


def test_sdxl_latent_hires_equals_plain_diffusers(engine, sdxl_models):
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

    hires = {"scale": 1.5, "strength": 0.5, "upscaler": "Latent (nearest-exact)"}
    request = GenerationRequest(
        model=TINY_SDXL, prompt="a cat", steps=3, seed=2, width=64, height=64, hires=hires
    )
    result = engine.generate(request)

    text2img = AutoPipelineForText2Image.from_pretrained(TINY_SDXL)
    text2img.set_progress_bar_config(disable=True)
    img2img = AutoPipelineForImage2Image.from_pipe(text2img)
    img2img.set_progress_bar_config(disable=True)
    latents = text2img("a cat", num_inference_steps=3, width=64, height=64, generator=generators(2, 1),
                       output_type="latent").images  # fmt: skip
    factor = text2img.vae_scale_factor
    upscaled = torch.nn.functional.interpolate(
        latents, size=(96 // factor, 96 // factor), mode="nearest-exact"
    )
    expected = img2img(
        "a cat", image=upscaled, strength=0.5, num_inference_steps=3, generator=generators(2, 1)
    )
    assert result.images[0].size == (96, 96)
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected.images[0]))
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(model=TINY_SDXL, prompt="a cat", refiner=TINY_SDXL_REFINER, hires=hires)
    assert caught.value.field == "hires" and "refiner" in str(caught.value)


def test_an_embedding_named_only_in_the_hires_prompt_is_loaded(hf_home, tmp_path):
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig

    from easel import Easel, Settings

    width = CLIPTextConfig.from_pretrained(TINY_SD15, subfolder="text_encoder").hidden_size
    folder = tmp_path / "embeddings"
    folder.mkdir()
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(5))
    save_file({"emb_params": vectors}, folder / "shiny.safetensors")
    engine = Easel(Settings.from_env(embeddings_dir=folder, home=tmp_path / "home"))
    hires = {"scale": 1.5, "strength": 0.5, "prompt": "a shiny square"}
    request = GenerationRequest(
        model=TINY_SD15, prompt="a square", steps=3, seed=11, scheduler="Euler", hires=hires
    )
    result = engine.generate(request)
    assert "ti:shiny" in result.model_hashes

    from diffusers import EulerDiscreteScheduler

    text2img = AutoPipelineForText2Image.from_pretrained(TINY_SD15)
    text2img.scheduler = EulerDiscreteScheduler.from_config(text2img.scheduler.config)
    text2img.set_progress_bar_config(disable=True)
    latents = text2img(
        "a square", num_inference_steps=3, generator=generators(11, 1), output_type="latent"
    ).images
    text2img.load_textual_inversion(str(folder / "shiny.safetensors"), token="shiny")
    img2img = AutoPipelineForImage2Image.from_pipe(text2img)
    img2img.scheduler = EulerDiscreteScheduler.from_config(text2img.scheduler.config)
    img2img.set_progress_bar_config(disable=True)
    factor = text2img.vae_scale_factor
    upscaled = torch.nn.functional.interpolate(latents, size=(96 // factor, 96 // factor), mode="bilinear")
    expected = img2img("a shiny square", image=upscaled, strength=0.5, num_inference_steps=3,
                       generator=generators(11, 1)).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))

"""Kandinsky 2.2 (prior + decoder) by repo id, offline, against diffusers' combined pipelines."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_KANDINSKY, TINY_KANDINSKY_PRIOR, TINY_SD15, TINY_SDXL_REFINER
from PIL import Image

from easel import GenerationRequest, InvalidRequest, UnsupportedFeature

SIZE = {"width": 64, "height": 64}  # Kandinsky's own default is 512x512: too slow for tests


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def _installed(kandinsky_models):
    """Every test here needs the tiny Kandinsky models in the HF cache."""


def test_text2img_equals_the_combined_pipeline(engine):
    from diffusers import AutoPipelineForText2Image

    request = GenerationRequest(
        model=TINY_KANDINSKY,
        prompt="a red cat",
        negative_prompt="blue",
        steps=3,
        prior_steps=3,
        prior_guidance_scale=3.0,
        seed=8,
        num_images=2,
        **SIZE,
    )
    result = engine.generate(request)
    assert result.model_family == "kandinsky22"
    assert result.request.guidance_scale == 4.0  # Kandinsky's default

    plain = AutoPipelineForText2Image.from_pretrained(TINY_KANDINSKY)  # finds the prior in the model card
    plain.set_progress_bar_config(disable=True)
    for index, ours in enumerate(result.images):  # image i is what seed 8 + i gives alone
        expected = plain(
            "a red cat",
            negative_prompt="blue",
            num_inference_steps=3,
            prior_num_inference_steps=3,
            prior_guidance_scale=3.0,
            generator=torch.Generator("cpu").manual_seed(8 + index),
            **SIZE,
        ).images[0]
        np.testing.assert_array_equal(pixels(ours), pixels(expected))
    assert result.seeds == [8, 9]


def test_a_batch_reports_progress_across_its_images(engine):
    seen = []
    engine.generate(
        GenerationRequest(
            model=TINY_KANDINSKY, prompt="a", steps=2, prior_steps=2, seed=0, num_images=2, **SIZE
        ),
        on_progress=seen.append,
    )
    assert [(p.step, p.total) for p in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_img2img_equals_the_combined_pipeline(engine, init_png):
    from diffusers import AutoPipelineForImage2Image
    from diffusers.utils import load_image

    request = GenerationRequest(
        model=TINY_KANDINSKY,
        prompt="a cat",
        init_image=str(init_png),
        strength=0.5,
        steps=4,
        prior_steps=2,
        seed=3,
    )
    result = engine.generate(request)
    assert result.effective_steps == 2
    assert result.images[0].size == (64, 64)  # the init image's size

    plain = AutoPipelineForImage2Image.from_pretrained(TINY_KANDINSKY)
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        "a cat",
        image=load_image(str(init_png)),
        strength=0.5,
        num_inference_steps=4,
        prior_num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(3),
        **SIZE,
    ).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


def test_prior_defaults_are_recorded_and_the_run_is_deterministic(engine):
    request = GenerationRequest(model=TINY_KANDINSKY, prompt="a cat", steps=2, seed=1, **SIZE)
    first, second = engine.generate(request), engine.generate(request)
    assert (first.request.prior_steps, first.request.prior_guidance_scale) == (25, 4.0)
    assert png_bytes(first.images[0]) == png_bytes(second.images[0])
    again = engine.generate(first.request)  # the concrete request replays
    assert png_bytes(again.images[0]) == png_bytes(first.images[0])


def test_explicit_prior_and_decoder_without_model_card(engine, kandinsky_models, tmp_path):
    decoder = tmp_path / "decoder"
    shutil.copytree(kandinsky_models[TINY_KANDINSKY], decoder)
    (decoder / "README.md").unlink()
    common = {"prompt": "a cat", "steps": 2, "prior_steps": 2, "seed": 2, **SIZE}
    with pytest.raises(UnsupportedFeature, match="names no prior; give one with --prior"):
        engine.generate(GenerationRequest(model=str(decoder), **common))
    explicit = engine.generate(GenerationRequest(model=str(decoder), prior=TINY_KANDINSKY_PRIOR, **common))
    from_card = engine.generate(GenerationRequest(model=TINY_KANDINSKY, **common))
    np.testing.assert_array_equal(pixels(explicit.images[0]), pixels(from_card.images[0]))


def test_decoder_and_prior_are_cached_once_and_shared(engine):
    engine.generate(
        GenerationRequest(model=TINY_KANDINSKY, prompt="a", steps=1, prior_steps=2, seed=0, **SIZE)
    )
    entries = {entry.source.reference: entry for entry in engine.cache.loaded()}
    decoder, prior = entries[TINY_KANDINSKY].pipeline, entries[TINY_KANDINSKY_PRIOR].pipeline
    loaded = entries[TINY_KANDINSKY]
    pipe = engine.task_pipeline(
        loaded, GenerationRequest(prompt="x"), companions={"prior": entries[TINY_KANDINSKY_PRIOR]}
    )
    assert type(pipe).__name__ == "KandinskyV22CombinedPipeline"
    assert pipe.unet is decoder.unet and pipe.movq is decoder.movq and pipe.prior_prior is prior.prior
    assert pipe.scheduler is not decoder.scheduler and pipe.prior_scheduler is not prior.scheduler


def test_non_finite_movq_decode_is_decoded_again_in_float32(kandinsky_models, monkeypatch):
    from easel import Easel, Settings

    engine = Easel(Settings.from_env())
    request = GenerationRequest(model=TINY_KANDINSKY, prompt="a cat", steps=2, prior_steps=2, seed=6, **SIZE)
    clean = engine.generate(request)
    movq = next(e for e in engine.cache.loaded() if e.source.reference == TINY_KANDINSKY).pipeline.movq
    decode = movq.decode
    calls: list[int] = []

    def overflowing_once(latents, *args, **kwargs):
        calls.append(1)
        out = decode(latents, *args, **kwargs)
        if len(calls) == 1:
            out.sample = out.sample * float("nan")
        return out

    monkeypatch.setattr(movq, "decode", overflowing_once)
    retried = engine.generate(request)
    assert len(calls) == 2
    assert any("decoded them again in float32" in w for w in retried.warnings)
    np.testing.assert_array_equal(pixels(retried.images[0]), pixels(clean.images[0]))


@pytest.mark.parametrize(
    ("fields", "error", "fragment"),
    [
        (
            {"model": TINY_KANDINSKY_PRIOR},
            UnsupportedFeature,
            "Kandinsky 2.2 prior, which makes image embeddings",
        ),
        ({"prior": TINY_SD15}, InvalidRequest, "invalid prior=.* sd15 model, not a Kandinsky 2.2 prior"),
        ({"refiner": TINY_SDXL_REFINER}, UnsupportedFeature, "refiner=.* not used by kandinsky22 models"),
        ({"model": TINY_SD15, "prior_steps": 3}, UnsupportedFeature, "prior_steps=3 is not used by sd15"),
        ({"original_size": (64, 64)}, UnsupportedFeature, "original_size=.* not used by kandinsky22"),
    ],
)
def test_bad_field_combinations_are_refused(engine, fields, error, fragment):
    with pytest.raises(error, match=fragment):
        engine.generate(GenerationRequest(prompt="a", steps=2, **{"model": TINY_KANDINSKY, **fields}))


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"prior_steps": 1}, "prior_steps"), ({"prior_guidance_scale": -1}, "prior_guidance_scale")],
)
def test_bad_prior_values_are_refused_at_the_door(fields, field):
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(model=TINY_KANDINSKY, prompt="a", **fields)
    assert caught.value.field == field


@pytest.mark.slow
def test_cli_prior_options(tmp_path, engine):
    from test_cli import run_easel

    out = tmp_path / "k.png"
    done = run_easel(
        "generate", "a cat", "-m", TINY_KANDINSKY, "--prior", TINY_KANDINSKY_PRIOR, "--prior-steps", "2",
        "--prior-guidance", "3", "--steps", "2", "--seed", "5", "--width", "64", "--height", "64",
        "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    api = engine.generate(
        GenerationRequest(
            model=TINY_KANDINSKY,
            prompt="a cat",
            prior_steps=2,
            prior_guidance_scale=3,
            steps=2,
            seed=5,
            **SIZE,
        )
    )
    np.testing.assert_array_equal(pixels(Image.open(out)), pixels(api.images[0]))

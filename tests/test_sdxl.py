"""SDXL base, refiner and the base -> refiner hand-off, by repo id, offline, against plain diffusers."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER
from PIL import Image

from easel import GenerationFailed, GenerationRequest, InvalidRequest, ModelNotFound, UnsupportedFeature


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def generators(seed: int, count: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


@pytest.fixture(autouse=True)
def _installed(sdxl_models):
    """Every test here needs the tiny SDXL models in the HF cache."""


@pytest.fixture(scope="module")
def plain_base(sdxl_models):
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(TINY_SDXL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def fresh_engine(sdxl_models):
    """An engine of its own, for tests that look into (or tamper with) its cached pipelines."""
    from easel import Easel, Settings

    return Easel(Settings.from_env())


def cached(engine, reference: str):
    return next(entry for entry in engine.cache.loaded() if entry.source.reference == reference)


def test_text2img_equals_plain_diffusers(engine, plain_base):
    result = engine.generate(
        GenerationRequest(
            model=TINY_SDXL, prompt="a red cat", negative_prompt="blue", steps=3, seed=7, num_images=2
        )
    )
    expected = plain_base(
        "a red cat",
        negative_prompt="blue",
        num_inference_steps=3,
        num_images_per_prompt=2,
        generator=generators(7, 2),
    ).images
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))
    assert result.model_family == "sdxl"
    assert (result.request.width, result.request.height) == (64, 64)  # unet.sample_size x vae scale
    assert result.request.guidance_scale == 5.0  # SDXL's default, not SD 1.5's 7.5
    assert result.warnings == []


def test_micro_conditioning_reaches_the_pipeline(engine, plain_base):
    fields = {"original_size": (128, 96), "target_size": (64, 64), "crops_coords_top_left": (8, 0)}
    result = engine.generate(GenerationRequest(model=TINY_SDXL, prompt="a cat", steps=2, seed=3, **fields))
    expected = plain_base("a cat", num_inference_steps=2, generator=generators(3, 1), **fields).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    plain = engine.generate(GenerationRequest(model=TINY_SDXL, prompt="a cat", steps=2, seed=3))
    assert not np.array_equal(pixels(plain.images[0]), pixels(result.images[0]))
    assert result.request.original_size == (128, 96)


def test_img2img_equals_plain_diffusers(engine, init_png):
    from diffusers import AutoPipelineForImage2Image
    from diffusers.utils import load_image

    result = engine.generate(
        GenerationRequest(
            model=TINY_SDXL, prompt="a cat", init_image=str(init_png), strength=0.5, steps=4, seed=2
        )
    )
    assert result.effective_steps == 2
    plain = AutoPipelineForImage2Image.from_pretrained(TINY_SDXL)
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        "a cat",
        image=load_image(str(init_png)),
        strength=0.5,
        num_inference_steps=4,
        generator=generators(2, 1),
    ).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


def test_refiner_alone_is_img2img_with_aesthetic_scores(engine, init_png):
    from diffusers import AutoPipelineForImage2Image
    from diffusers.utils import load_image

    request = GenerationRequest(
        model=TINY_SDXL_REFINER,
        prompt="a cat",
        init_image=str(init_png),
        strength=0.5,
        steps=4,
        seed=9,
        aesthetic_score=7.5,
    )
    result = engine.generate(request)
    assert result.model_family == "sdxl_refiner"
    assert (result.request.aesthetic_score, result.request.negative_aesthetic_score) == (7.5, 2.5)
    plain = AutoPipelineForImage2Image.from_pretrained(TINY_SDXL_REFINER)
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        "a cat",
        image=load_image(str(init_png)),
        strength=0.5,
        num_inference_steps=4,
        aesthetic_score=7.5,
        generator=generators(9, 1),
    ).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


def test_refiner_text2img_is_refused_before_loading(engine):
    with pytest.raises(UnsupportedFeature, match=r"refiner only does image-to-image.*--refiner"):
        engine.generate(GenerationRequest(model=TINY_SDXL_REFINER, prompt="a cat", steps=2))


def test_hand_off_equals_the_plain_ensemble_of_experts(engine, plain_base):
    from diffusers import AutoPipelineForImage2Image

    request = GenerationRequest(
        model=TINY_SDXL,
        refiner=TINY_SDXL_REFINER,
        refiner_at=0.6,
        prompt="a red cat",
        steps=5,
        seed=4,
        num_images=2,
    )
    result = engine.generate(request)
    assert result.request.aesthetic_score == 6.0 and result.request.negative_aesthetic_score == 2.5

    refiner = AutoPipelineForImage2Image.from_pretrained(
        TINY_SDXL_REFINER, vae=plain_base.vae, text_encoder_2=plain_base.text_encoder_2
    )
    refiner.set_progress_bar_config(disable=True)
    shared = generators(4, 2)
    latents = plain_base(
        "a red cat",
        num_inference_steps=5,
        num_images_per_prompt=2,
        denoising_end=0.6,
        output_type="latent",
        generator=shared,
    ).images
    expected = refiner(
        "a red cat",
        num_inference_steps=5,
        num_images_per_prompt=2,
        denoising_start=0.6,
        image=latents,
        generator=shared,
    ).images
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))
    # and the refiner did something: the base alone, decoded, differs
    alone = engine.generate(GenerationRequest(model=TINY_SDXL, prompt="a red cat", steps=5, seed=4))
    assert not np.array_equal(pixels(alone.images[0]), pixels(result.images[0]))


def test_hand_off_never_decodes_in_between_and_shares_the_cached_modules(fresh_engine, monkeypatch):
    request = GenerationRequest(
        model=TINY_SDXL, refiner=TINY_SDXL_REFINER, refiner_at=0.5, prompt="a cat", steps=4, seed=1
    )
    first = fresh_engine.generate(request)
    base, refiner = cached(fresh_engine, TINY_SDXL).pipeline, cached(fresh_engine, TINY_SDXL_REFINER).pipeline
    assert refiner.vae is base.vae and refiner.text_encoder_2 is base.text_encoder_2
    assert refiner.unet is not base.unet

    events: list[str] = []
    decode = base.vae.decode

    def spy(*args, **kwargs):
        events.append("decode")
        return decode(*args, **kwargs)

    monkeypatch.setattr(base.vae, "decode", spy)  # this instance only (the refiner shares it)
    again = fresh_engine.generate(request, on_progress=lambda p: events.append(f"step {p.step}/{p.total}"))
    assert events == ["step 1/4", "step 2/4", "step 3/4", "step 4/4", "decode"]
    assert len(fresh_engine.cache) == 2  # both stayed cached, nothing reloaded
    assert cached(fresh_engine, TINY_SDXL).pipeline is base
    assert cached(fresh_engine, TINY_SDXL_REFINER).pipeline is refiner
    assert png_bytes(again.images[0]) == png_bytes(first.images[0])  # deterministic


def test_non_finite_decode_is_decoded_again_in_float32(fresh_engine, monkeypatch):
    request = GenerationRequest(model=TINY_SDXL, prompt="a cat", steps=2, seed=5, num_images=2)
    clean = fresh_engine.generate(request)
    vae = cached(fresh_engine, TINY_SDXL).pipeline.vae
    decode = vae.decode
    calls: list[torch.dtype] = []

    def overflowing_once(latents, *args, **kwargs):
        calls.append(vae.dtype)
        out = decode(latents, *args, **kwargs)
        if len(calls) == 1:  # the first decode overflows, as the fp16 SDXL VAE does
            return (out[0] * float("nan"),)
        return out

    monkeypatch.setattr(vae, "decode", overflowing_once)
    retried = fresh_engine.generate(request)
    assert len(calls) == 2 and calls[1] == torch.float32
    assert any("decoded them again in float32" in w for w in retried.warnings)
    for ours, theirs in zip(retried.images, clean.images, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))  # the same decode, no black image


def test_decode_that_stays_non_finite_fails_clearly(fresh_engine, monkeypatch):
    request = GenerationRequest(model=TINY_SDXL, prompt="a cat", steps=2, seed=5)
    fresh_engine.generate(request)
    vae = cached(fresh_engine, TINY_SDXL).pipeline.vae
    decode = vae.decode
    monkeypatch.setattr(vae, "decode", lambda latents, *a, **k: (decode(latents, *a, **k)[0] * float("nan"),))
    with pytest.raises(GenerationFailed, match=r"non-finite values.*even when decoded in float32"):
        fresh_engine.generate(request)


def test_much_smaller_than_native_size_warns(engine):
    small = engine.generate(
        GenerationRequest(model=TINY_SDXL, prompt="a", steps=1, seed=0, width=32, height=32)
    )
    assert small.images[0].size == (32, 32)
    assert small.warnings == [
        "32x32 is much smaller than the 64x64 SDXL was trained at; expect worse images (try 64x64)"
    ]


@pytest.mark.parametrize(
    ("fields", "error", "fragment"),
    [
        (
            {"model": TINY_SD15, "refiner": TINY_SDXL_REFINER},
            UnsupportedFeature,
            "refiner=.* not used by sd15",
        ),
        ({"prior_steps": 5}, UnsupportedFeature, "prior_steps=5 is not used by sdxl models.*kandinsky22"),
        ({"aesthetic_score": 7.0}, UnsupportedFeature, "aesthetic_score=7.0 conditions the SDXL refiner"),
        ({"refiner": TINY_SD15}, InvalidRequest, "invalid refiner=.*sd15 model; the refiner must be an SDXL"),
        ({"refiner": "nobody/nothing"}, ModelNotFound, "not in the Hugging Face cache"),
        (
            {"model": TINY_SDXL_REFINER, "init_image": "x.png", "refiner": TINY_SDXL_REFINER},
            UnsupportedFeature,
            "refiner=.* not used by sdxl_refiner",
        ),
    ],
)
def test_bad_field_combinations_are_refused_before_loading(engine, fields, error, fragment):
    with pytest.raises(error, match=fragment):
        engine.generate(GenerationRequest(prompt="a", steps=2, **{"model": TINY_SDXL, **fields}))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"refiner_at": 0.5}, "refiner_at"),  # no refiner
        ({"refiner": TINY_SDXL_REFINER, "refiner_at": 1.0}, "refiner_at"),
        ({"refiner": TINY_SDXL_REFINER, "refiner_at": 0}, "refiner_at"),
        ({"aesthetic_score": 11}, "aesthetic_score"),
        ({"original_size": (0, 64)}, "original_size"),
        ({"crops_coords_top_left": (-1, 0)}, "crops_coords_top_left"),
    ],
)
def test_bad_values_are_refused_at_the_door(fields, field):
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(model=TINY_SDXL, prompt="a", **fields)
    assert caught.value.field == field


@pytest.mark.slow
def test_cli_hand_off_and_refiner_options(sdxl_models, tmp_path, engine):
    from test_cli import run_easel

    out = tmp_path / "refined.png"
    done = run_easel(
        "generate", "a red cat", "-m", TINY_SDXL, "--refiner", TINY_SDXL_REFINER, "--refiner-at", "0.6",
        "--steps", "5", "--seed", "4", "--original-size", "128", "96", "--json", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = __import__("json").loads(done.stdout)
    assert summary["request"]["refiner"] == TINY_SDXL_REFINER and summary["request"]["refiner_at"] == 0.6
    api = engine.generate(
        GenerationRequest(
            model=TINY_SDXL, refiner=TINY_SDXL_REFINER, refiner_at=0.6, prompt="a red cat", steps=5, seed=4,
            original_size=(128, 96),
        )
    )  # fmt: skip
    np.testing.assert_array_equal(pixels(Image.open(out)), pixels(api.images[0]))

    refused = run_easel("generate", "a cat", "-m", TINY_SDXL_REFINER, "--steps", "2")
    assert refused.returncode == 2
    assert "only does image-to-image" in refused.stderr

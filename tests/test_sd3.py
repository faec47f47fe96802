"""Stable Diffusion 3.5 (a tiny random 3.5 medium under the real repo id), offline, against plain
diffusers; the variants' detection and defaults; refusals; the doors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY_SD35_MEDIUM
from test_flux import (
    check_a1111_door,
    check_bfloat16_on_a_gpu,
    check_embeddings_refused,
    check_img2img,
    check_inpaint,
    check_openai_door,
    check_refused_by_name,
    generators,
    pixels,
    png,
)
from test_flux import mask_png as mask_png  # the fixture: a 64x64 mask of the right half

from easel import GenerationRequest, InvalidRequest

SMALL = {"width": 32, "height": 32}  # the tiny model's native size is 64x64


@pytest.fixture(autouse=True)
def _installed(sd3_models):
    """Every test here needs the tiny SD 3.5 medium in the HF cache."""


@pytest.fixture(scope="module")
def plain(sd3_models):
    """The plain diffusers pipeline, loaded once."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(TINY_SD35_MEDIUM)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_text2img_with_a_negative_prompt_equals_plain_diffusers(engine, plain):
    # to a level: a batch of 4 through the MMDiT rounds differently from a batch of 2 on this CPU, in
    # plain diffusers too
    check_text2img_with_a_negative_prompt(
        engine, plain, TINY_SD35_MEDIUM, "sd35_medium", sequence=256, tolerance=1, guidance_scale=5.0
    )


def check_text2img_with_a_negative_prompt(
    engine, plain, repo: str, family: str, *, sequence: int, tolerance: int = 0, **guidance
) -> None:
    """Two images of `repo` with a negative prompt at guidance 5 equal plain diffusers' (`guidance`:
    the plain call's name for it, SD 3.5's guidance_scale, Qwen-Image's true_cfg_scale; `sequence`: its
    max_sequence_length); image i is what seed 7 + i gives alone (within `tolerance` levels); the
    negative prompt does change the picture."""
    fields = {"prompt": "a red cat", "negative_prompt": "blue", "steps": 3, "guidance_scale": 5.0, **SMALL}
    result = engine.generate(GenerationRequest(model=repo, seed=7, num_images=2, **fields))
    assert result.model_family == family
    expected = plain(
        "a red cat",
        negative_prompt="blue",
        num_inference_steps=3,
        num_images_per_prompt=2,
        max_sequence_length=sequence,
        generator=generators(7, 2),
        **guidance,
        **SMALL,
    ).images
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))
    alone = engine.generate(GenerationRequest(model=repo, seed=8, **fields))
    difference = np.abs(pixels(alone.images[0]).astype(int) - pixels(result.images[1]))
    assert difference.max() <= tolerance
    positive_only = engine.generate(
        GenerationRequest(model=repo, seed=8, **{**fields, "negative_prompt": ""})
    )
    assert not np.array_equal(pixels(positive_only.images[0]), pixels(alone.images[0]))


def test_img2img_equals_plain_diffusers(engine, init_png):
    from diffusers import StableDiffusion3Img2ImgPipeline

    check_img2img(engine, TINY_SD35_MEDIUM, StableDiffusion3Img2ImgPipeline, init_png, guidance=4.5)


def test_defaults_native_size_and_byte_identical_replay(engine, tmp_path):
    result = engine.generate(
        GenerationRequest(model=TINY_SD35_MEDIUM, prompt="a green square", seed=5, steps=2)
    )
    concrete = result.request
    # 3.5 medium's card: guidance 4.5 (40 steps, below); native size 128 x the VAE factor (1024 for the
    # real VAE, 32 x 2 for the tiny one)
    assert (concrete.guidance_scale, concrete.scheduler, concrete.width, concrete.height) == (
        4.5,
        None,
        64,
        64,
    )
    parameters = result.parameters()
    assert "Steps: 2, Sampler: FlowMatchEulerDiscreteScheduler, CFG scale: 4.5, Seed: 5" in parameters
    assert "Distilled CFG Scale" not in parameters
    original = result.save(tmp_path / "sd35.png")
    again, index = engine.replay(original)
    assert index == 0 and again.encode(0) == original.read_bytes()


def _source(tmp_path: Path, name: str, config: dict | None) -> SimpleNamespace:
    folder = tmp_path / name
    (folder / "transformer").mkdir(parents=True)
    if config is not None:
        (folder / "transformer" / "config.json").write_text(json.dumps(config))
    return SimpleNamespace(kind="folder", location=str(folder), reference=str(folder))


@pytest.mark.parametrize(
    ("name", "config", "family", "steps", "guidance"),
    [
        ("sd35-m", {"dual_attention_layers": [0, 1], "qk_norm": "rms_norm"}, "sd35_medium", 40, 4.5),
        ("sd35-l", {"dual_attention_layers": [], "qk_norm": "rms_norm"}, "sd35_large", 28, 3.5),
        ("stable-diffusion-3.5-large-turbo", {"qk_norm": "rms_norm"}, "sd35_large_turbo", 4, 0.0),
        ("sd3-m", {"dual_attention_layers": [], "qk_norm": None}, "sd3_medium", 28, 7.0),
        ("stable-diffusion-3.5-large", None, "sd35_large", 28, 3.5),  # no config: the name
    ],
)
def test_variants_from_the_transformer_config(tmp_path, name, config, family, steps, guidance):
    from easel.engine import Easel
    from easel.families import family_for_pipeline_class

    detected = family_for_pipeline_class("StableDiffusion3Pipeline").variant(_source(tmp_path, name, config))
    assert (detected.name, detected.default_steps, detected.default_guidance) == (family, steps, guidance)
    # the user's explicit steps and guidance win over the variant's defaults
    request = GenerationRequest(model="x", prompt="a cat", steps=9, guidance_scale=2.0)
    concrete = Easel._with_family_defaults(request, detected)
    assert (concrete.steps, concrete.guidance_scale) == (9, 2.0)
    assert detected.accelerator_dtype == "bfloat16"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": "a red++ cat"}, "prompt"),  # Compel weighting
        ({"prompt": "a (red:1.2) cat", "prompt_syntax": "a1111"}, "prompt"),
        ({"negative_prompt": "a (red:1.2) cat", "prompt_syntax": "a1111"}, "negative_prompt"),
        ({"prompt": "a cat BREAK red", "prompt_syntax": "a1111"}, "prompt"),
        ({"prompt": "a [cat:dog:0.5]", "prompt_syntax": "a1111"}, "prompt"),  # editing
        ({"negative_prompt": "blue", "guidance_scale": 1.0}, "negative_prompt"),  # no CFG: ignored
        ({"clip_skip": 3}, "clip_skip"),  # the tiny CLIPs have 2 layers: clip skip goes up to 2
        ({"hires": {"scale": 2}}, "hires"),
        ({"variation_strength": 0.3}, "variation_strength"),
        ({"tiling": True}, "tiling"),
        ({"scheduler": "Euler"}, "scheduler"),
        ({"refiner": "stabilityai/stable-diffusion-xl-refiner-1.0"}, "refiner"),
        ({"controls": [{"model": "demo", "image": "x.png"}]}, "controls[0].model"),  # an SD 1.5 ControlNet
    ],
)
def test_what_sd35_cannot_do_is_refused_by_name(engine, fields, field):
    check_refused_by_name(engine, TINY_SD35_MEDIUM, fields, field)


def test_clip_skip_equals_plain_diffusers_and_is_recorded(engine, plain):
    """A1111's "Clip skip: 2" is the pipeline's clip_skip=1 (one layer before the penultimate one both
    CLIP encoders give by default); it changes the picture and is written in the metadata."""
    fields = {"prompt": "a red cat", "steps": 2, "guidance_scale": 5.0, "seed": 3, **SMALL}
    skipped = engine.generate(GenerationRequest(model=TINY_SD35_MEDIUM, clip_skip=2, **fields))
    expected = plain(
        "a red cat",
        num_inference_steps=2,
        guidance_scale=5.0,
        clip_skip=1,
        max_sequence_length=256,
        generator=generators(3, 1),
        **SMALL,
    ).images[0]
    np.testing.assert_array_equal(pixels(skipped.images[0]), pixels(expected))
    assert "Clip skip: 2," in skipped.parameters()
    unskipped = engine.generate(GenerationRequest(model=TINY_SD35_MEDIUM, **fields))
    assert not np.array_equal(pixels(unskipped.images[0]), pixels(skipped.images[0]))
    assert "Clip skip" not in unskipped.parameters()


def test_embeddings_are_refused_by_name(tmp_path):
    check_embeddings_refused(tmp_path, TINY_SD35_MEDIUM)


def test_token_counts_use_t5_and_long_prompts_warn(engine):
    count = engine.count_tokens("a red cat", model=TINY_SD35_MEDIUM)
    assert (count.tokens, count.chunks, count.capacity, str(count)) == (4, 1, 256, "4/256, 1 chunk")
    result = engine.generate(
        GenerationRequest(model=TINY_SD35_MEDIUM, prompt=" ".join(["red"] * 300), steps=1, seed=0, **SMALL)
    )
    assert any("301 T5 tokens" in w and "first 256, so 45 are dropped" in w for w in result.warnings)
    assert any("CLIP encoders (CLIP-L and CLIP-G) read the first 77" in w for w in result.warnings)


def test_previews_of_16_channel_latents_change_nothing(engine):
    check_linear_previews(engine, TINY_SD35_MEDIUM)


def check_linear_previews(engine, repo: str) -> None:
    """Live previews of `repo`'s 16-channel latents (SD 3.5 here, Z-Image in test_zimage) come at every
    step but the last, and the image is the one a run without previews gives."""
    request = GenerationRequest(model=repo, prompt="a cat", steps=3, seed=2, **SMALL)
    seen = []
    with_previews = engine.generate(request, on_progress=seen.append, previews=1, preview_method="linear")
    assert [(p.step, p.total) for p in seen] == [(1, 3), (2, 3), (3, 3)]
    # a preview at every step but the last (the image itself): the least-squares fit of the 16-channel VAE
    assert [p.preview is not None for p in seen] == [True, True, False]
    np.testing.assert_array_equal(pixels(with_previews.images[0]), pixels(engine.generate(request).images[0]))


def test_a_lora_equals_plain_diffusers_and_switches_off(plain, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    # 3.5 medium's guidance (diffusers' default is 7)
    check_lora(plain, StableDiffusion3Pipeline, TINY_SD35_MEDIUM, tmp_path, guidance=4.5)


def check_lora(
    plain, pipeline_class, repo: str, tmp_path: Path, *, guidance: float | None = None, **call
) -> None:
    """A random transformer-attention LoRA on `repo` equals plain diffusers' `pipeline_class` with the
    adapter at the same weight, changes the picture, and is switched off (not fused) after (SD 3.5
    here, Z-Image and Qwen-Image elsewhere; `plain` is the pipeline without it, `guidance` the family's
    default; `call`: more arguments for the plain calls, Qwen-Image's true_cfg_scale)."""
    from easel import Easel, Settings
    from easel.testing.tiny_flux import write_tiny_flux_lora  # transformer attention: the same layout

    folder = tmp_path / "loras"
    write_tiny_flux_lora(plain, folder / "style.safetensors", seed=1)
    own = Easel(Settings.from_env(lora_dir=folder, home=tmp_path / "home"))
    fields = {"model": repo, "prompt": "a red cat", "steps": 2, "seed": 4, **SMALL}
    with_lora = own.generate(GenerationRequest(**fields, loras=[{"name": "style", "weight": 0.8}]))
    assert "Lora hashes: " in with_lora.parameters()

    pipe = pipeline_class.from_pretrained(repo)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(folder), weight_name="style.safetensors", adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[0.8])
    guided = {} if guidance is None else {"guidance_scale": guidance}
    call = {"num_inference_steps": 2, **guided, **call, **SMALL}
    expected = pipe(prompt="a red cat", generator=generators(4, 1), **call).images[0]
    np.testing.assert_array_equal(pixels(with_lora.images[0]), pixels(expected))
    never = plain(prompt="a red cat", generator=generators(4, 1), **call).images[0]
    assert not np.array_equal(pixels(never), pixels(expected))

    without = own.generate(GenerationRequest(**fields))  # the adapter is switched off, not fused
    np.testing.assert_array_equal(pixels(without.images[0]), pixels(never))


def test_inpaint_equals_plain_diffusers(engine, init_png, mask_png):
    from diffusers import StableDiffusion3InpaintPipeline

    check_inpaint(engine, TINY_SD35_MEDIUM, StableDiffusion3InpaintPipeline, init_png, mask_png, guidance=4.5)


def test_sizes_sd35_would_refuse_are_refused_by_name():
    from easel.families.sd3 import SD35_MEDIUM

    request = GenerationRequest(model=TINY_SD35_MEDIUM, prompt="a cat", steps=1, width=1000, height=1024)
    with pytest.raises(InvalidRequest, match=r"^invalid width=1000: .* multiples of 16 .* use 992 or 1008"):
        SD35_MEDIUM.call_arguments(SimpleNamespace(vae_scale_factor=8), request, None)


def test_dtype_auto_is_bfloat16_for_sd35_on_a_gpu() -> None:
    """SD 3.5's card runs it in bfloat16 (float16 gives NaNs in its T5): "auto" picks bfloat16 on
    accelerators, float32 on the CPU (no GPU needed: the device is set)."""
    from easel.families.sd3 import SD3, SD35_LARGE, SD35_LARGE_TURBO, SD35_MEDIUM

    check_bfloat16_on_a_gpu(SD35_MEDIUM, SD35_LARGE, SD35_LARGE_TURBO, SD3)


# -- the doors ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(hf_home, sd3_models, engine, tmp_path_factory):
    from server_support import server

    with server(tmp_path_factory.mktemp("sd3-server-home"), engine) as client:
        yield client


def test_native_job(client, engine):
    body = {
        "model": TINY_SD35_MEDIUM,
        "prompt": "a red circle",
        "negative_prompt": "blue",
        "steps": 2,
        "seed": 4,
    }
    response = client.post("/api/v1/generate?include_images=true", json={**body, **SMALL})
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["status"] == "succeeded" and record["result"]["model_family"] == "sd35_medium"
    image = png(base64.b64decode(record["images"][0]["b64_png"]))
    assert "CFG scale: 4.5," in image.text["parameters"]
    direct = engine.generate(GenerationRequest(**body, **SMALL))
    np.testing.assert_array_equal(pixels(image), pixels(direct.images[0]))
    count = client.post("/api/v1/tokens", json={"prompt": "a red cat", "model": TINY_SD35_MEDIUM}).json()
    assert (count["tokens"], count["capacity"], count["text"]) == (4, 256, "4/256, 1 chunk")


def test_a1111_txt2img_with_the_model_override(client, engine):
    check_a1111_door(client, engine, TINY_SD35_MEDIUM, cfg="5", negative_prompt="red", guidance_scale=5)


def test_openai_generations_with_the_model(client, engine):
    check_openai_door(client, engine, TINY_SD35_MEDIUM)


def test_a1111_clip_stop_at_last_layers_is_clip_skip(client, engine):
    override = {"sd_model_checkpoint": TINY_SD35_MEDIUM, "CLIP_stop_at_last_layers": 2}
    body = {"prompt": "a blue square", "steps": 2, "seed": 6, **SMALL, "override_settings": override}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert "Clip skip: 2," in json.loads(answer["info"])["infotexts"][0]
    direct = engine.generate(
        GenerationRequest(
            model=TINY_SD35_MEDIUM, prompt="a blue square", prompt_syntax="a1111", steps=2, seed=6,
            clip_skip=2, **SMALL,
        )
    )  # fmt: skip
    image = png(base64.b64decode(answer["images"][0]))
    np.testing.assert_array_equal(pixels(image), pixels(direct.images[0]))

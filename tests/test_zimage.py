"""Z-Image Turbo (a tiny random model under the real repo id), offline, against plain diffusers; the
family's defaults, token window and refusals; the doors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY_ZIMAGE_TURBO
from test_flux import (
    check_a1111_door,
    check_bfloat16_on_a_gpu,
    check_cli_door,
    check_embeddings_refused,
    check_img2img,
    check_inpaint,
    check_native_door,
    check_openai_door,
    check_recorded_defaults,
    check_refused_by_name,
    generators,
    pixels,
)
from test_flux import mask_png as mask_png  # the fixture: a 64x64 mask of the right half
from test_sd3 import check_linear_previews, check_lora

from easel import GenerationRequest, InvalidRequest

SMALL = {"width": 32, "height": 32}  # the native size is 1024x1024, too slow for a tiny model on a CPU


@pytest.fixture(autouse=True)
def _installed(zimage_models):
    """Every test here needs the tiny Z-Image Turbo in the HF cache."""


@pytest.fixture(scope="module")
def plain(zimage_models):
    """The plain diffusers pipeline, loaded once."""
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(TINY_ZIMAGE_TURBO)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(("guidance", "negative"), [(None, ""), (2.0, "blue")])
def test_text2img_equals_plain_diffusers(engine, plain, guidance, negative):
    fields = {"prompt": "a red cat", "negative_prompt": negative, "steps": 3, "guidance_scale": guidance}
    result = engine.generate(
        GenerationRequest(model=TINY_ZIMAGE_TURBO, seed=7, num_images=2, **fields, **SMALL)
    )
    assert result.model_family == "zimage_turbo"
    expected = plain(
        "a red cat",
        negative_prompt=negative or None,
        num_inference_steps=3,
        guidance_scale=0.0 if guidance is None else guidance,  # the pipeline's own default is 5
        num_images_per_prompt=2,
        max_sequence_length=512,
        generator=generators(7, 2),
        **SMALL,
    ).images
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))
    # image i is what seed 7 + i gives alone
    alone = engine.generate(GenerationRequest(model=TINY_ZIMAGE_TURBO, seed=8, **fields, **SMALL))
    np.testing.assert_array_equal(pixels(alone.images[0]), pixels(result.images[1]))
    if negative:  # with CFG the negative prompt is honoured: it changes the picture
        positive_only = engine.generate(
            GenerationRequest(model=TINY_ZIMAGE_TURBO, seed=8, **{**fields, "negative_prompt": ""}, **SMALL)
        )
        assert not np.array_equal(pixels(positive_only.images[0]), pixels(alone.images[0]))


def test_img2img_equals_plain_diffusers(engine, init_png):
    from diffusers import ZImageImg2ImgPipeline

    check_img2img(engine, TINY_ZIMAGE_TURBO, ZImageImg2ImgPipeline, init_png, guidance=0.0)


def test_inpaint_equals_plain_diffusers(engine, init_png, mask_png):
    from diffusers import ZImageInpaintPipeline

    # without the only-masked run: it works at the native size, 1024x1024, minutes for the tiny model on a CPU
    check_inpaint(
        engine, TINY_ZIMAGE_TURBO, ZImageInpaintPipeline, init_png, mask_png, guidance=0.0, only_masked=False
    )


def test_defaults_are_recorded_and_replay_is_byte_identical(engine, tmp_path):
    # Turbo: 8 transformer evaluations (diffusers 0.42's steps count them), no CFG
    parameters = check_recorded_defaults(engine, TINY_ZIMAGE_TURBO, tmp_path, steps=8, guidance=0.0, cfg="0")
    assert "Distilled CFG Scale" not in parameters


def test_native_size_is_the_pipelines_default():
    """ZImagePipeline has no default_sample_size: `height or 1024`; a request without a size records
    1024x1024 (asked of the hook: a tiny model at 1024 is too slow on a CPU)."""
    from easel.engine import Easel
    from easel.families import family_for_pipeline_class
    from easel.families.zimage import ZIMAGE_TURBO

    assert family_for_pipeline_class("ZImagePipeline") is ZIMAGE_TURBO
    loaded = SimpleNamespace(family=ZIMAGE_TURBO, pipeline=None)
    request = GenerationRequest(model=TINY_ZIMAGE_TURBO, prompt="a cat")
    sized = Easel._with_size(request, loaded, None)  # type: ignore[arg-type]
    assert (sized.width, sized.height) == (1024, 1024)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": "a red++ cat"}, "prompt"),  # Compel weighting
        ({"prompt": "a (red:1.2) cat", "prompt_syntax": "a1111"}, "prompt"),
        (
            {"negative_prompt": "a (red:1.2) cat", "guidance_scale": 2.0, "prompt_syntax": "a1111"},
            "negative_prompt",
        ),
        ({"prompt": "a cat BREAK red", "prompt_syntax": "a1111"}, "prompt"),
        ({"prompt": "a [cat:dog:0.5]", "prompt_syntax": "a1111"}, "prompt"),  # editing
        ({"negative_prompt": "blue"}, "negative_prompt"),  # the default guidance 0: no CFG, ignored
        ({"negative_prompt": "blue", "guidance_scale": 0.0}, "negative_prompt"),
        ({"clip_skip": 2}, "clip_skip"),
        ({"hires": {"scale": 2}}, "hires"),
        ({"variation_strength": 0.3}, "variation_strength"),
        ({"tiling": True}, "tiling"),
        ({"scheduler": "Euler"}, "scheduler"),
        ({"refiner": "stabilityai/stable-diffusion-xl-refiner-1.0"}, "refiner"),
        ({"controls": [{"model": "demo", "image": "x.png"}]}, "controls[0].model"),  # an SD 1.5 ControlNet
    ],
)
def test_what_zimage_cannot_do_is_refused_by_name(engine, fields, field):
    check_refused_by_name(engine, TINY_ZIMAGE_TURBO, fields, field)


def test_sizes_the_pipeline_would_refuse_are_refused_by_name():
    # ZImagePipeline raises for a size that is no multiple of 2 x the VAE factor (16 for the real VAE;
    # the tiny VAE's 4 takes every multiple of 8 the request allows), so the hook is asked with it
    from easel.families.zimage import ZIMAGE_TURBO

    request = GenerationRequest(model=TINY_ZIMAGE_TURBO, prompt="a cat", steps=1, width=1000, height=1024)
    with pytest.raises(InvalidRequest, match=r"^invalid width=1000: .* multiples of 16 .* use 992 or 1008"):
        ZIMAGE_TURBO.call_arguments(SimpleNamespace(vae_scale_factor=8), request, None)


def test_embeddings_are_refused_by_name(tmp_path):
    check_embeddings_refused(tmp_path, TINY_ZIMAGE_TURBO)


def test_token_counts_use_the_qwen_tokenizer_and_long_prompts_warn(engine, plain):
    # the chat template adds 17 tokens with the tiny vocabulary, whose "user" and "assistant" are single bytes
    assert check_qwen_token_window(engine, TINY_ZIMAGE_TURBO, plain.tokenizer, thinking=True) == 617


def check_qwen_token_window(engine, repo: str, tokenizer, *, thinking: bool) -> int:
    """`repo` counts a prompt's own Qwen tokens (no end token) in its 512-token window, without CLIP
    chunks; a 600-word prompt warns with what the encoder is fed: the prompt in the chat template
    (`thinking`: its enable_thinking, as the pipeline sets it). Returns that count (Z-Image here,
    FLUX.2 [klein] in test_flux2)."""
    count = engine.count_tokens("a red cat", model=repo)
    assert (count.tokens, count.chunks, count.capacity, str(count)) == (3, 1, 512, "3/512, 1 chunk")
    prompt = " ".join(["red"] * 600)
    turn = [{"role": "user", "content": prompt}]
    templated = tokenizer.apply_chat_template(
        turn, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
    )
    fed = len(tokenizer(templated).input_ids)
    result = engine.generate(GenerationRequest(model=repo, prompt=prompt, steps=1, seed=0, **SMALL))
    dropped = f"{fed} Qwen tokens"
    assert any(dropped in w and f"first 512, so {fed - 512} are dropped" in w for w in result.warnings)
    assert not any("CLIP" in w for w in result.warnings)
    return fed


def test_previews_of_16_channel_latents_change_nothing(engine):
    check_linear_previews(engine, TINY_ZIMAGE_TURBO)  # a least-squares fit of the VAE, as for SD 3.5


def test_a_lora_equals_plain_diffusers_and_switches_off(plain, tmp_path):
    from diffusers import ZImagePipeline

    check_lora(plain, ZImagePipeline, TINY_ZIMAGE_TURBO, tmp_path, guidance=0.0)


def test_dtype_auto_is_bfloat16_for_zimage_on_a_gpu() -> None:
    from easel.families.zimage import ZIMAGE_TURBO

    check_bfloat16_on_a_gpu(ZIMAGE_TURBO)  # the model card's dtype


# -- the doors ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(hf_home, zimage_models, engine, tmp_path_factory):
    from server_support import server

    with server(tmp_path_factory.mktemp("zimage-server-home"), engine) as client:
        yield client


def test_native_job(client, engine):
    check_native_door(client, engine, TINY_ZIMAGE_TURBO, family="zimage_turbo", cfg="0", count=(3, 512))
    body = {"model": TINY_ZIMAGE_TURBO, "prompt": "a cat", "negative_prompt": "blue", "steps": 2, **SMALL}
    refused = client.post("/api/v1/generate", json=body)  # guidance 0: the negative prompt would be ignored
    assert refused.status_code == 422 and "negative_prompt" in refused.text, refused.text


def test_a1111_txt2img_with_the_model_override(client, engine):
    check_a1111_door(client, engine, TINY_ZIMAGE_TURBO, cfg="2", negative_prompt="red", guidance_scale=2)


def test_openai_generations_with_the_model(client, engine):
    check_openai_door(client, engine, TINY_ZIMAGE_TURBO)


@pytest.mark.slow
def test_cli_generate(tmp_path, engine):
    check_cli_door(tmp_path, engine, TINY_ZIMAGE_TURBO, ("a cat", "--negative", "blue"), "--negative")

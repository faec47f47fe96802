"""Qwen-Image (a tiny random model under the real repo id), offline, against plain diffusers; its true
CFG (guidance_scale -> true_cfg_scale, the model card's " " negative prompt); defaults; refusals; the
doors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY_QWEN_IMAGE
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
from test_sd3 import check_lora, check_text2img_with_a_negative_prompt

from easel import GenerationRequest, InvalidRequest

SMALL = {"width": 32, "height": 32}  # the tiny model's native size is 664x664 (the card's 1328 / 2)
CFG = {"true_cfg_scale": 4.0, "negative_prompt": " "}  # what easel's default guidance runs


@pytest.fixture(autouse=True)
def _installed(qwen_image_models):
    """Every test here needs the tiny Qwen-Image in the HF cache."""


@pytest.fixture(scope="module")
def plain(qwen_image_models):
    """The plain diffusers pipeline, loaded once."""
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(TINY_QWEN_IMAGE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_text2img_with_a_negative_prompt_equals_plain_diffusers(engine, plain):
    check_text2img_with_a_negative_prompt(
        engine, plain, TINY_QWEN_IMAGE, "qwen_image", sequence=512, true_cfg_scale=5.0
    )


def test_guidance_is_true_cfg_with_the_cards_blank_negative_prompt(engine, plain):
    """Without a negative prompt the pipeline would skip CFG; easel gives it the card's " ", so the
    guidance recorded is the guidance that ran. At guidance 1 there is no CFG (one evaluation)."""
    fields = {"model": TINY_QWEN_IMAGE, "prompt": "a red cat", "steps": 2, "seed": 3, **SMALL}
    call = {"num_inference_steps": 2, **SMALL}
    guided = engine.generate(GenerationRequest(**fields, guidance_scale=3.0))
    expected = plain("a red cat", true_cfg_scale=3.0, negative_prompt=" ", generator=generators(3, 1), **call)
    np.testing.assert_array_equal(pixels(guided.images[0]), pixels(expected.images[0]))
    unguided = plain("a red cat", true_cfg_scale=3.0, generator=generators(3, 1), **call)  # no CFG ran
    assert not np.array_equal(pixels(guided.images[0]), pixels(unguided.images[0]))
    off = engine.generate(GenerationRequest(**fields, guidance_scale=1.0))
    np.testing.assert_array_equal(pixels(off.images[0]), pixels(unguided.images[0]))
    assert "CFG scale: 1," in off.parameters()


def test_call_arguments_map_guidance_to_true_cfg_scale():
    from easel.families.qwen_image import QWEN_IMAGE

    pipe = SimpleNamespace(vae_scale_factor=8)
    request = GenerationRequest(model=TINY_QWEN_IMAGE, prompt="a cat", steps=1, guidance_scale=4.0, **SMALL)
    arguments = QWEN_IMAGE.call_arguments(pipe, request, None)
    # the pipeline's guidance_scale is for guidance-distilled models only: never passed
    assert "guidance_scale" not in arguments
    assert (arguments["true_cfg_scale"], arguments["negative_prompt"]) == (4.0, " ")
    assert arguments["max_sequence_length"] == 512
    negative = QWEN_IMAGE.call_arguments(pipe, request.model_copy(update={"negative_prompt": "dark"}), None)
    assert negative["negative_prompt"] == "dark"
    off = QWEN_IMAGE.call_arguments(pipe, request.model_copy(update={"guidance_scale": 1.0}), None)
    assert (off["true_cfg_scale"], off["negative_prompt"]) == (1.0, None)
    # sizes in multiples of 16 (2x2 patches of the 8x VAE), as FLUX.1's
    odd = request.model_copy(update={"width": 1000})
    with pytest.raises(InvalidRequest, match=r"^invalid width=1000: .* multiples of 16 .* use 992 or 1008"):
        QWEN_IMAGE.call_arguments(pipe, odd, None)


def test_img2img_equals_plain_diffusers(engine, init_png):
    from diffusers import QwenImageImg2ImgPipeline

    check_img2img(engine, TINY_QWEN_IMAGE, QwenImageImg2ImgPipeline, init_png, **CFG)


@pytest.mark.slow  # over 4 s (the only-masked run works at the native size): the quick set stays small
def test_inpaint_equals_plain_diffusers(engine, init_png, mask_png):
    from diffusers import QwenImageInpaintPipeline

    check_inpaint(engine, TINY_QWEN_IMAGE, QwenImageInpaintPipeline, init_png, mask_png, **CFG)


def test_defaults_native_size_and_byte_identical_replay(engine, tmp_path):
    from easel.families.qwen_image import QWEN_IMAGE

    # the model card's: 50 steps, true CFG 4.0, no SD sampler
    parameters = check_recorded_defaults(engine, TINY_QWEN_IMAGE, tmp_path, steps=50, guidance=4.0, cfg="4")
    assert "Distilled CFG Scale" not in parameters
    # native size: the card's 1328x1328 with the real VAE (factor 8); the tiny one's factor is 4
    assert QWEN_IMAGE.default_size(SimpleNamespace(vae_scale_factor=8)) == (1328, 1328)
    assert QWEN_IMAGE.accelerator_dtype == "bfloat16"


def test_detection_of_qwen_image_and_its_edit_models():
    from easel.families import family_for_pipeline_class
    from easel.families.qwen_image import QWEN_IMAGE
    from easel.families.qwen_image_edit import QWEN_IMAGE_EDIT, QWEN_IMAGE_EDIT_2509

    for name in ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline"):
        assert family_for_pipeline_class(name) is QWEN_IMAGE
    assert QWEN_IMAGE.variant(SimpleNamespace(kind="folder", location="x", reference="x")) is QWEN_IMAGE
    # the Edit models are their own families (tests/test_qwen_image_edit.py)
    assert family_for_pipeline_class("QwenImageEditPipeline") is QWEN_IMAGE_EDIT
    assert family_for_pipeline_class("QwenImageEditPlusPipeline") is QWEN_IMAGE_EDIT_2509


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": "a red++ cat"}, "prompt"),  # Compel weighting
        ({"prompt": "a (red:1.2) cat", "prompt_syntax": "a1111"}, "prompt"),
        ({"negative_prompt": "a (red:1.2) cat", "prompt_syntax": "a1111"}, "negative_prompt"),
        ({"prompt": "a cat BREAK red", "prompt_syntax": "a1111"}, "prompt"),
        ({"prompt": "a [cat:dog:0.5]", "prompt_syntax": "a1111"}, "prompt"),  # editing
        ({"negative_prompt": "blue", "guidance_scale": 1.0}, "negative_prompt"),  # no CFG: ignored
        ({"clip_skip": 2}, "clip_skip"),
        ({"hires": {"scale": 2}}, "hires"),
        ({"variation_strength": 0.3}, "variation_strength"),
        ({"tiling": True}, "tiling"),
        ({"scheduler": "Euler"}, "scheduler"),
        ({"steps": 1}, "steps"),  # its scheduler's shift_terminal: NaN in one step
        ({"refiner": "stabilityai/stable-diffusion-xl-refiner-1.0"}, "refiner"),
        ({"controls": [{"model": "demo", "image": "x.png"}]}, "controls[0].model"),  # an SD 1.5 ControlNet
    ],
)
def test_what_qwen_image_cannot_do_is_refused_by_name(engine, fields, field):
    check_refused_by_name(engine, TINY_QWEN_IMAGE, fields, field)


def test_embeddings_are_refused_by_name(tmp_path):
    check_embeddings_refused(tmp_path, TINY_QWEN_IMAGE)


def test_token_counts_use_the_qwen_tokenizer_and_long_prompts_warn(engine, plain):
    count = engine.count_tokens("a red cat", model=TINY_QWEN_IMAGE)
    assert (count.tokens, count.chunks, count.capacity, str(count)) == (3, 1, 512, "3/512, 1 chunk")
    assert count.tokens == len(plain.tokenizer("a red cat").input_ids)  # the prompt's own tokens
    result = engine.generate(
        GenerationRequest(model=TINY_QWEN_IMAGE, prompt=" ".join(["red"] * 600), steps=2, seed=0, **SMALL)
    )
    assert any("600 Qwen tokens" in w and "first 512, so 88 are dropped" in w for w in result.warnings)
    assert not any("CLIP" in w for w in result.warnings)


def test_previews_skip_packed_latents_and_change_nothing(engine, caplog):
    request = GenerationRequest(model=TINY_QWEN_IMAGE, prompt="a cat", steps=3, seed=2, **SMALL)
    seen = []
    with caplog.at_level("WARNING", logger="easel.previews"):
        with_previews = engine.generate(request, on_progress=seen.append, previews=1, preview_method="linear")
    assert not caplog.records  # skipped, not failed: the 5-D VAE is not fitted at all
    assert [(p.step, p.total) for p in seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(p.preview is None for p in seen)  # packed 5-D-VAE latents: no preview, and no failure
    np.testing.assert_array_equal(pixels(with_previews.images[0]), pixels(engine.generate(request).images[0]))


def test_the_float32_redecode_is_the_pipelines_decode(plain):
    """What a non-finite image is decoded again with: the caught packed latents, unpacked, decode
    as the pipeline's own (latents_std and mean, the one frame of the 5-D VAE)."""
    from easel.families.qwen_image import QWEN_IMAGE

    call = {"num_inference_steps": 2, "generator": generators(1, 1), **SMALL}
    latents = plain("a cat", output_type="latent", **call).images
    decoded = plain("a cat", output_type="np", **{**call, "generator": generators(1, 1)}).images
    unpacked = plain._unpack_latents(latents, 32, 32, plain.vae_scale_factor)
    assert unpacked.ndim == 5
    np.testing.assert_allclose(QWEN_IMAGE.decode_float32(plain, unpacked), decoded, atol=1e-6)


def test_a_lora_equals_plain_diffusers_and_switches_off(plain, tmp_path):
    from diffusers import QwenImagePipeline

    check_lora(plain, QwenImagePipeline, TINY_QWEN_IMAGE, tmp_path, **CFG)


def test_dtype_auto_is_bfloat16_for_qwen_image_on_a_gpu() -> None:
    from easel.families.qwen_image import QWEN_IMAGE

    check_bfloat16_on_a_gpu(QWEN_IMAGE)  # the model card's dtype


# -- the doors ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(hf_home, qwen_image_models, engine, tmp_path_factory):
    from server_support import server

    with server(tmp_path_factory.mktemp("qwen-image-server-home"), engine) as client:
        yield client


def test_native_job(client, engine):
    check_native_door(
        client, engine, TINY_QWEN_IMAGE, family="qwen_image", cfg="4", count=(3, 512), negative_prompt="blue"
    )


def test_a1111_txt2img_with_the_model_override(client, engine):
    check_a1111_door(client, engine, TINY_QWEN_IMAGE, cfg="5", negative_prompt="red", guidance_scale=5)


def test_openai_generations_with_the_model(client, engine):
    check_openai_door(client, engine, TINY_QWEN_IMAGE)


@pytest.mark.slow
def test_cli_generate(tmp_path, engine):
    # guidance 4 without a negative prompt (the card's " " runs), then a negative prompt without CFG
    refused = ("a cat", "--negative", "blue", "--guidance", "1")
    check_cli_door(tmp_path, engine, TINY_QWEN_IMAGE, refused, "--negative")

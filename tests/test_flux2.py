"""FLUX.2 [klein], distilled and base (tiny random models under the real repo ids), offline, against
plain diffusers: text-to-image, editing with two reference images, inpainting; the family's
detection, defaults, token window and refusals; the doors."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY_FLUX2_KLEIN, TINY_FLUX2_KLEIN_BASE
from PIL import Image
from test_edit import check_edit_replay
from test_flux import (
    check_a1111_door,
    check_bfloat16_on_a_gpu,
    check_cli_door,
    check_embeddings_refused,
    check_inpaint,
    check_native_door,
    check_openai_door,
    check_recorded_defaults,
    check_refused_by_name,
    generators,
    pixels,
    png,
)
from test_flux import mask_png as mask_png  # the fixture: a 64x64 mask of the right half
from test_sd3 import check_lora
from test_zimage import check_qwen_token_window

from easel import GenerationRequest, InvalidRequest, UnsupportedFeature

SMALL = {"width": 32, "height": 32}  # the tiny models' native size is 256x256
FAMILY = {TINY_FLUX2_KLEIN: "flux2_klein", TINY_FLUX2_KLEIN_BASE: "flux2_klein_base"}


@pytest.fixture(autouse=True)
def _installed(flux2_models):
    """Every test here needs the tiny FLUX.2 [klein] models in the HF cache."""


@pytest.fixture(scope="module")
def plain(flux2_models):
    """Plain diffusers pipelines for both models, loaded once."""
    from diffusers import Flux2KleinPipeline

    pipes = {}
    for repo in FAMILY:
        pipes[repo] = Flux2KleinPipeline.from_pretrained(repo)
        pipes[repo].set_progress_bar_config(disable=True)
    return pipes


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> list[Path]:
    """Two references (the pipeline reads 64 pixels a side at least): a 96x64 red square on grey,
    and a 64x64 blue disc on white."""
    from PIL import ImageDraw

    folder = tmp_path_factory.mktemp("flux2-references")
    first = Image.new("RGB", (96, 64), (128, 128, 128))
    first.paste((220, 20, 20), (16, 16, 48, 48))
    second = Image.new("RGB", (64, 64), (255, 255, 255))
    ImageDraw.Draw(second).ellipse((8, 8, 56, 56), fill=(20, 20, 220))
    paths = [folder / "first.png", folder / "second.png"]
    first.save(paths[0])
    second.save(paths[1])
    return paths


# the base at its own defaults (50 steps of CFG): test_base_defaults_are_recorded..., slow
@pytest.mark.parametrize(
    ("repo", "guidance", "negative"),
    [(TINY_FLUX2_KLEIN, None, ""), (TINY_FLUX2_KLEIN_BASE, 3.0, "blue")],
)
def test_text2img_equals_plain_diffusers(engine, plain, repo, guidance, negative):
    fields = {"prompt": "a red cat", "negative_prompt": negative, "steps": 3, "guidance_scale": guidance}
    result = engine.generate(GenerationRequest(model=repo, seed=7, num_images=2, **fields, **SMALL))
    assert result.model_family == FAMILY[repo]
    pipe = plain[repo]
    extra = {}
    if negative:  # the pipeline's way to a negative prompt: its own encoding of it
        extra["negative_prompt_embeds"] = pipe.encode_prompt(prompt=negative, max_sequence_length=512)[0]
    expected = pipe(
        prompt="a red cat",
        num_inference_steps=3,
        guidance_scale=result.request.guidance_scale,  # distilled: 1 (ignored); base: 4 or as given
        num_images_per_prompt=2,
        generator=generators(7, 2),
        **extra,
        **SMALL,
    ).images
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))
    # image i is what seed 7 + i gives alone
    alone = engine.generate(GenerationRequest(model=repo, seed=8, **fields, **SMALL))
    np.testing.assert_array_equal(pixels(alone.images[0]), pixels(result.images[1]))
    if negative:  # with CFG the negative prompt is honoured: it changes the picture
        positive_only = engine.generate(
            GenerationRequest(model=repo, seed=8, **{**fields, "negative_prompt": ""}, **SMALL)
        )
        assert not np.array_equal(pixels(positive_only.images[0]), pixels(alone.images[0]))


@pytest.mark.parametrize("repo", list(FAMILY))
def test_edit_with_two_references_equals_plain_diffusers(engine, plain, references, repo):
    fields = {"model": repo, "prompt": "put the disc on the square", "steps": 2, "seed": 4}
    result = engine.generate(GenerationRequest(**fields, reference_images=[str(p) for p in references]))
    concrete = result.request
    assert concrete.task == "edit"
    # no size given: the first reference's, in multiples of 2 x the tiny VAE's factor (4)
    assert (concrete.width, concrete.height) == (96, 64) and result.images[0].size == (96, 64)
    images = [Image.open(p).convert("RGB") for p in references]
    expected = plain[repo](
        image=images,
        prompt="put the disc on the square",
        num_inference_steps=2,
        guidance_scale=concrete.guidance_scale,
        width=96,
        height=64,
        generator=generators(4, 1),
    ).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    # both references are read: the first alone gives another picture
    one = engine.generate(GenerationRequest(**fields, reference_images=[str(references[0])]))
    assert not np.array_equal(pixels(one.images[0]), pixels(result.images[0]))


def test_edit_replay_through_the_gallery_is_byte_identical(engine, references, tmp_path):
    check_edit_replay(engine, TINY_FLUX2_KLEIN, references, tmp_path)


def test_edit_refuses_references_the_pipeline_cannot_read(engine, references, tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (48, 32)).save(small)
    request = GenerationRequest(
        model=TINY_FLUX2_KLEIN,
        prompt="x",
        steps=1,
        reference_images=[str(references[0]), str(small)],
        **SMALL,
    )
    with pytest.raises(InvalidRequest, match=r"at least 64") as caught:
        engine.generate(request)
    assert caught.value.field == "reference_images[1]"
    with pytest.raises(UnsupportedFeature, match="take 4 reference image") as caught:
        engine.generate(request.model_copy(update={"reference_images": [str(references[0])] * 5}))
    assert caught.value.field == "reference_images"  # type: ignore[attr-defined]


def test_edit_size_is_the_pipelines_rule_on_a_1024_model():
    """For the real model (VAE factor 8) an edit without a size comes out at the first reference's
    size as the pipeline works it: scaled to one megapixel when larger, then to multiples of 16."""
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

    from easel.families.flux2 import FLUX2_KLEIN

    real = SimpleNamespace(vae_scale_factor=8, image_processor=Flux2ImageProcessor(vae_scale_factor=16))
    assert FLUX2_KLEIN.edit_size(real, [Image.new("RGB", (1000, 700))]) == (992, 688)
    big = Image.new("RGB", (3000, 2000))
    resized = Flux2ImageProcessor._resize_to_target_area(big, 1024 * 1024)
    assert FLUX2_KLEIN.edit_size(real, [big, Image.new("RGB", (64, 64))]) == (
        resized.width // 16 * 16,
        resized.height // 16 * 16,
    )


@pytest.mark.slow  # over 4 s: three runs and two plain pipelines, and the only-masked run at 256x256
def test_inpaint_equals_plain_diffusers(engine, init_png, mask_png):
    from diffusers import Flux2KleinInpaintPipeline

    check_inpaint(engine, TINY_FLUX2_KLEIN, Flux2KleinInpaintPipeline, init_png, mask_png, guidance=1.0)


def test_init_image_without_a_mask_is_refused_by_name(engine, init_png):
    request = GenerationRequest(model=TINY_FLUX2_KLEIN, prompt="x", init_image=str(init_png), steps=2)
    with pytest.raises(UnsupportedFeature, match=r"^init_image: FLUX\.2 \[klein\] has no image-to-image"):
        engine.generate(request)


def test_detection_reads_is_distilled_and_refuses_flux2_dev():
    from easel.families import family_for_index
    from easel.families.flux2 import FLUX2_KLEIN, FLUX2_KLEIN_BASE

    klein = {"_class_name": "Flux2KleinPipeline"}
    assert family_for_index({**klein, "is_distilled": True}) is FLUX2_KLEIN
    assert family_for_index({**klein, "is_distilled": False}) is FLUX2_KLEIN_BASE
    assert family_for_index(klein) is FLUX2_KLEIN_BASE  # the pipeline's default: not distilled
    with pytest.raises(UnsupportedFeature, match=r"^model: .*FLUX\.2 \[dev\].*Mistral") as caught:
        family_for_index({"_class_name": "Flux2Pipeline"})
    assert caught.value.field == "model"  # type: ignore[attr-defined]


def test_defaults_are_recorded_and_replay_is_byte_identical(engine, tmp_path):
    # distilled: 4 steps, guidance ignored (recorded as 1, as Forge writes it)
    parameters = check_recorded_defaults(engine, TINY_FLUX2_KLEIN, tmp_path, steps=4, guidance=1.0, cfg="1")
    assert "Distilled CFG Scale" not in parameters


@pytest.mark.slow  # over 4 s: 50 steps of CFG (two evaluations each)
def test_base_defaults_are_recorded_and_replay_is_byte_identical(engine, tmp_path):
    check_recorded_defaults(engine, TINY_FLUX2_KLEIN_BASE, tmp_path, steps=50, guidance=4.0, cfg="4")


def test_native_size_is_diffusers_rule(plain):
    from easel.families.flux2 import FLUX2_KLEIN

    assert FLUX2_KLEIN.default_size(plain[TINY_FLUX2_KLEIN]) == (256, 256)  # 128 x the tiny VAE's 2
    real = SimpleNamespace(default_sample_size=128, vae_scale_factor=8)
    assert FLUX2_KLEIN.default_size(real) == (1024, 1024)


@pytest.mark.parametrize(
    ("repo", "fields", "field"),
    [
        (TINY_FLUX2_KLEIN, {"prompt": "a red++ cat"}, "prompt"),  # Compel weighting
        (TINY_FLUX2_KLEIN, {"prompt": "a (red:1.2) cat", "prompt_syntax": "a1111"}, "prompt"),
        (TINY_FLUX2_KLEIN, {"prompt": "a cat BREAK red", "prompt_syntax": "a1111"}, "prompt"),
        (TINY_FLUX2_KLEIN_BASE, {"prompt": "a [cat:dog:0.5]", "prompt_syntax": "a1111"}, "prompt"),  # editing
        (
            TINY_FLUX2_KLEIN_BASE,
            {"negative_prompt": "a (red:1.2) cat", "prompt_syntax": "a1111"},
            "negative_prompt",
        ),
        (TINY_FLUX2_KLEIN, {"negative_prompt": "blue"}, "negative_prompt"),  # distilled: no CFG
        (TINY_FLUX2_KLEIN_BASE, {"negative_prompt": "blue", "guidance_scale": 1.0}, "negative_prompt"),
        (TINY_FLUX2_KLEIN, {"guidance_scale": 3.5}, "guidance_scale"),  # ignored by the distilled pipeline
        (TINY_FLUX2_KLEIN, {"clip_skip": 2}, "clip_skip"),
        (TINY_FLUX2_KLEIN, {"hires": {"scale": 2}}, "hires"),
        (TINY_FLUX2_KLEIN, {"variation_strength": 0.3}, "variation_strength"),
        (TINY_FLUX2_KLEIN, {"tiling": True}, "tiling"),
        (TINY_FLUX2_KLEIN, {"scheduler": "Euler"}, "scheduler"),
        (TINY_FLUX2_KLEIN, {"refiner": "stabilityai/stable-diffusion-xl-refiner-1.0"}, "refiner"),
        (TINY_FLUX2_KLEIN, {"controls": [{"model": "demo", "image": "x.png"}]}, "controls"),
    ],
)
def test_what_klein_cannot_do_is_refused_by_name(engine, repo, fields, field):
    check_refused_by_name(engine, repo, fields, field)


def test_sizes_the_pipeline_would_shrink_are_refused_by_name():
    from easel.families.flux2 import FLUX2_KLEIN

    request = GenerationRequest(model=TINY_FLUX2_KLEIN, prompt="a cat", steps=1, width=1000, height=1024)
    with pytest.raises(InvalidRequest, match=r"^invalid width=1000: .* multiples of 16 .* use 992 or 1008"):
        FLUX2_KLEIN.call_arguments(SimpleNamespace(vae_scale_factor=8), request, None)


def test_embeddings_are_refused_by_name(tmp_path):
    check_embeddings_refused(tmp_path, TINY_FLUX2_KLEIN)


def test_token_counts_use_the_qwen_tokenizer_and_long_prompts_warn(engine, plain):
    # the pipeline's chat template with thinking off (the tiny ChatML template has no thinking block)
    tokenizer = plain[TINY_FLUX2_KLEIN].tokenizer
    assert check_qwen_token_window(engine, TINY_FLUX2_KLEIN, tokenizer, thinking=False) > 600


def test_previews_skip_packed_latents_and_change_nothing(engine):
    request = GenerationRequest(model=TINY_FLUX2_KLEIN, prompt="a cat", steps=3, seed=2, **SMALL)
    seen = []
    with_previews = engine.generate(request, on_progress=seen.append, previews=1)
    assert [(p.step, p.total) for p in seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(p.preview is None for p in seen)  # no preview of packed latents, and no failure
    np.testing.assert_array_equal(pixels(with_previews.images[0]), pixels(engine.generate(request).images[0]))


def test_float32_redecode_of_the_caught_latents_is_the_pipelines_decode(plain):
    """What a non-finite image is decoded again from: the last step's packed latents, unpacked and
    decoded as the pipeline decodes them, give the pipeline's own pixels (float32 throughout here)."""
    from easel.families.base import _catching_latents
    from easel.families.flux2 import FLUX2_KLEIN

    pipe = plain[TINY_FLUX2_KLEIN]
    caught: dict = {}
    arguments = {"prompt": "a cat", "num_inference_steps": 2, "generator": generators(1, 1), **SMALL}
    output = pipe(**_catching_latents(arguments, caught), output_type="np")
    latents = FLUX2_KLEIN.unpack_latents(pipe, caught["latents"], 32, 32)
    np.testing.assert_allclose(FLUX2_KLEIN.decode_float32(pipe, latents), output.images, atol=1e-5)


@pytest.mark.slow  # over 4 s: two pipelines with and without the adapter
def test_a_lora_equals_plain_diffusers_and_switches_off(plain, tmp_path):
    from diffusers import Flux2KleinPipeline

    check_lora(plain[TINY_FLUX2_KLEIN], Flux2KleinPipeline, TINY_FLUX2_KLEIN, tmp_path, guidance=1.0)


def test_dtype_auto_is_bfloat16_for_klein_on_a_gpu() -> None:
    from easel.families.flux2 import FLUX2_KLEIN, FLUX2_KLEIN_BASE

    check_bfloat16_on_a_gpu(FLUX2_KLEIN, FLUX2_KLEIN_BASE)  # the model cards' dtype


# -- the doors ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(hf_home, flux2_models, engine, tmp_path_factory):
    from server_support import server

    with server(tmp_path_factory.mktemp("flux2-server-home"), engine) as client:
        yield client


def test_native_job(client, engine):
    check_native_door(client, engine, TINY_FLUX2_KLEIN, family="flux2_klein", cfg="1", count=(3, 512))
    body = {"model": TINY_FLUX2_KLEIN, "prompt": "a cat", "negative_prompt": "blue", "steps": 2, **SMALL}
    refused = client.post("/api/v1/generate", json=body)  # distilled: the negative prompt would be ignored
    assert refused.status_code == 422 and "negative_prompt" in refused.text, refused.text


def test_a1111_txt2img_with_the_model_override(client, engine):
    check_a1111_door(client, engine, TINY_FLUX2_KLEIN_BASE, cfg="2", negative_prompt="red", guidance_scale=2)


def test_openai_generations_with_the_model(client, engine):
    check_openai_door(client, engine, TINY_FLUX2_KLEIN)


def test_openai_edits_without_a_mask_edit_with_every_image(client, engine, references):
    form = {"model": TINY_FLUX2_KLEIN, "prompt": "a blue square", "size": "96x64", "steps": "1", "seed": "5"}
    files = [("image[]", (p.name, p.read_bytes(), "image/png")) for p in references]
    response = client.post("/v1/images/edits", files=files, data=form)
    assert response.status_code == 200, response.text
    made = png(base64.b64decode(response.json()["data"][0]["b64_json"]))
    expected = engine.generate(
        GenerationRequest(
            model=TINY_FLUX2_KLEIN, prompt="a blue square", prompt_syntax="plain", steps=1, seed=5,
            width=96, height=64, reference_images=[str(p) for p in references],
        )
    )  # fmt: skip
    np.testing.assert_array_equal(pixels(made), pixels(expected.images[0]))


@pytest.mark.slow
def test_cli_generate(tmp_path, engine):
    check_cli_door(tmp_path, engine, TINY_FLUX2_KLEIN, ("a cat", "--negative", "blue"), "--negative")


@pytest.mark.slow
def test_cli_edit_with_two_references(tmp_path, engine, references):
    from test_cli import run_easel

    out = tmp_path / "edited.png"
    done = run_easel(
        "generate", "a blue square", "-m", TINY_FLUX2_KLEIN, "--edit", str(references[0]),
        "--edit", str(references[1]), "--steps", "1", "--seed", "5", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = engine.generate(
        GenerationRequest(
            model=TINY_FLUX2_KLEIN, prompt="a blue square", steps=1, seed=5,
            reference_images=[str(p) for p in references],
        )
    )  # fmt: skip
    np.testing.assert_array_equal(pixels(Image.open(out)), pixels(expected.images[0]))

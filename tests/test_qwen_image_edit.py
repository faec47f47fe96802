"""Qwen-Image-Edit and Qwen-Image-Edit-2509 (tiny random models under the real repo ids), offline, without
torchvision: the image-only processor (and that plain Qwen2VLProcessor still needs torchvision), pixel
parity with plain diffusers' QwenImageEditPipeline / QwenImageEditPlusPipeline given the same processor,
one and two references, the output size rule, defaults, replay, refusals by name and the doors."""

from __future__ import annotations

import base64
import importlib.util
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_flux import generators, pixels, png

from easel import GenerationRequest, UnsupportedFeature
from easel.testing.tiny_qwen_image import QWEN_IMAGE_EDIT_2509_ID as EDIT_2509
from easel.testing.tiny_qwen_image import QWEN_IMAGE_EDIT_ID as EDIT

SMALL = {"width": 64, "height": 64}  # the tiny VAE's factor is 32: sizes in multiples of 64
CFG = {"true_cfg_scale": 4.0, "negative_prompt": " "}  # what easel's default guidance runs


@pytest.fixture(scope="module")
def edit_models(hf_home: Path):
    """Both tiny Edit models in the HF cache; removed after, so other tests' model lists are unchanged."""
    from easel.testing.tiny_qwen_image import install_tiny_qwen_image_edit

    snapshots = install_tiny_qwen_image_edit(hf_home)
    yield snapshots
    for snapshot in snapshots.values():
        shutil.rmtree(snapshot.parents[1])


@pytest.fixture(scope="module")
def processor_folder(tmp_path_factory) -> Path:
    """The tiny models' processor/ folder alone, as the published repos lay it out (no weights: quick)."""
    from easel.testing.tiny_qwen_image import build_tiny_edit_processor, save_processor_as_published

    folder = tmp_path_factory.mktemp("qwen-edit-repo")
    save_processor_as_published(build_tiny_edit_processor(), folder / "processor")
    return folder


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> list[Path]:
    """A 3:2 red square on grey and a 2:3 green bar on white."""
    folder = tmp_path_factory.mktemp("qwen-edit-inputs")
    first = Image.new("RGB", (48, 32), (128, 128, 128))
    first.paste((220, 20, 20), (8, 8, 24, 24))
    second = Image.new("RGB", (32, 48), (250, 250, 250))
    second.paste((20, 200, 20), (4, 20, 28, 28))
    paths = [folder / "first.png", folder / "second.png"]
    first.save(paths[0])
    second.save(paths[1])
    return paths


def plain_pipe(repo: str):
    """The plain diffusers pipeline with the same image-only processor (the one way to load it without
    torchvision)."""
    import diffusers

    from easel.families.qwen_processor import load_image_only_processor
    from easel.testing.tiny_qwen_image import EDIT_PIPELINES

    pipe = getattr(diffusers, EDIT_PIPELINES[repo]).from_pretrained(
        repo, processor=load_image_only_processor(repo)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_edit(
    repo: str, references: list[Path], prompt: str, *, steps: int, seed: int, pipe=None, **size
) -> Image.Image:
    """What plain diffusers makes (`pipe`, else a fresh plain_pipe): the model card's call, true_cfg_scale
    4 and negative prompt " "."""
    pipe = pipe or plain_pipe(repo)
    images = [Image.open(path).convert("RGB") for path in references]
    return pipe(
        image=images if repo == EDIT_2509 else images[0], prompt=prompt, num_inference_steps=steps,
        generator=generators(seed, 1), **CFG, **size,
    ).images[0]  # fmt: skip


def easel_edit(engine, repo: str, references: list[Path], prompt: str, *, seed: int, **fields):
    """easel's edit of `references` with `repo`: 2 steps, SMALL and `fields`."""
    request = GenerationRequest(
        model=repo, prompt=prompt, reference_images=[str(p) for p in references], steps=2, seed=seed,
        **{**SMALL, **fields},
    )  # fmt: skip
    return engine.generate(request)


# -- the processor ------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_plain_qwen2vl_processor_still_needs_torchvision(processor_folder):
    """Why QwenImageOnlyProcessor exists. If this fails, transformers builds Qwen2VLProcessor without
    torchvision now: drop the subclass and let the pipelines load their own processor."""
    from transformers import AutoProcessor, Qwen2VLProcessor

    folder = processor_folder / "processor"
    for load in (Qwen2VLProcessor.from_pretrained, AutoProcessor.from_pretrained):
        with pytest.raises(ImportError, match="Qwen2VLVideoProcessor requires the Torchvision"):
            load(folder)


def test_the_image_only_processor_reads_text_and_images_as_qwen2vl_does(processor_folder, references):
    """Its image half is transformers' PIL image processor, its text half Qwen2VLProcessor's own (each
    <|image_pad|> expanded to the image's merged patches); it has no video processor."""
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor

    from easel.families.qwen_processor import QwenImageOnlyProcessor, load_image_only_processor

    processor = load_image_only_processor(processor_folder)  # a model folder, as a repo id
    assert isinstance(processor, Qwen2VLProcessor) and isinstance(processor, QwenImageOnlyProcessor)
    assert QwenImageOnlyProcessor.get_attributes() == ["image_processor", "tokenizer"]
    assert isinstance(processor.image_processor, Qwen2VLImageProcessorPil)
    image = Image.open(references[0]).convert("RGB")
    text = "Picture 1: <|vision_start|><|image_pad|><|vision_end|>make it blue"
    inputs = processor(text=[text], images=[image], padding=True, return_tensors="pt")
    expected = processor.image_processor(images=[image], return_tensors="pt")
    np.testing.assert_array_equal(inputs["pixel_values"].numpy(), expected["pixel_values"].numpy())
    pads = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert pads == int(expected["image_grid_thw"].prod()) // processor.image_processor.merge_size**2 > 1


# -- detection, defaults, sizes -------------------------------------------------------------------------


def test_detection_and_defaults_from_the_model_cards():
    from easel.engine import Easel
    from easel.families import family_for_pipeline_class
    from easel.families.qwen_image_edit import QWEN_IMAGE_EDIT, QWEN_IMAGE_EDIT_2509

    assert family_for_pipeline_class("QwenImageEditPipeline") is QWEN_IMAGE_EDIT
    assert family_for_pipeline_class("QwenImageEditPlusPipeline") is QWEN_IMAGE_EDIT_2509
    for family, steps, most in ((QWEN_IMAGE_EDIT, 50, 1), (QWEN_IMAGE_EDIT_2509, 40, 3)):
        request = GenerationRequest(model=EDIT, prompt="x", reference_images=["r.png"], seed=1)
        concrete = Easel._with_family_defaults(request, family)
        assert (concrete.steps, concrete.guidance_scale) == (steps, 4.0)  # true CFG, as Qwen-Image's
        assert (family.tasks, family.max_reference_images, family.accelerator_dtype) == (
            ("edit",),
            most,
            "bfloat16",
        )


@pytest.mark.parametrize("size", [(48, 32), (32, 48), (40, 40), (1000, 100), (333, 777)])
def test_output_size_is_what_the_pipeline_computes(size):
    """Without a size, the output is calculate_dimensions(1024^2, aspect) cut to 2 x the VAE factor:
    from the first reference (Qwen-Image-Edit) or the last (2509), as each pipeline does."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

    from easel.families.qwen_image_edit import QWEN_IMAGE_EDIT, QWEN_IMAGE_EDIT_2509

    other = Image.new("RGB", (64, 16))
    image = Image.new("RGB", size)
    width, height, _ = calculate_dimensions(1024 * 1024, size[0] / size[1])
    real = SimpleNamespace(vae_scale_factor=8)
    assert QWEN_IMAGE_EDIT.edit_size(real, [image, other]) == (width // 16 * 16, height // 16 * 16)
    assert QWEN_IMAGE_EDIT_2509.edit_size(real, [other, image]) == (width // 16 * 16, height // 16 * 16)
    tiny = SimpleNamespace(vae_scale_factor=32)
    assert QWEN_IMAGE_EDIT_2509.edit_size(tiny, [image]) == (
        max(64, width // 64 * 64),
        max(64, height // 64 * 64),
    )


# -- refusals (before anything loads) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"reference_images": []}, "reference_images", "generate from text with Qwen/Qwen-Image"),
        ({"reference_images": ["a.png"] * 4}, "reference_images", "take 3 reference image(s)"),
        ({"init_image": "a.png", "strength": 0.5, "reference_images": []}, "init_image", "image-to-image"),
        (
            {"init_image": "a.png", "mask_image": "m.png", "reference_images": []},
            "mask_image/outpaint",
            "Inpaint",
        ),
        ({"prompt": "a red++ cat"}, "prompt", ""),  # Compel weighting
        ({"prompt": "a (red:1.2) cat", "prompt_syntax": "a1111"}, "prompt", ""),
        ({"negative_prompt": "blue", "guidance_scale": 1.0}, "negative_prompt", ""),  # no CFG: ignored
        ({"clip_skip": 2}, "clip_skip", ""),
        ({"scheduler": "Euler"}, "scheduler", ""),
        ({"steps": 1}, "steps", ""),  # Qwen-Image's scheduler: NaN in one step
        ({"tiling": True}, "tiling", ""),
    ],
)
def test_what_the_edit_models_cannot_do_is_refused_by_name(fields, field, says):
    from easel.errors import EaselError
    from easel.families.qwen_image_edit import QWEN_IMAGE_EDIT_2509

    request = GenerationRequest(
        **{
            "model": EDIT_2509,
            "prompt": "make it blue",
            "steps": 2,
            "reference_images": ["a.png"],
            **SMALL,
            **fields,
        }
    )
    pipe = SimpleNamespace(vae_scale_factor=32, scheduler=SimpleNamespace(config={"shift_terminal": 0.02}))
    with pytest.raises(EaselError) as caught:  # engine.generate runs these
        QWEN_IMAGE_EDIT_2509.check_request(request)
        QWEN_IMAGE_EDIT_2509.call_arguments(pipe, request, None)
    message = str(caught.value)
    named = getattr(caught.value, "field", None) or message.split("=")[0].split(":")[0]
    assert named == field and says in message, message


def test_one_reference_only_on_qwen_image_edit():
    from easel.families.qwen_image_edit import QWEN_IMAGE_EDIT

    request = GenerationRequest(model=EDIT, prompt="make it blue", reference_images=["a.png", "b.png"])
    with pytest.raises(UnsupportedFeature) as caught:
        QWEN_IMAGE_EDIT.check_request(request)
    assert caught.value.field == "reference_images" and "take 1 reference image" in str(caught.value)


# -- running: pixel parity, replay (slow: every reference is VAE-encoded at ~1 megapixel) -----------------


@pytest.mark.slow
def test_qwen_image_edit_equals_plain_diffusers(engine, edit_models, references):
    result = easel_edit(engine, EDIT, references[:1], "make the square blue", seed=4)
    assert result.model_family == "qwen_image_edit" and result.request.task == "edit"
    assert result.request.guidance_scale == 4.0
    expected = plain_edit(EDIT, references[:1], "make the square blue", steps=2, seed=4, **SMALL)
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    assert "CFG scale: 4," in result.parameters() and "Model: Qwen-Image-Edit," in result.parameters()


@pytest.mark.slow
@pytest.mark.parametrize("count", [1, 2])
def test_qwen_image_edit_2509_equals_plain_diffusers(engine, edit_models, references, count):
    used = references[:count]
    result = easel_edit(engine, EDIT_2509, used, "make the square blue", seed=4)
    assert result.model_family == "qwen_image_edit_2509"
    expected = plain_edit(EDIT_2509, used, "make the square blue", steps=2, seed=4, **SMALL)
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    if count == 2:  # the second reference is read: without it the pixels differ
        one = plain_edit(EDIT_2509, used[:1], "make the square blue", steps=2, seed=4, **SMALL)
        assert not np.array_equal(pixels(result.images[0]), pixels(one))


@pytest.mark.slow
def test_an_edit_without_a_size_comes_out_at_the_pipelines_size(engine, edit_models, references):
    """2509 sizes from the last reference (2:3 here): 832x1216 at the real model's 1 megapixel, in the
    tiny model's multiples of 64; recorded, and the pixels are plain diffusers' at its own default."""
    result = easel_edit(engine, EDIT_2509, references, "make it blue", seed=1, width=None, height=None)
    assert (result.request.width, result.request.height) == (832, 1216) == result.images[0].size
    expected = plain_edit(EDIT_2509, references, "make it blue", steps=2, seed=1)  # no size: the pipeline's
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


@pytest.mark.slow
def test_replay_through_the_gallery_is_byte_identical(engine, edit_models, references, tmp_path):
    from test_edit import check_edit_replay

    check_edit_replay(engine, EDIT_2509, references, tmp_path, steps=2, **SMALL)


@pytest.mark.slow
def test_a_lora_equals_plain_diffusers_and_switches_off(edit_models, references, tmp_path):
    """A random transformer-attention LoRA (QwenImageLoraLoaderMixin, as for Qwen-Image) on an edit."""
    from easel import Easel, Settings
    from easel.testing.tiny_flux import write_tiny_flux_lora  # transformer attention: the same layout

    pipe = plain_pipe(EDIT_2509)
    folder = tmp_path / "loras"
    write_tiny_flux_lora(pipe, folder / "style.safetensors", seed=1)
    own = Easel(Settings.from_env(lora_dir=folder, home=tmp_path / "home"))
    lora = [{"name": "style", "weight": 0.8}]
    with_lora = easel_edit(own, EDIT_2509, references[:1], "make it blue", seed=4, loras=lora)
    assert "Lora hashes: " in with_lora.parameters()
    never = plain_edit(EDIT_2509, references[:1], "make it blue", steps=2, seed=4, pipe=pipe, **SMALL)
    pipe.load_lora_weights(str(folder), weight_name="style.safetensors", adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[0.8])
    expected = plain_edit(EDIT_2509, references[:1], "make it blue", steps=2, seed=4, pipe=pipe, **SMALL)
    np.testing.assert_array_equal(pixels(with_lora.images[0]), pixels(expected))
    assert not np.array_equal(pixels(never), pixels(expected))
    without = easel_edit(own, EDIT_2509, references[:1], "make it blue", seed=4)  # switched off, not fused
    np.testing.assert_array_equal(pixels(without.images[0]), pixels(never))


# -- doors ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_native_and_openai_edits_doors(engine, edit_models, references, tmp_path):
    from server_support import data_url, server

    door = {"prompt": "a blue square", "steps": 2, "seed": 5}
    direct = easel_edit(engine, EDIT_2509, references, door["prompt"], seed=door["seed"]).images[0]
    with server(tmp_path, engine) as client:
        info = client.get("/api/v1/models/info", params={"model": EDIT_2509})
        assert info.status_code == 200, info.text
        assert "edit" in info.json()["tasks"], info.text  # the web UI's reference-images field is enabled
        body = {"model": EDIT_2509, **door, **SMALL, "reference_images": [data_url(p) for p in references]}
        native = client.post("/api/v1/generate?include_images=true", json=body)
        assert native.status_code == 200, native.text
        record = native.json()
        assert record["result"]["model_family"] == "qwen_image_edit_2509"
        image = png(base64.b64decode(record["images"][0]["b64_png"]))
        np.testing.assert_array_equal(pixels(image), pixels(direct))
        refused = client.post("/api/v1/generate", json={**body, "reference_images": []})
        assert refused.status_code == 422 and "reference_images" in refused.text, refused.text
        # OpenAI's edits without a mask on an edit model: the images are the references
        form = {"model": EDIT_2509, "size": "64x64", **{key: str(value) for key, value in door.items()}}
        files = [("image[]", (p.name, p.read_bytes(), "image/png")) for p in references]
        openai = client.post("/v1/images/edits", files=files, data=form)
        assert openai.status_code == 200, openai.text
        made = png(base64.b64decode(openai.json()["data"][0]["b64_json"]))
        np.testing.assert_array_equal(pixels(made), pixels(direct))
        too_many = client.post("/v1/images/edits", files=files * 2, data=form)
        assert too_many.status_code == 422 and too_many.json()["error"]["param"] == "image", too_many.text


@pytest.mark.slow
def test_cli_edit_flag(engine, edit_models, references, tmp_path):
    from typer.testing import CliRunner

    from easel.cli import app

    out = tmp_path / "edited.png"
    args = ["generate", "a blue square", "-m", EDIT, "--edit", str(references[0]), "--steps", "2",
            "--seed", "5", "--width", "64", "--height", "64", "-o", str(out), "--no-gallery"]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    expected = easel_edit(engine, EDIT, references[:1], "a blue square", seed=5)
    np.testing.assert_array_equal(pixels(Image.open(out)), pixels(expected.images[0]))
    refused = CliRunner().invoke(app, ["generate", "a cat", "-m", EDIT, "-o", str(out), "--no-gallery"])
    assert refused.exit_code == 2 and "--edit" in refused.output, refused.output

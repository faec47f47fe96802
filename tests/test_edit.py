"""Instruction editing (task `edit`, request.reference_images) with FLUX.1 Kontext [dev] (a tiny random
model under the real repo id), offline: pixel parity with plain diffusers' FluxKontextPipeline, the
defaults and sizes recorded, replay through the gallery, the refusals, and every door."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY_FLUX_KONTEXT
from PIL import Image
from test_flux import generators, pixels, png

from easel import GenerationRequest, InvalidRequest, UnsupportedFeature

SMALL = {"width": 32, "height": 32}  # the tiny model's native size is 256x256
# the tiny model works its reference at Kontext's preferred resolution nearest the reference's aspect
# ratio, scaled by its native size / 1024: a 3:2 reference -> (1248, 832) / 4
WORKED = (312, 208)


@pytest.fixture(autouse=True)
def _installed(flux_kontext_models):
    """Every test here needs the tiny Kontext model in the HF cache."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A 48x32 (3:2) picture: a red square on grey."""
    path = tmp_path_factory.mktemp("edit-inputs") / "reference.png"
    image = Image.new("RGB", (48, 32), (128, 128, 128))
    image.paste((220, 20, 20), (8, 8, 24, 24))
    image.save(path)
    return path


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def plain_kontext(
    reference: Path, prompt: str, *, width: int, height: int, steps: int, seed: int
) -> Image.Image:
    """What plain diffusers makes: FluxKontextPipeline with the reference at its worked size (the
    pipeline's own resize; `_auto_resize` off, as its preferred sizes are for 1024-pixel models),
    max_area = the output's area (else the pipeline rescales the output to 1024^2)."""
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(TINY_FLUX_KONTEXT)
    pipe.set_progress_bar_config(disable=True)
    image = pipe.image_processor.resize(Image.open(reference).convert("RGB"), WORKED[1], WORKED[0])
    return pipe(
        image=image,
        prompt=prompt,
        width=width,
        height=height,
        max_area=width * height,
        _auto_resize=False,
        num_inference_steps=steps,
        guidance_scale=2.5,
        generator=generators(seed, 1),
    ).images[0]


def test_edit_equals_plain_diffusers(engine, reference):
    result = engine.generate(
        GenerationRequest(
            model=TINY_FLUX_KONTEXT, prompt="make the square blue", reference_images=[str(reference)],
            steps=1, seed=4, **SMALL,
        )
    )  # fmt: skip
    assert result.model_family == "flux1_kontext_dev"
    concrete = result.request
    assert (concrete.guidance_scale, concrete.task) == (2.5, "edit")  # the model card's guidance, recorded
    expected = plain_kontext(reference, "make the square blue", width=32, height=32, steps=1, seed=4)
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    parameters = result.parameters()
    assert "CFG scale: 1," in parameters and "Distilled CFG Scale: 2.5" in parameters
    assert "Model: FLUX.1-Kontext-dev" in parameters


@pytest.mark.slow  # over 4 s: two runs at the tiny model's full working size
def test_an_edit_without_a_size_comes_out_at_its_references_worked_size(engine, reference):
    result = engine.generate(
        GenerationRequest(
            model=TINY_FLUX_KONTEXT, prompt="make it blue", reference_images=[str(reference)], steps=2, seed=4
        )
    )
    assert (result.request.width, result.request.height) == WORKED  # the size that ran, recorded
    assert result.images[0].size == WORKED
    expected = plain_kontext(reference, "make it blue", width=WORKED[0], height=WORKED[1], steps=2, seed=4)
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


def test_defaults_come_from_the_model_card():
    from easel.engine import Easel
    from easel.families import FLUX_KONTEXT_DEV, family_for_pipeline_class

    assert family_for_pipeline_class("FluxKontextPipeline") is FLUX_KONTEXT_DEV
    request = GenerationRequest(model=TINY_FLUX_KONTEXT, prompt="x", reference_images=["r.png"], seed=1)
    concrete = Easel._with_family_defaults(request, FLUX_KONTEXT_DEV)
    assert (concrete.steps, concrete.guidance_scale, concrete.strength) == (28, 2.5, None)


@pytest.mark.parametrize("size", [(48, 32), (32, 48), (40, 40), (100, 20), (20, 100)])
def test_reference_size_is_the_pipelines_auto_resize_on_a_1024_model(size):
    """For the real model (native 1024, VAE factor 8) the worked size is exactly what diffusers'
    `_auto_resize` picks; the same rule scaled gives the tiny model's."""
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    from easel.families import FLUX_KONTEXT_DEV

    image = Image.new("RGB", size)
    aspect = size[0] / size[1]
    _, width, height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    real = SimpleNamespace(default_sample_size=128, vae_scale_factor=8)
    assert FLUX_KONTEXT_DEV.reference_size(real, image) == (width // 16 * 16, height // 16 * 16)
    tiny = SimpleNamespace(default_sample_size=128, vae_scale_factor=2)
    assert FLUX_KONTEXT_DEV.reference_size(tiny, image) == (width // 4 // 4 * 4, height // 4 // 4 * 4)


def test_replay_through_the_gallery_is_byte_identical(engine, reference, tmp_path):
    check_edit_replay(engine, TINY_FLUX_KONTEXT, [reference], tmp_path, **SMALL)


def check_edit_replay(
    engine, repo: str, references: list[Path], tmp_path: Path, *, steps: int = 1, **fields
) -> None:
    """An edit of `references` with `repo` (and `fields`), added to a gallery, replays byte for byte
    from the gallery's stored copies of the references, the originals gone (FLUX.1 Kontext here,
    FLUX.2 [klein] with two references in test_flux2, Qwen-Image-Edit-2509 with two at 2 steps)."""
    from easel import Easel, Settings
    from easel.storage.gallery import Gallery
    from easel.storage.metadata import read_metadata

    gallery = Gallery(tmp_path / "home")
    # replay resolves the gallery's stored inputs under its own home; the cache is shared
    engine = Easel(Settings.from_env(home=tmp_path / "home"), cache=engine.cache)
    copies = [tmp_path / f"moved-{index}.png" for index in range(len(references))]
    for copy, reference in zip(copies, references, strict=True):
        copy.write_bytes(reference.read_bytes())
    result = engine.generate(
        GenerationRequest(
            model=repo, prompt="a blue square", reference_images=[str(c) for c in copies], steps=steps,
            seed=2, **fields,
        )
    )  # fmt: skip
    [entry] = gallery.add_result(result)
    document = read_metadata(entry.path).document
    stored = document["request"]["reference_images"]
    assert len(stored) == len(references)
    assert all(s.startswith("easel-input:") for s in stored)  # the recipe carries the references, not paths
    for copy in copies:
        copy.unlink()  # replay must not need the original files
    again, index = engine.replay(entry.path)
    assert index == 0 and again.encode(0) == entry.path.read_bytes()


def test_what_cannot_edit_is_refused_naming_reference_images(engine, reference):
    from easel.families import FLUX_DEV

    request = GenerationRequest(prompt="make it blue", reference_images=[str(reference)], steps=1)
    with pytest.raises(UnsupportedFeature) as caught:  # the bundled SD 1.5 demo model
        engine.generate(request)
    assert caught.value.field == "reference_images"
    assert "cannot edit with reference images" in str(caught.value) and "FLUX.1 Kontext" in str(caught.value)
    with pytest.raises(UnsupportedFeature) as caught:
        FLUX_DEV.check_request(request.model_copy(update={"model": "black-forest-labs/FLUX.1-dev"}))
    assert caught.value.field == "reference_images" and "flux1_dev" in str(caught.value)


def test_kontext_refuses_what_its_pipeline_has_no_place_for(engine, reference, init_png, tmp_path):
    kontext = {"model": TINY_FLUX_KONTEXT, "prompt": "make it blue", "steps": 1}
    with pytest.raises(UnsupportedFeature) as caught:  # one reference image only
        engine.generate(GenerationRequest(**kontext, reference_images=[str(reference)] * 2))
    assert caught.value.field == "reference_images" and "take 1 reference image" in str(caught.value)
    for name, value in (("init_image", str(init_png)), ("hires", {"scale": 2}),
                        ("controls", [{"model": "demo", "image": str(init_png)}])):  # fmt: skip
        with pytest.raises(InvalidRequest) as refused:
            GenerationRequest(**kontext, reference_images=[str(reference)], **{name: value})
        assert refused.value.field == name and "reference_images" in str(refused.value)
    with pytest.raises(InvalidRequest) as refused:
        GenerationRequest(**kontext, reference_images=[" "])
    assert refused.value.field == "reference_images[0]"
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(GenerationRequest(**kontext, reference_images=[str(not_an_image)], **SMALL))
    assert refused.value.field == "reference_images[0]"
    with pytest.raises(UnsupportedFeature, match=r"init_image: FLUX\.1 Kontext does not do image-to-image"):
        engine.generate(GenerationRequest(**kontext, init_image=str(init_png), strength=1.0))
    with pytest.raises(UnsupportedFeature, match="FluxKontextInpaintPipeline"):
        engine.generate(
            GenerationRequest(**kontext, init_image=str(init_png), strength=1.0, mask_image=str(init_png))
        )
    with pytest.raises(UnsupportedFeature) as caught:  # FLUX.1's refusals hold for Kontext too
        engine.generate(
            GenerationRequest(**kontext, reference_images=[str(reference)], negative_prompt="red")
        )
    assert caught.value.field == "negative_prompt"


def test_text2img_without_a_reference(engine):
    """Kontext generates without an image too (the same pipeline, max_area = the size asked for)."""
    result = engine.generate(
        GenerationRequest(model=TINY_FLUX_KONTEXT, prompt="a cat", steps=1, seed=3, **SMALL)
    )
    assert result.request.task == "text2img" and result.images[0].size == (32, 32)


# -- doors -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(hf_home, flux_kontext_models, engine, tmp_path_factory):
    from server_support import server

    with server(tmp_path_factory.mktemp("edit-server-home"), engine) as client:
        yield client


DOOR = {"prompt": "a blue square", "steps": 1, "seed": 5}  # what every door below asks for


@pytest.fixture(scope="module")
def expected(engine, reference) -> Image.Image:
    """What the Python API makes of DOOR's edit, computed once for the doors (a path, a data URL
    and an upload of the same PNG are the same pixels; plain and compel syntax read this prompt
    alike)."""
    request = GenerationRequest(model=TINY_FLUX_KONTEXT, reference_images=[str(reference)], **DOOR, **SMALL)
    return engine.generate(request).images[0]


def test_native_job_with_reference_images(client, expected, reference):
    body = {"model": TINY_FLUX_KONTEXT, **DOOR, **SMALL, "reference_images": [data_url(reference)]}
    response = client.post("/api/v1/generate?include_images=true", json=body)
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["status"] == "succeeded" and record["result"]["model_family"] == "flux1_kontext_dev"
    [summary] = record["result"]["request"]["reference_images"]
    assert not summary.startswith("data:")  # summarised, not echoed back
    image = png(base64.b64decode(record["images"][0]["b64_png"]))
    np.testing.assert_array_equal(pixels(image), pixels(expected))
    refused = client.post("/api/v1/generate", json={**body, "model": None})  # the SD 1.5 demo model
    assert refused.status_code in (400, 422), refused.text
    assert "reference_images" in refused.text and "cannot edit" in refused.text


def test_openai_edits_without_a_mask_edit_on_kontext(client, expected, reference):
    form = {"model": TINY_FLUX_KONTEXT, "size": "32x32", **{key: str(value) for key, value in DOOR.items()}}
    image = {"image": ("reference.png", reference.read_bytes(), "image/png")}
    response = client.post("/v1/images/edits", files=image, data=form)
    assert response.status_code == 200, response.text
    made = png(base64.b64decode(response.json()["data"][0]["b64_json"]))
    np.testing.assert_array_equal(pixels(made), pixels(expected))
    two = [("image[]", ("a.png", reference.read_bytes(), "image/png"))] * 2
    refused = client.post("/v1/images/edits", files=two, data=form)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["param"] == "image" and "takes 1 reference image" in error["message"]


def test_cli_edit_flag(expected, reference, tmp_path):
    from typer.testing import CliRunner

    from easel.cli import app

    out = tmp_path / "edited.png"
    args = ["generate", DOOR["prompt"], "-m", TINY_FLUX_KONTEXT, "--edit", str(reference), "--steps", "1",
            "--seed", "5", "--width", "32", "--height", "32", "-o", str(out), "--no-gallery"]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    np.testing.assert_array_equal(pixels(Image.open(out)), pixels(expected))
    refused = CliRunner().invoke(app, ["generate", "a cat", "--edit", str(reference), "-o", str(out)])
    assert refused.exit_code == 2, refused.output
    assert "--edit" in refused.output and "cannot edit with reference images" in refused.output


def test_web_ui_sends_reference_images(client):
    """The image-to-image area has the reference-images file field, and the page sends what it
    holds as reference_images (the native job above is what that request does)."""
    page = client.get("/").text
    assert 'id="reference-files"' in page and "Reference images (edit)" in page
    script = client.get("/ui/app.js").text
    assert "request.reference_images = state.referenceImages" in script
    assert 'reference_images: "reference-files"' in script  # errors naming the field mark it

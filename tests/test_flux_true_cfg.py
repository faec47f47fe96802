"""FLUX.1's real classifier-free guidance (request.true_cfg_scale, diffusers' true_cfg_scale) with
negative prompts (issue 20), on the tiny FLUX.1 models, offline: pixel parity with plain diffusers, the
negative prompt steering the picture, the refusals by name, Forge's parameters ("CFG scale" for the
real CFG beside "Distilled CFG Scale") read back to the same request, replay, and the doors."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from conftest import TINY_FLUX_DEV, TINY_FLUX_KONTEXT, TINY_FLUX_SCHNELL, TINY_SD15
from PIL import Image
from test_flux import SMALL, _installed, check_plain_flux, generators, pixels, plain, png

from easel import EaselError, GenerationRequest, InvalidRequest

CAT = {"prompt": "a red cat", "steps": 2, "seed": 7, **SMALL}
# test_flux's fixtures, used here too: the tiny FLUX.1 models installed (autouse), plain FluxPipelines
__all__ = ["_installed", "plain"]


@pytest.mark.parametrize(
    ("repo", "negative", "guidance"),
    [(TINY_FLUX_DEV, "blue, blurry", 2.5), (TINY_FLUX_SCHNELL, "", None)],  # "": against the empty text
)
def test_true_cfg_equals_plain_diffusers(engine, plain, repo, negative, guidance):
    result = engine.generate(
        GenerationRequest(
            model=repo, negative_prompt=negative, true_cfg_scale=3.0, guidance_scale=guidance, num_images=2,
            **CAT,
        )
    )  # fmt: skip
    assert result.request.true_cfg_scale == 3.0
    cfg = {"negative_prompt": negative, "true_cfg_scale": 3.0}
    check_plain_flux(result, plain[repo], repo, steps=2, seed=7, guidance=guidance, **cfg)
    # real CFG changes the picture: without it (one pass a step) the same seed draws another image
    without = engine.generate(GenerationRequest(model=repo, guidance_scale=guidance, **CAT))
    assert not np.array_equal(pixels(without.images[0]), pixels(result.images[0]))


@pytest.mark.slow  # over 4 s: the plain Kontext pipeline loads and works the reference at 312x208
def test_kontext_edit_with_true_cfg_equals_plain_diffusers(engine, flux_kontext_models, tmp_path):
    """FluxKontextPipeline takes true_cfg_scale and negative_prompt too: an edit with real CFG is what
    the plain pipeline makes (reference at its worked size, as test_edit's plain_kontext)."""
    from diffusers import FluxKontextPipeline
    from test_edit import WORKED

    reference = tmp_path / "reference.png"
    Image.new("RGB", (48, 32), (200, 30, 30)).save(reference)
    result = engine.generate(
        GenerationRequest(
            model=TINY_FLUX_KONTEXT, prompt="make it blue", reference_images=[str(reference)],
            negative_prompt="red", true_cfg_scale=2.0, steps=1, seed=4, **SMALL,
        )
    )  # fmt: skip
    assert "CFG scale: 2," in result.parameters() and "Distilled CFG Scale: 2.5" in result.parameters()
    pipe = FluxKontextPipeline.from_pretrained(TINY_FLUX_KONTEXT)
    pipe.set_progress_bar_config(disable=True)
    image = pipe.image_processor.resize(Image.open(reference).convert("RGB"), WORKED[1], WORKED[0])
    expected = pipe(
        image=image, prompt="make it blue", negative_prompt="red", true_cfg_scale=2.0, width=32, height=32,
        max_area=32 * 32, _auto_resize=False, num_inference_steps=1, guidance_scale=2.5,
        generator=generators(4, 1),
    ).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


def test_the_negative_prompt_changes_the_picture(engine):
    fields = {"model": TINY_FLUX_DEV, "true_cfg_scale": 4.0, **CAT}
    blue = engine.generate(GenerationRequest(negative_prompt="blue", **fields))
    green = engine.generate(GenerationRequest(negative_prompt="green fields", **fields))
    again = engine.generate(GenerationRequest(negative_prompt="blue", **fields))
    difference = np.abs(pixels(blue.images[0]).astype(int) - pixels(green.images[0]).astype(int))
    assert difference.mean() > 1.0
    np.testing.assert_array_equal(pixels(blue.images[0]), pixels(again.images[0]))


@pytest.mark.parametrize(
    ("repo", "fields", "field"),
    [
        (TINY_FLUX_DEV, {"negative_prompt": "blue"}, "negative_prompt"),  # no real CFG: it would be ignored
        (TINY_FLUX_SCHNELL, {"negative_prompt": "blue", "true_cfg_scale": 1.0}, "negative_prompt"),
        (TINY_SD15, {"true_cfg_scale": 3.0}, "true_cfg_scale"),  # SD's guidance_scale is its CFG
    ],
)
def test_what_cannot_run_is_refused_by_name(engine, repo, fields, field):
    request = GenerationRequest(model=repo, **{**CAT, **fields})
    with pytest.raises(EaselError) as caught:
        engine.generate(request)
    named = getattr(caught.value, "field", None) or str(caught.value).split("=")[0].split(":")[0]
    assert named == field, str(caught.value)
    assert "true_cfg_scale" in str(caught.value)


def test_families_whose_guidance_is_real_cfg_point_to_guidance_scale():
    """Qwen-Image, SD 3.5 and Z-Image run real CFG through guidance_scale already: true_cfg_scale is
    refused there, naming it and pointing to guidance_scale (checked before any model loads)."""
    from easel.families import QWEN_IMAGE, SD35_MEDIUM, ZIMAGE_TURBO

    request = GenerationRequest(prompt="a cat", true_cfg_scale=4.0)
    for family in (QWEN_IMAGE, SD35_MEDIUM, ZIMAGE_TURBO):
        with pytest.raises(EaselError, match=r"^true_cfg_scale=4\.0: .*guidance_scale already is real") as e:
            family.check_request(request)
        assert e.value.field == "true_cfg_scale", family.name  # type: ignore[attr-defined]


def test_scales_below_one_and_controlnet_img2img_are_refused():
    from easel.families import FLUX_DEV

    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(prompt="a cat", true_cfg_scale=0.5)
    assert caught.value.field == "true_cfg_scale"
    # diffusers' FLUX ControlNet img2img pipeline has no true_cfg_scale argument
    request = GenerationRequest(
        prompt="a cat", init_image="in.png", true_cfg_scale=2.0, controls=[{"model": "c", "image": "in.png"}]
    )
    with pytest.raises(EaselError, match=r"^true_cfg_scale=2\.0: .*ControlNet img2img") as refused:
        FLUX_DEV.check_request(request)
    assert refused.value.field == "true_cfg_scale"  # type: ignore[attr-defined]


def test_recorded_as_forge_writes_it_read_back_and_replayed(engine, tmp_path):
    """"CFG scale: 3.5" (the real CFG) beside "Distilled CFG Scale: 2.5"; easel's A1111 parameter
    parser reads them back to the same request; replay is byte-identical."""
    from easel.server.native import _fields_from_parameters
    from easel.storage.metadata import parse_parameters, read_metadata

    request = GenerationRequest(
        model=TINY_FLUX_DEV, negative_prompt="blue", true_cfg_scale=3.5, guidance_scale=2.5, **CAT
    )
    result = engine.generate(request)
    parameters = result.parameters()
    assert "Negative prompt: blue\n" in parameters
    assert "CFG scale: 3.5, Seed: 7," in parameters and "Distilled CFG Scale: 2.5," in parameters
    saved = result.save(tmp_path / "true-cfg.png")
    fields = _fields_from_parameters(parse_parameters(read_metadata(saved).parameters or ""))
    read = {name: fields.get(name) for name in ("prompt", "negative_prompt", "steps", "seed", "width",
                                                 "height", "guidance_scale", "true_cfg_scale")}  # fmt: skip
    assert read == {name: getattr(result.request, name) for name in read}
    assert result.request.model_dump()["true_cfg_scale"] == 3.5  # the concrete request records it
    again, index = engine.replay(saved)
    assert index == 0 and again.encode(0) == saved.read_bytes()
    # without real CFG, Forge's "CFG scale: 1" reads back as no true_cfg_scale
    off = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 3.5, Size: 1024x1024"
    assert "true_cfg_scale" not in _fields_from_parameters(parse_parameters(off))


# -- the doors ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(hf_home, flux_models, engine, tmp_path_factory):
    from server_support import server

    with server(tmp_path_factory.mktemp("flux-true-cfg-home"), engine) as client:
        yield client


def test_a1111_cfg_scale_is_flux_real_cfg(client, engine):
    body = {"prompt": "a blue square", "negative_prompt": "red", "steps": 2, "seed": 6, **SMALL,
            "cfg_scale": 3.5, "distilled_cfg_scale": 2.5,
            "override_settings": {"sd_model_checkpoint": TINY_FLUX_DEV}}  # fmt: skip
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert (info["cfg_scale"], info["distilled_cfg_scale"]) == (3.5, 2.5)
    assert "CFG scale: 3.5," in info["infotexts"][0] and "Distilled CFG Scale: 2.5," in info["infotexts"][0]
    direct = engine.generate(
        GenerationRequest(
            model=TINY_FLUX_DEV, prompt="a blue square", prompt_syntax="a1111", negative_prompt="red",
            true_cfg_scale=3.5, guidance_scale=2.5, steps=2, seed=6, **SMALL,
        )
    )  # fmt: skip
    np.testing.assert_array_equal(
        pixels(png(base64.b64decode(answer.json()["images"][0]))), pixels(direct.images[0])
    )
    # a negative prompt at cfg_scale 1 would be ignored: a 422 naming it, saying what to send
    ignored = client.post("/sdapi/v1/txt2img", json={**body, "cfg_scale": 1})
    assert ignored.status_code == 422 and "negative_prompt" in ignored.text and "cfg_scale" in ignored.text
    below = client.post("/sdapi/v1/txt2img", json={**body, "cfg_scale": 0.5})
    assert below.status_code == 422 and "invalid cfg_scale=0.5" in below.text, below.text


def test_native_door_and_the_forms_options(client, engine):
    body = {"model": TINY_FLUX_SCHNELL, "negative_prompt": "green", "true_cfg_scale": 2.0, **CAT}
    record = client.post("/api/v1/generate?include_images=true", json=body).json()
    assert record["status"] == "succeeded", record
    image = png(base64.b64decode(record["images"][0]["b64_png"]))
    parameters = image.text["parameters"]
    assert "CFG scale: 2," in parameters and "Distilled CFG Scale" not in parameters  # schnell: as Forge
    direct = engine.generate(GenerationRequest(**body))
    np.testing.assert_array_equal(pixels(image), pixels(direct.images[0]))
    # the web UI shows its True CFG field where models/info lists the option
    options = {repo: client.get("/api/v1/models/info", params={"model": repo}).json()["options"]
               for repo in (TINY_FLUX_DEV, TINY_FLUX_SCHNELL, TINY_SD15)}  # fmt: skip
    assert options == {TINY_FLUX_DEV: ["true_cfg_scale"], TINY_FLUX_SCHNELL: ["true_cfg_scale"],
                       TINY_SD15: []}  # fmt: skip
    page = client.get("/").text
    assert 'id="true-cfg-fields" hidden' in page and 'id="true-cfg"' in page
    assert '$("true-cfg-fields").hidden = !info.options.includes("true_cfg_scale")' in client.get(
        "/ui/app.js"
    ).text


@pytest.mark.slow  # a subprocess loads torch and diffusers: over 4 s
def test_cli_true_cfg(tmp_path, engine):
    from test_cli import run_easel

    out = tmp_path / "cli.png"
    done = run_easel(
        "generate", "a cat", "-m", TINY_FLUX_DEV, "--negative", "blue", "--true-cfg", "3",
        "--steps", "2", "--seed", "5", "--width", "32", "--height", "32", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    api = engine.generate(
        GenerationRequest(
            model=TINY_FLUX_DEV, prompt="a cat", negative_prompt="blue", true_cfg_scale=3.0, steps=2, seed=5,
            **SMALL,
        )
    )  # fmt: skip
    np.testing.assert_array_equal(pixels(Image.open(out)), pixels(api.images[0]))
    refused = run_easel("generate", "a cat", "-m", TINY_FLUX_DEV, "--negative", "blue", "-o", str(out))
    assert refused.returncode == 2, refused.stderr
    assert "negative" in refused.stderr and "true" in refused.stderr, refused.stderr

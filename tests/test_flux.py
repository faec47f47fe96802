"""FLUX.1 dev and schnell (tiny random models under the real repo ids), offline, against plain
diffusers; the family's defaults and refusals; the doors."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FLUX_DEV, TINY_FLUX_SCHNELL
from PIL import Image

from easel import EaselError, GenerationRequest, InvalidRequest, UnsupportedFeature

SMALL = {"width": 32, "height": 32}  # the tiny models' native size is 256x256
SEQUENCE = {TINY_FLUX_DEV: 512, TINY_FLUX_SCHNELL: 256}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def generators(seed: int, count: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


@pytest.fixture(autouse=True)
def _installed(flux_models):
    """Every test here needs the tiny FLUX.1 models in the HF cache."""


@pytest.fixture(scope="module")
def plain(flux_models):
    """Plain diffusers pipelines for both models, loaded once."""
    from diffusers import FluxPipeline

    pipes = {}
    for repo in (TINY_FLUX_DEV, TINY_FLUX_SCHNELL):
        pipes[repo] = FluxPipeline.from_pretrained(repo)
        pipes[repo].set_progress_bar_config(disable=True)
    return pipes


@pytest.mark.parametrize(
    ("repo", "family", "guidance"),
    [(TINY_FLUX_DEV, "flux1_dev", 5.0), (TINY_FLUX_SCHNELL, "flux1_schnell", None)],
)
def test_text2img_equals_plain_diffusers(engine, plain, repo, family, guidance):
    result = engine.generate(
        GenerationRequest(
            model=repo, prompt="a red cat", steps=3, seed=7, num_images=2, guidance_scale=guidance, **SMALL
        )
    )
    assert result.model_family == family
    check_plain_flux(result, plain[repo], repo, steps=3, seed=7, guidance=guidance)
    # image i is what seed 7 + i gives alone
    alone = engine.generate(
        GenerationRequest(model=repo, prompt="a red cat", steps=3, seed=8, guidance_scale=guidance, **SMALL)
    )
    np.testing.assert_array_equal(pixels(alone.images[0]), pixels(result.images[1]))


def check_plain_flux(
    result, pipe, repo: str, *, steps: int, seed: int, guidance: float | None, **call
) -> None:
    """`result`'s images ("a red cat", SMALL) are what plain `pipe` makes with the same steps, seeds
    (seed + i) and guidance (None: the pipeline's own), and `call` (FLUX's true CFG: test_flux_true_cfg)."""
    expected = pipe(
        "a red cat",
        num_inference_steps=steps,
        num_images_per_prompt=len(result.images),
        generator=generators(seed, len(result.images)),
        max_sequence_length=SEQUENCE[repo],
        **({} if guidance is None else {"guidance_scale": guidance}),
        **call,
        **SMALL,
    ).images
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))


def test_img2img_equals_plain_diffusers(engine, init_png):
    from diffusers import FluxImg2ImgPipeline

    check_img2img(engine, TINY_FLUX_DEV, FluxImg2ImgPipeline, init_png, guidance=3.5)


def check_img2img(
    engine, repo: str, pipeline_class, init_png: Path, *, guidance: float | None = None, **call
) -> None:
    """Image-to-image with `repo` equals plain diffusers' `pipeline_class` at the init image's size
    (FLUX.1 here, SD 3.5 in test_sd3); `call`: more arguments for the plain call (Qwen-Image's
    true_cfg_scale)."""
    result = engine.generate(
        GenerationRequest(
            model=repo, prompt="a blue dog", init_image=str(init_png), strength=0.5, steps=4, seed=3
        )
    )
    assert (result.request.width, result.request.height) == (64, 64)  # the init image's size
    pipe = pipeline_class.from_pretrained(repo)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        "a blue dog",
        image=Image.open(init_png).convert("RGB"),
        strength=0.5,
        num_inference_steps=4,
        **({} if guidance is None else {"guidance_scale": guidance}),
        **call,
        width=64,
        height=64,
        generator=generators(3, 1),
    ).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


def test_dev_defaults_are_recorded_and_replay_is_byte_identical(engine, tmp_path):
    parameters = check_recorded_defaults(engine, TINY_FLUX_DEV, tmp_path, steps=28, guidance=3.5, cfg="1")
    assert "Distilled CFG Scale: 3.5" in parameters


def check_recorded_defaults(
    engine, repo: str, tmp_path: Path, *, steps: int, guidance: float, cfg: str
) -> str:
    """A request to `repo` without steps, guidance or sampler records the family's `steps` and
    `guidance` (and the model's own scheduler), writes `CFG scale: {cfg}`, and replays byte for byte;
    returns the `parameters` text."""
    result = engine.generate(GenerationRequest(model=repo, prompt="a green square", seed=5, **SMALL))
    concrete = result.request
    assert (concrete.steps, concrete.guidance_scale, concrete.scheduler) == (steps, guidance, None)
    parameters = result.parameters()
    sampler = "Sampler: FlowMatchEulerDiscreteScheduler"
    assert f"Steps: {steps}, {sampler}, CFG scale: {cfg}, Seed: 5" in parameters
    original = result.save(tmp_path / "defaults.png")
    again, index = engine.replay(original)
    assert index == 0 and again.encode(0) == original.read_bytes()
    return parameters


def test_schnell_defaults_native_size_and_guidance(engine):
    result = engine.generate(GenerationRequest(model=TINY_FLUX_SCHNELL, prompt="a cat", seed=1))
    concrete = result.request
    # 4 steps, no guidance (recorded as 1), diffusers' native size (128 x the VAE factor: 1024 for the
    # real VAE, 256 for the tiny one)
    assert (concrete.steps, concrete.guidance_scale, concrete.width, concrete.height) == (4, 1.0, 256, 256)
    assert result.images[0].size == (256, 256)
    parameters = result.parameters()
    assert "CFG scale: 1," in parameters and "Distilled CFG Scale" not in parameters
    # the recorded guidance is accepted again (replay), and is the image the default gives
    same = engine.generate(
        GenerationRequest(
            model=TINY_FLUX_SCHNELL, prompt="a cat", seed=1, guidance_scale=1.0, steps=1, **SMALL
        )
    )
    default = engine.generate(
        GenerationRequest(model=TINY_FLUX_SCHNELL, prompt="a cat", seed=1, steps=1, **SMALL)
    )
    np.testing.assert_array_equal(pixels(same.images[0]), pixels(default.images[0]))


@pytest.mark.parametrize(
    ("repo", "fields", "field"),
    [
        (TINY_FLUX_DEV, {"prompt": "a red++ cat"}, "prompt"),  # Compel weighting
        (TINY_FLUX_DEV, {"prompt": "a (red:1.2) cat", "prompt_syntax": "a1111"}, "prompt"),
        (TINY_FLUX_SCHNELL, {"prompt": "a cat BREAK red", "prompt_syntax": "a1111"}, "prompt"),
        (TINY_FLUX_DEV, {"prompt": "a [cat:dog:0.5]", "prompt_syntax": "a1111"}, "prompt"),  # editing
        (TINY_FLUX_DEV, {"negative_prompt": "blue"}, "negative_prompt"),
        (TINY_FLUX_SCHNELL, {"guidance_scale": 3.5}, "guidance_scale"),
        (TINY_FLUX_SCHNELL, {"guidance_scale": 0.0}, "guidance_scale"),
        (TINY_FLUX_DEV, {"clip_skip": 2}, "clip_skip"),
        (TINY_FLUX_DEV, {"hires": {"scale": 2}}, "hires"),
        (TINY_FLUX_DEV, {"variation_strength": 0.3}, "variation_strength"),
        (TINY_FLUX_DEV, {"tiling": True}, "tiling"),
        (TINY_FLUX_DEV, {"scheduler": "Euler"}, "scheduler"),
        (TINY_FLUX_DEV, {"refiner": "stabilityai/stable-diffusion-xl-refiner-1.0"}, "refiner"),
        # an SD 1.5 ControlNet (the demo's): refused from its config (FLUX.1 takes FluxControlNetModel)
        (TINY_FLUX_DEV, {"controls": [{"model": "demo", "image": "x.png"}]}, "controls[0].model"),
    ],
)
def test_what_flux_cannot_do_is_refused_by_name(engine, repo, fields, field):
    check_refused_by_name(engine, repo, fields, field)


def check_refused_by_name(engine, repo: str, fields: dict, field: str) -> None:
    """A small request to `repo` with `fields` is refused with an error naming `field` (its `field`
    attribute, or the message's first word)."""
    request = GenerationRequest(**{"model": repo, "prompt": "a cat", "steps": 2, **SMALL, **fields})
    with pytest.raises(EaselError) as caught:
        engine.generate(request)
    named = getattr(caught.value, "field", None) or str(caught.value).split("=")[0].split(":")[0]
    assert named == field, str(caught.value)


@pytest.fixture(scope="module")
def mask_png(tmp_path_factory) -> Path:
    """64x64: repaint the right half (white), keep the left."""
    path = tmp_path_factory.mktemp("flux-mask") / "mask.png"
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    mask.save(path)
    return path


@pytest.mark.slow  # over 4 s: the quick set stays under 8 minutes
def test_inpaint_equals_plain_diffusers(engine, init_png, mask_png):
    from diffusers import FluxInpaintPipeline

    check_inpaint(engine, TINY_FLUX_DEV, FluxInpaintPipeline, init_png, mask_png, guidance=3.5)


def check_inpaint(
    engine,
    repo: str,
    pipeline_class,
    init_png: Path,
    mask_png: Path,
    *,
    guidance: float | None = None,
    only_masked: bool = True,
    **call,
) -> None:
    """Inpainting `repo` equals plain diffusers' `pipeline_class` (no blur, no paste-back); paste-back
    keeps the unmasked half exactly; only-masked areas work; the latent fills are refused by name
    (FLUX.1 here, SD 3.5 in test_sd3); `call`: more arguments for the plain call. only_masked=False
    leaves out the only-masked run, which works at the native size (Z-Image's 1024: minutes on a CPU)."""
    fields = {"model": repo, "prompt": "a cat", "init_image": str(init_png), "steps": 4, "seed": 2}
    result = engine.generate(
        GenerationRequest(**fields, mask_image=str(mask_png), strength=0.75, mask_blur=0, paste_back=False)
    )
    assert result.request.task == "inpaint"
    pipe = pipeline_class.from_pretrained(repo)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        "a cat",
        image=Image.open(init_png).convert("RGB"),
        mask_image=Image.open(mask_png),
        strength=0.75,
        num_inference_steps=4,
        **({} if guidance is None else {"guidance_scale": guidance}),
        **call,
        width=64,
        height=64,
        generator=generators(2, 1),
    ).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    # with paste-back (the default) the kept half is the original's pixels exactly
    pasted = engine.generate(GenerationRequest(**fields, mask_image=str(mask_png), strength=0.75))
    kept = pixels(pasted.images[0])[:, :16]
    np.testing.assert_array_equal(kept, pixels(Image.open(init_png))[:, :16])
    # only the masked area: worked at the native size (the model's) and pasted back
    if only_masked:
        masked = engine.generate(
            GenerationRequest(**{**fields, "steps": 2}, mask_image=str(mask_png), inpaint_area="masked")
        )
        assert masked.images[0].size == (64, 64)
    with pytest.raises(UnsupportedFeature) as caught:
        engine.generate(GenerationRequest(**fields, mask_image=str(mask_png), masked_content="latent_noise"))
    assert caught.value.field == "masked_content"  # type: ignore[attr-defined]


def test_a_vae_override_equals_plain_diffusers(engine, plain):
    from diffusers import AutoencoderKL, FluxPipeline

    fields = {"model": TINY_FLUX_DEV, "prompt": "a red cat", "seed": 3, "steps": 2, **SMALL}
    result = engine.generate(GenerationRequest(**fields, vae=TINY_FLUX_SCHNELL))  # its repo's vae folder
    assert "VAE: black-forest-labs/FLUX.1-schnell" in result.parameters()
    vae = AutoencoderKL.from_pretrained(TINY_FLUX_SCHNELL, subfolder="vae")
    pipe = FluxPipeline.from_pipe(plain[TINY_FLUX_DEV], vae=vae)
    expected = pipe("a red cat", num_inference_steps=2, generator=generators(3, 1), **SMALL).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


def test_a_lora_equals_plain_diffusers_and_switches_off(plain, tmp_path):
    from diffusers import FluxPipeline
    from safetensors.torch import save_file

    from easel import Easel, Settings
    from easel.testing.tiny_flux import write_tiny_flux_lora

    folder = tmp_path / "loras"
    write_tiny_flux_lora(plain[TINY_FLUX_DEV], folder / "flux-style.safetensors", seed=1)
    sd_key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_{}.weight"
    save_file(
        {sd_key.format("A"): torch.ones(2, 768), sd_key.format("B"): torch.ones(32, 2)},
        folder / "sd.safetensors",
    )
    own = Easel(Settings.from_env(lora_dir=folder, home=tmp_path / "home"))
    fields = {"model": TINY_FLUX_DEV, "prompt": "a red cat", "steps": 2, "seed": 4, **SMALL}
    with_lora = own.generate(GenerationRequest(**fields, loras=[{"name": "flux-style", "weight": 0.8}]))
    assert "Lora hashes: " in with_lora.parameters()

    pipe = FluxPipeline.from_pretrained(TINY_FLUX_DEV)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(folder), weight_name="flux-style.safetensors", adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[0.8])
    expected = pipe("a red cat", num_inference_steps=2, generator=generators(4, 1), **SMALL).images[0]
    np.testing.assert_array_equal(pixels(with_lora.images[0]), pixels(expected))

    without = own.generate(GenerationRequest(**fields))  # the adapter is switched off, not fused
    never = plain[TINY_FLUX_DEV]("a red cat", num_inference_steps=2, generator=generators(4, 1), **SMALL)
    np.testing.assert_array_equal(pixels(without.images[0]), pixels(never.images[0]))
    with pytest.raises(InvalidRequest, match=r"none of sd\.safetensors's layers are in this flux1_dev model"):
        own.generate(GenerationRequest(**fields, loras=[{"name": "sd"}]))


@pytest.mark.parametrize("layout", ["kohya", "xlabs"])
def test_a_shared_layout_lora_equals_plain_diffusers(plain, tmp_path, layout):
    """FLUX LoRAs are mostly shared in kohya-ss's or XLabs' layout (BFL block names, fused q/k/v):
    diffusers converts them as it loads them, through the same adapter mechanism easel drives."""
    from diffusers import FluxPipeline

    from easel import Easel, Settings
    from easel.testing.tiny_flux import write_tiny_shared_flux_lora

    folder = tmp_path / "loras"
    path = folder / f"{layout}.safetensors"
    write_tiny_shared_flux_lora(plain[TINY_FLUX_DEV].transformer, path, layout=layout)
    own = Easel(Settings.from_env(lora_dir=folder, home=tmp_path / "home"))
    prompt = f"a red cat <lora:{layout}:0.9>"
    fields = {"model": TINY_FLUX_DEV, "prompt": prompt, "steps": 2, "seed": 4, **SMALL}
    with_lora = own.generate(GenerationRequest(**fields, prompt_syntax="a1111"))
    pipe = FluxPipeline.from_pretrained(TINY_FLUX_DEV)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(folder), weight_name=f"{layout}.safetensors", adapter_name=layout)
    pipe.set_adapters([layout], adapter_weights=[0.9])
    expected = pipe("a red cat", num_inference_steps=2, generator=generators(4, 1), **SMALL).images[0]
    np.testing.assert_array_equal(pixels(with_lora.images[0]), pixels(expected))
    never = plain[TINY_FLUX_DEV]("a red cat", num_inference_steps=2, generator=generators(4, 1), **SMALL)
    assert not np.array_equal(pixels(never.images[0]), pixels(expected))


def test_sizes_flux_would_shrink_are_refused():
    # diffusers shrinks a size that is no multiple of 2 x the VAE factor (16 for FLUX.1; the tiny VAE's
    # 4 takes every multiple of 8 the request allows), so the hook is asked with the real factor
    from types import SimpleNamespace

    from easel.families.flux import FLUX_DEV

    request = GenerationRequest(model=TINY_FLUX_DEV, prompt="a cat", steps=1, width=1024, height=1000)
    with pytest.raises(InvalidRequest, match=r"^invalid height=1000: .* multiples of 16 .* use 992 or 1008"):
        FLUX_DEV.call_arguments(SimpleNamespace(vae_scale_factor=8), request, None)
    assert FLUX_DEV.call_arguments(
        SimpleNamespace(vae_scale_factor=8), request.model_copy(update={"height": 992}), None
    )


def test_embeddings_are_refused_by_name(tmp_path):
    check_embeddings_refused(tmp_path, TINY_FLUX_DEV)


def check_embeddings_refused(tmp_path: Path, repo: str) -> None:
    """A textual-inversion embedding named in a prompt is refused naming the prompt field."""
    from safetensors.torch import save_file

    from easel import Easel, Settings

    folder = tmp_path / "embeddings"
    folder.mkdir()
    save_file({"emb_params": torch.zeros(1, 32)}, folder / "sparkle.safetensors")
    own = Easel(Settings.from_env(embeddings_dir=folder, home=tmp_path / "home"))
    with pytest.raises(UnsupportedFeature, match=r"^prompt: 'sparkle' is a textual-inversion embedding"):
        own.generate(GenerationRequest(model=repo, prompt="a sparkle cat", steps=1, **SMALL))


def test_token_counts_use_t5_and_long_prompts_warn(engine):
    # T5's window: 256 tokens on schnell, 512 on dev, the end-of-text token counted; no CLIP chunks
    count = engine.count_tokens("a red cat", model=TINY_FLUX_SCHNELL)
    assert (count.tokens, count.chunks, count.capacity, str(count)) == (4, 1, 256, "4/256, 1 chunk")
    long = engine.count_tokens(" ".join(["red"] * 600), model=TINY_FLUX_DEV, syntax="plain")
    assert (long.tokens, long.capacity) == (601, 512)
    result = engine.generate(
        GenerationRequest(model=TINY_FLUX_SCHNELL, prompt=" ".join(["red"] * 300), steps=1, seed=0, **SMALL)
    )
    assert any("301 T5 tokens" in w and "first 256, so 45 are dropped" in w for w in result.warnings)


def test_previews_skip_packed_latents_and_change_nothing(engine):
    request = GenerationRequest(model=TINY_FLUX_SCHNELL, prompt="a cat", steps=3, seed=2, **SMALL)
    seen = []
    with_previews = engine.generate(request, on_progress=seen.append, previews=1)
    assert [(p.step, p.total) for p in seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(p.preview is None for p in seen)  # no preview of FLUX's packed latents, and no failure
    np.testing.assert_array_equal(pixels(with_previews.images[0]), pixels(engine.generate(request).images[0]))


def test_forge_flux_parameters_read_the_distilled_guidance():
    from easel.server.native import _fields_from_parameters
    from easel.storage.metadata import parse_parameters

    text = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 3.5, Size: 1024x1024"
    fields = _fields_from_parameters(parse_parameters(text))
    assert (fields["guidance_scale"], fields["steps"], fields["width"]) == (3.5, 20, 1024)


# -- the doors ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(hf_home, flux_models, engine, tmp_path_factory):
    from server_support import server

    with server(tmp_path_factory.mktemp("flux-server-home"), engine) as client:
        yield client


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_native_job(client, engine):
    check_native_door(client, engine, TINY_FLUX_SCHNELL, family="flux1_schnell", cfg="1", count=(4, 256))


def check_native_door(
    client, engine, repo: str, *, family: str, cfg: str, count: tuple[int, int], **fields
) -> None:
    """A native job with `repo` (and `fields`) gives what the Python API gives, its PNG says
    `CFG scale: {cfg},`; /api/v1/tokens counts "a red cat" as `count` (tokens, window)."""
    body = {"model": repo, "prompt": "a red circle", "steps": 2, "seed": 4, **SMALL, **fields}
    response = client.post("/api/v1/generate?include_images=true", json=body)
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["status"] == "succeeded" and record["result"]["model_family"] == family
    image = png(base64.b64decode(record["images"][0]["b64_png"]))
    assert f"CFG scale: {cfg}," in image.text["parameters"]
    direct = engine.generate(GenerationRequest(**body))
    np.testing.assert_array_equal(pixels(image), pixels(direct.images[0]))
    counted = client.post("/api/v1/tokens", json={"prompt": "a red cat", "model": repo}).json()
    assert (counted["tokens"], counted["capacity"]) == count
    assert counted["text"] == f"{count[0]}/{count[1]}, 1 chunk"


def test_a1111_txt2img_with_the_model_override(client, engine):
    check_a1111_door(client, engine, TINY_FLUX_SCHNELL, cfg="1")


def check_a1111_door(client, engine, repo: str, *, cfg: str, **fields) -> None:
    """A1111 txt2img with override_settings.sd_model_checkpoint=`repo` (and `fields`, easel's names:
    guidance_scale goes as cfg_scale) gives what the Python API gives; a weighted prompt is a 422."""
    a1111 = {"cfg_scale" if name == "guidance_scale" else name: value for name, value in fields.items()}
    body = {
        "prompt": "a blue square",
        "steps": 2,
        "seed": 6,
        **SMALL,
        **a1111,
        "override_settings": {"sd_model_checkpoint": repo},
    }
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    info = json.loads(answer["info"])
    assert info["seed"] == 6 and f"CFG scale: {cfg}," in info["infotexts"][0]
    direct = engine.generate(
        GenerationRequest(
            model=repo, prompt="a blue square", prompt_syntax="a1111", steps=2, seed=6, **SMALL, **fields
        )
    )
    np.testing.assert_array_equal(
        pixels(png(base64.b64decode(answer["images"][0]))), pixels(direct.images[0])
    )
    weighted = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "a (blue:1.3) square"})
    assert weighted.status_code == 422, weighted.text
    assert "weighting" in weighted.text


def test_openai_generations_with_the_model(client, engine):
    check_openai_door(client, engine, TINY_FLUX_SCHNELL)


def check_openai_door(client, engine, repo: str) -> None:
    """OpenAI's images/generations with `repo` as the model gives what the Python API gives."""
    body = {"prompt": "a green triangle", "model": repo, "size": "32x32", "steps": 2, "seed": 9}
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    image = png(base64.b64decode(response.json()["data"][0]["b64_json"]))
    direct = engine.generate(
        GenerationRequest(
            model=repo,
            prompt="a green triangle",
            prompt_syntax="plain",
            steps=2,
            seed=9,
            **SMALL,
        )
    )
    np.testing.assert_array_equal(pixels(image), pixels(direct.images[0]))


@pytest.mark.slow
def test_cli_generate(tmp_path, engine):
    check_cli_door(tmp_path, engine, TINY_FLUX_SCHNELL, ("a (cat:1.2)", "--syntax", "a1111"), "weighting")


def check_cli_door(tmp_path: Path, engine, repo: str, refused_args: tuple[str, ...], says: str) -> None:
    """`easel generate` with `repo` writes what the Python API gives; `refused_args` (a prompt and
    options) exit 2 with `says` in the message."""
    from test_cli import run_easel

    out = tmp_path / "cli.png"
    done = run_easel(
        "generate", "a cat", "-m", repo, "--steps", "2", "--seed", "5",
        "--width", "32", "--height", "32", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    api = engine.generate(GenerationRequest(model=repo, prompt="a cat", steps=2, seed=5, **SMALL))
    np.testing.assert_array_equal(pixels(Image.open(out)), pixels(api.images[0]))
    refused = run_easel("generate", *refused_args, "-m", repo, "-o", str(out))
    assert refused.returncode == 2 and says in refused.stderr, refused.stderr


def test_dtype_auto_is_bfloat16_for_flux_on_a_gpu() -> None:
    """float16 overflows in FLUX's T5 and transformer: "auto" picks bfloat16 on accelerators for
    FLUX, float16 for the UNet families, float32 on the CPU (no GPU needed: the device is set)."""
    import torch

    from easel import Easel, Settings
    from easel.families import FLUX_DEV, FLUX_SCHNELL, SD15

    check_bfloat16_on_a_gpu(FLUX_DEV, FLUX_SCHNELL)
    engine = Easel(Settings(device="cpu"))
    engine._device = "cuda"  # what resolve_device would say on a GPU machine
    assert engine.device_and_dtype(SD15)[1] is torch.float16
    assert Easel(Settings(device="cpu", dtype="float16")).device_and_dtype()[1] is torch.float16


def check_bfloat16_on_a_gpu(*families) -> None:
    """dtype "auto" is bfloat16 for `families` on a GPU and float32 on the CPU (no GPU needed: the
    engine's device is set as resolve_device would set it)."""
    import torch

    from easel import Easel, Settings

    engine = Easel(Settings(device="cpu"))
    engine._device = "cuda"
    for family in families:
        assert engine.device_and_dtype(family)[1] is torch.bfloat16, family.name
        assert Easel(Settings(device="cpu")).device_and_dtype(family)[1] is torch.float32, family.name


def test_a1111_reads_flux_dev_guidance_from_distilled_cfg_scale(client, engine):
    """Forge's fields: FLUX.1-dev's guidance is distilled_cfg_scale (cfg_scale is its real CFG:
    test_flux_true_cfg); distilled_cfg_scale on other models is a 422."""
    body = {"prompt": "a blue square", "steps": 2, "seed": 6, **SMALL,
            "override_settings": {"sd_model_checkpoint": TINY_FLUX_DEV}}  # fmt: skip
    answer = client.post("/sdapi/v1/txt2img", json={**body, "cfg_scale": 1, "distilled_cfg_scale": 2.5})
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert (info["cfg_scale"], info["distilled_cfg_scale"]) == (1.0, 2.5)
    assert "CFG scale: 1," in info["infotexts"][0] and "Distilled CFG Scale: 2.5," in info["infotexts"][0]
    direct = engine.generate(
        GenerationRequest(
            model=TINY_FLUX_DEV, prompt="a blue square", steps=2, seed=6, guidance_scale=2.5, **SMALL
        )
    )
    np.testing.assert_array_equal(
        pixels(png(base64.b64decode(answer.json()["images"][0]))), pixels(direct.images[0])
    )
    other = {
        **body,
        "override_settings": {"sd_model_checkpoint": TINY_FLUX_SCHNELL},
        "distilled_cfg_scale": 3.5,
    }
    refused = client.post("/sdapi/v1/txt2img", json=other)
    assert refused.status_code == 422 and "distilled_cfg_scale=3.5" in refused.text

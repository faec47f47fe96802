"""VAE overrides: parity with plain diffusers given the same VAE (folder, single file, hub id),
the cached base shared and never changed, refusals before loading, records, HTTP and CLI."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FLAGGING, TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from easel import Easel, GenerationRequest, InvalidRequest, Settings, UnsupportedFeature

TINY_HUB_VAE = "stabilityai/sd-vae-ft-mse"  # a VAE repo: config.json at its root


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def generators(seed: int, count: int = 1) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


def tiny_vae(seed: int, **config):
    """An AutoencoderKL shaped like the tiny models' VAE, its weights drawn from `seed`."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    options = dict(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=32,
    )
    return AutoencoderKL(**{**options, **config}).eval()


@pytest.fixture(scope="module")
def vaes(hf_home, tmp_path_factory) -> dict[str, str]:
    """The same tiny VAE as a folder, a single .safetensors file and a hub id in the HF cache;
    and one with 8 latent channels (another latent space) as a folder and a file."""
    from safetensors.torch import save_file

    from easel.testing.tiny_models import install_into_hf_cache

    root = tmp_path_factory.mktemp("vaes")
    vae = tiny_vae(7)
    vae.save_pretrained(root / "my-vae")
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, root / "my_vae.safetensors")
    install_into_hf_cache(vae, hf_home, TINY_HUB_VAE)
    other = tiny_vae(8, latent_channels=8)
    other.save_pretrained(root / "wide-vae")
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, root / "wide_vae.safetensors")
    (root / "vae.ckpt").write_bytes(b"not looked at")
    return {
        "folder": str(root / "my-vae"),
        "file": str(root / "my_vae.safetensors"),
        "hub": TINY_HUB_VAE,
        "wide_folder": str(root / "wide-vae"),
        "wide_file": str(root / "wide_vae.safetensors"),
        "pickle": str(root / "vae.ckpt"),
    }


@pytest.fixture(scope="module")
def plain_with_vae(vaes):
    """Plain diffusers: the tiny SD 1.5 loaded by repo id with vae= the test VAE."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        TINY_SD15, vae=AutoencoderKL.from_pretrained(vaes["folder"])
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("kind", ["folder", "file", "hub"])
def test_vae_override_equals_plain_diffusers_with_that_vae(engine, vaes, plain_with_vae, kind):
    request = GenerationRequest(model=TINY_SD15, vae=vaes[kind], prompt="a red circle", steps=3, seed=5)
    result = engine.generate(request)
    expected = plain_with_vae("a red circle", num_inference_steps=3, generator=generators(5)).images
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected[0]))
    own = engine.generate(request.model_copy(update={"vae": None}))
    assert not np.array_equal(pixels(own.images[0]), pixels(result.images[0]))  # the VAE matters


def test_img2img_encodes_the_init_image_with_the_override(engine, vaes, plain_with_vae, init_png):
    from diffusers import StableDiffusionImg2ImgPipeline

    request = GenerationRequest(
        model=TINY_SD15, vae=vaes["folder"], prompt="a cat", init_image=str(init_png), strength=0.7, steps=4,
        seed=9,
    )  # fmt: skip
    result = engine.generate(request)
    plain = StableDiffusionImg2ImgPipeline.from_pipe(plain_with_vae)
    expected = plain(
        "a cat", image=Image.open(init_png).convert("RGB"), strength=0.7, num_inference_steps=4,
        generator=generators(9),
    ).images  # fmt: skip
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected[0]))


def test_the_cached_base_is_shared_and_never_changed(hf_home, vaes):
    common = dict(model=TINY_SD15, prompt="a red circle", steps=2, seed=3)
    engine = Easel(Settings.from_env())
    before = engine.generate(GenerationRequest(**common))
    (entry,) = engine.cache.loaded()
    base = entry.pipeline
    own_vae = base.vae
    own_weights = {name: tensor.clone() for name, tensor in own_vae.state_dict().items()}
    unet_parameters = list(base.unet.parameters())

    overridden = engine.generate(GenerationRequest(**common, vae=vaes["folder"]))
    after = engine.generate(GenerationRequest(**common))

    assert engine.cache.loaded() == [entry] and entry.pipeline is base  # never reloaded
    (component,) = engine.cache.components()
    assert component.kind == "vae" and component.source.reference == vaes["folder"]
    request = GenerationRequest(**common, vae=vaes["folder"], width=64, height=64)
    pipe = engine.task_pipeline(entry, request, vae=component.module)
    assert pipe.vae is component.module and pipe.unet is base.unet and pipe.text_encoder is base.text_encoder
    assert all(a is b for a, b in zip(pipe.unet.parameters(), unet_parameters, strict=True))
    assert base.vae is own_vae  # the cached base keeps its own VAE, weights unchanged
    for name, tensor in own_vae.state_dict().items():
        assert torch.equal(tensor, own_weights[name])
    assert overridden.encode() != before.encode()
    fresh = Easel(Settings.from_env()).generate(GenerationRequest(**common))
    assert after.encode() == before.encode() == fresh.encode()  # byte-identical PNGs, metadata too
    # the same VAE again is the cached component, not a second load
    engine.generate(GenerationRequest(**common, vae=vaes["folder"]))
    assert engine.cache.components() == [component]


def test_performance_options_reach_the_override_vae(hf_home, vaes):
    engine = Easel(Settings.from_env(vae_slicing=True, vae_tiling=True))
    engine.generate(GenerationRequest(model=TINY_SD15, vae=vaes["hub"], prompt="a", steps=1, seed=1))
    (component,) = engine.cache.components()
    assert component.module.use_slicing and component.module.use_tiling
    (entry,) = engine.cache.loaded()
    assert entry.pipeline.vae.use_slicing and entry.pipeline.vae.use_tiling


@pytest.mark.parametrize("kind", ["wide_folder", "wide_file"])
def test_a_vae_of_another_latent_space_is_refused_before_loading(hf_home, vaes, kind):
    engine = Easel(Settings.from_env())
    with pytest.raises(InvalidRequest, match=r"invalid vae=.*latent_channels 8 vs the model's 4") as caught:
        engine.generate(GenerationRequest(model=TINY_SD15, vae=vaes[kind], prompt="a", steps=1))
    assert caught.value.field == "vae"
    assert len(engine.cache) == 0 and engine.cache.components() == []  # nothing loaded


@pytest.mark.parametrize(
    ("reference", "error", "fragment"),
    [
        ("pickle", InvalidRequest, r"invalid vae=.*pickles"),
        ("./missing/vae.safetensors", Exception, r"vae: VAE file or folder .* does not exist"),
        ("nobody/no-vae", Exception, r"vae: VAE 'nobody/no-vae' is not in the Hugging Face cache"),
        (TINY_SD15 + "/..", InvalidRequest, r"invalid vae="),
    ],
)
def test_bad_vae_references_name_the_field(engine, vaes, reference, error, fragment):
    with pytest.raises(error, match=fragment) as caught:
        engine.generate(GenerationRequest(model=TINY_SD15, vae=vaes.get(reference, reference), prompt="a"))
    assert getattr(caught.value, "field", None) == "vae"


def test_blank_vae_is_refused_at_the_door():
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(prompt="a", vae="  ")
    assert caught.value.field == "vae"


def test_a_pipeline_repo_lends_its_vae_folder(engine, hf_home):
    """A repo id of a whole pipeline means its `vae` folder (the tiny v1-4 VAE is the same as v1-5's)."""
    from easel.models.hashing import sha256_of

    request = GenerationRequest(model=TINY_SD15, vae=TINY_FLAGGING, prompt="a red circle", steps=2, seed=2)
    result = engine.generate(request)
    own = engine.generate(request.model_copy(update={"vae": None}))
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(own.images[0]))
    snapshot = next((hf_home / "hub" / "models--CompVis--stable-diffusion-v1-4" / "snapshots").iterdir())
    assert result.model_hashes["vae"] == sha256_of(snapshot / "vae" / "diffusion_pytorch_model.safetensors")


def test_kandinsky_refuses_a_vae_override(engine, kandinsky_models, vaes):
    from conftest import TINY_KANDINSKY

    with pytest.raises(UnsupportedFeature, match=r"vae: .*MoVQ") as caught:
        engine.generate(GenerationRequest(model=TINY_KANDINSKY, vae=vaes["hub"], prompt="a", steps=2))
    assert caught.value.field == "vae"  # type: ignore[attr-defined]


def test_sdxl_hand_off_decodes_with_the_override(engine, sdxl_models, vaes):
    """The refiner decodes the final latents: with a VAE override, with that VAE."""
    from diffusers import AutoencoderKL, AutoPipelineForImage2Image, AutoPipelineForText2Image

    request = GenerationRequest(
        model=TINY_SDXL, refiner=TINY_SDXL_REFINER, refiner_at=0.6, vae=vaes["hub"], prompt="a red cat",
        steps=4, seed=4,
    )  # fmt: skip
    result = engine.generate(request)
    vae = AutoencoderKL.from_pretrained(TINY_HUB_VAE)
    base = AutoPipelineForText2Image.from_pretrained(TINY_SDXL, vae=vae)
    base.set_progress_bar_config(disable=True)
    refiner = AutoPipelineForImage2Image.from_pretrained(
        TINY_SDXL_REFINER, vae=vae, text_encoder_2=base.text_encoder_2
    )
    refiner.set_progress_bar_config(disable=True)
    shared = generators(4)
    latents = base(
        "a red cat", num_inference_steps=4, denoising_end=0.6, output_type="latent", generator=shared
    ).images
    expected = refiner(
        "a red cat", num_inference_steps=4, denoising_start=0.6, image=latents, generator=shared
    ).images
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected[0]))


def test_records_name_and_hash_the_vae_and_replay(engine, vaes, tmp_path):
    from easel.models.hashing import sha256_of
    from easel.storage.metadata import read_metadata

    result = engine.generate(
        GenerationRequest(model=TINY_SD15, vae=vaes["file"], prompt="a", steps=2, seed=8)
    )
    digest = sha256_of(Path(vaes["file"]))
    assert result.model_hashes["vae"] == digest
    parameters = result.parameters()
    assert f"Model: stable-diffusion-v1-5, VAE hash: {digest[:10]}, VAE: my_vae.safetensors" in parameters
    path = result.save(tmp_path / "with-vae.png")
    metadata = read_metadata(path)
    assert metadata.document["request"]["vae"] == vaes["file"]
    assert metadata.document["model"]["hashes"]["vae"] == digest
    assert metadata.parsed_parameters()["settings"]["VAE hash"] == digest[:10]
    again, index = engine.replay(path)
    assert again.encode(index) == path.read_bytes()

    hub = engine.generate(GenerationRequest(model=TINY_SD15, vae=TINY_HUB_VAE, prompt="a", steps=1, seed=1))
    assert re.search(rf"VAE hash: [0-9a-f]{{10}}, VAE: {TINY_HUB_VAE}(,|$)", hub.parameters())
    plain = engine.generate(GenerationRequest(model=TINY_SD15, prompt="a", steps=1, seed=1))
    assert "VAE" not in plain.parameters() and "vae" not in plain.model_hashes


# -- HTTP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(hf_home, engine, vaes, tmp_path_factory):
    from server_support import server

    with server(tmp_path_factory.mktemp("vae-server"), engine) as client:
        yield client


def test_a1111_lists_vaes_and_honours_sd_vae(client, engine, vaes):
    listed = client.get("/sdapi/v1/sd-vae").json()
    assert {"model_name": TINY_HUB_VAE, "filename": TINY_HUB_VAE} in listed
    assert TINY_SD15 not in [entry["model_name"] for entry in listed]  # pipelines are not VAEs
    assert client.get("/api/v1/vaes").json() == [entry["model_name"] for entry in listed]

    body = {
        "prompt": "a red circle",
        "steps": 2,
        "seed": 6,
        "override_settings": {"sd_model_checkpoint": TINY_SD15},
    }
    with_vae = {**body, "override_settings": {**body["override_settings"], "sd_vae": "sd-vae-ft-mse"}}
    answer = client.post("/sdapi/v1/txt2img", json=with_vae)
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert info["sd_vae_name"] == TINY_HUB_VAE and len(info["sd_vae_hash"]) == 10
    assert f"VAE: {TINY_HUB_VAE}" in info["infotexts"][0]
    expected = engine.generate(GenerationRequest(model=TINY_SD15, vae=TINY_HUB_VAE, prompt="a red circle",
                                                 prompt_syntax="a1111", steps=2, seed=6))  # fmt: skip
    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    np.testing.assert_array_equal(pixels(image), pixels(expected.images[0]))

    # the option, then "Automatic" again: the model's own VAE
    assert client.post("/sdapi/v1/options", json={"sd_vae": TINY_HUB_VAE}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == TINY_HUB_VAE
    info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["sd_vae_name"] == TINY_HUB_VAE
    assert client.post("/sdapi/v1/options", json={"sd_vae": "Automatic"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == "Automatic"
    info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["sd_vae_name"] is None and "VAE" not in info["infotexts"][0]


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/sdapi/v1/options", {"sd_vae": "sdxl_vae.safetensors"}, "sd_vae"),
        (
            "/sdapi/v1/txt2img",
            {"prompt": "a", "override_settings": {"sd_vae": "nope"}},
            "override_settings.sd_vae",
        ),
        (
            "/sdapi/v1/txt2img",
            {"prompt": "a", "override_settings": {"sd_vae": 3}},
            "override_settings.sd_vae",
        ),
        ("/api/v1/jobs", {"prompt": "a", "vae": "/etc/vae.safetensors"}, "vae"),
        ("/api/v1/jobs", {"prompt": "a", "vae": "../vaes/mine"}, "vae"),
    ],
)
def test_unknown_vae_names_and_local_paths_are_refused_over_http(client, vaes, route, body, field):
    response = client.post(route, json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert (error.get("field") or (error.get("error") or {}).get("field")) == field
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == "Automatic"  # unchanged


def test_native_job_with_a_hub_vae_and_png_info_maps_it_back(client, vaes):
    done = client.post(
        "/api/v1/generate", json={"model": TINY_SD15, "vae": TINY_HUB_VAE, "prompt": "a", "steps": 1}
    )
    assert done.status_code == 200, done.text
    record = done.json()
    assert record["result"]["request"]["vae"] == TINY_HUB_VAE and "vae" in record["result"]["model_hashes"]
    png = client.get(record["images"][0]["url"]).content
    image = Image.open(io.BytesIO(png))
    # A1111 parameters alone (another tool's image): VAE maps back only when the server can name it
    for name, mapped in ((TINY_HUB_VAE, TINY_HUB_VAE), ("sdxl_vae.safetensors", None)):
        parameters = image.text["parameters"].replace(f"VAE: {TINY_HUB_VAE}", f"VAE: {name}")
        buffer = io.BytesIO()
        info = PngInfo()
        info.add_text("parameters", parameters)
        image.save(buffer, format="PNG", pnginfo=info)
        data = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        fields = client.post("/api/v1/png-info", json={"image": data}).json()["request"]
        assert fields.get("vae") == mapped


# -- CLI ----------------------------------------------------------------------------------------


@pytest.mark.slow  # CLI processes
def test_cli_vae_flag(hf_home, vaes, tmp_path, engine):
    from test_cli import run_easel

    bad = run_easel("generate", "a", "-m", TINY_SD15, "--vae", str(tmp_path / "missing.safetensors"))
    assert bad.returncode == 2 and "--vae" in bad.stderr and "does not exist" in bad.stderr, bad.stderr
    wide = run_easel("generate", "a", "-m", TINY_SD15, "--vae", vaes["wide_folder"])
    assert wide.returncode == 2 and "invalid --vae=" in wide.stderr, wide.stderr
    done = run_easel(
        "generate", "a red circle", "-m", TINY_SD15, "--vae", vaes["folder"], "--steps", "2", "--seed", "5",
        "--json", "--no-gallery", "-o", str(tmp_path / "out.png"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["request"]["vae"] == vaes["folder"]
    api = engine.generate(
        GenerationRequest(model=TINY_SD15, vae=vaes["folder"], prompt="a red circle", steps=2, seed=5)
    )
    np.testing.assert_array_equal(pixels(Image.open(tmp_path / "out.png")), pixels(api.images[0]))

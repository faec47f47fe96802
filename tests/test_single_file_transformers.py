"""FLUX.1 / SD 3.5 transformer-only .safetensors files (BFL's flux1-dev.safetensors, ComfyUI's
diffusion_models) load like GGUF files (easel.models.quantize): the transformer from the file, the
rest of the pipeline from base_model (given, else inferred from the tensor names and recorded).

The tiny files carry diffusers' names (tiny_gguf's notes: diffusers' BFL-name converter hard-codes
FLUX.1's width 3072); BFL-named files hold tensor names only, for detection and base inference."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FLUX_DEV, TINY_FLUX_SCHNELL, TINY_SD35_MEDIUM
from test_quantize import FAST, pixels

from easel import GenerationRequest, InvalidRequest, UnsupportedFeature


@pytest.fixture(scope="module")
def repo_image(engine, flux_models) -> np.ndarray:
    """The tiny FLUX.1-dev repo model's image, which its transformer as a file must give again."""
    return pixels(engine.generate(GenerationRequest(model=TINY_FLUX_DEV, **FAST)).images[0])


@pytest.fixture(scope="module")
def files(flux_models, tmp_path_factory) -> dict[str, Path]:
    """The tiny FLUX.1-dev transformer as single .safetensors files: float32, and stored as float8
    (e4m3fn, as the "fp8" files on ComfyUI's pages are)."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    weights = FluxTransformer2DModel.from_pretrained(TINY_FLUX_DEV, subfolder="transformer").state_dict()
    folder = tmp_path_factory.mktemp("transformers")
    fp8 = {name: w.to(torch.float8_e4m3fn) if w.ndim == 2 else w for name, w in weights.items()}
    save_file({k: v.contiguous() for k, v in weights.items()}, folder / "tiny-flux.safetensors")
    save_file({k: v.contiguous() for k, v in fp8.items()}, folder / "tiny-flux-fp8.safetensors")
    return {"float32": folder / "tiny-flux.safetensors", "fp8": folder / "tiny-flux-fp8.safetensors"}


def _loaded(engine, reference: str):
    for entry in engine.cache.loaded():
        if entry.source.reference == reference:
            return entry
    raise AssertionError(f"{reference} not loaded")


def test_a_transformer_file_gives_the_repo_models_pixels_and_replays(engine, files, repo_image, tmp_path):
    from easel.models.hashing import sha256_of

    path = str(files["float32"])
    result = engine.generate(GenerationRequest(model=path, base_model=TINY_FLUX_DEV, **FAST))
    assert result.model_family == "flux1_dev"
    assert (result.request.model, result.request.base_model) == (path, TINY_FLUX_DEV)
    np.testing.assert_array_equal(pixels(result.images[0]), repo_image)
    entry = _loaded(engine, path)
    assert entry.source.kind == "transformer" and entry.source.base.reference == TINY_FLUX_DEV
    assert result.model_hashes["base"] == sha256_of(files["float32"])  # the file's, as A1111 / Forge show
    saved = result.save(tmp_path / "file.png")
    again, index = engine.replay(saved)
    assert index == 0 and again.encode(0) == saved.read_bytes()


def test_an_fp8_stored_file_is_upcast_to_the_runs_dtype(engine, files, repo_image):
    path = str(files["fp8"])
    result = engine.generate(GenerationRequest(model=path, base_model=TINY_FLUX_DEV, **FAST))
    transformer = _loaded(engine, path).pipeline.transformer
    assert {p.dtype for p in transformer.parameters()} == {torch.float32}
    difference = np.abs(pixels(result.images[0]) - repo_image)
    # fp8 weights (3 mantissa bits) change the picture a little: measured at most 6 levels of 255 apart,
    # 0.93 on average (3 steps, 32x32, seed 7)
    assert difference.any() and difference.max() <= 16 and difference.mean() < 3, (
        difference.max(),
        difference.mean(),
    )


def _names_only(path: Path, tensors: dict[str, torch.Tensor], prefix: str = "") -> str:
    from safetensors.torch import save_file

    save_file({prefix + name: tensor for name, tensor in tensors.items()}, path)
    return str(path)


def test_bfl_and_comfyui_names_are_recognised_and_say_their_base(tmp_path):
    from easel.models.quantize import as_transformer_file, infer_transformer_base
    from easel.models.reference import ModelSource
    from easel.testing.tiny_gguf import bfl_names

    dev = _names_only(tmp_path / "flux1-dev.safetensors", bfl_names(dev=True))
    comfy = _names_only(tmp_path / "comfy.safetensors", bfl_names(dev=False), "model.diffusion_model.")
    sd35 = _names_only(
        tmp_path / "sd3.5_large.safetensors", {"joint_blocks.37.x_block.mlp.fc1.weight": torch.zeros(2)}
    )
    assert infer_transformer_base(dev) == TINY_FLUX_DEV
    assert infer_transformer_base(comfy) == TINY_FLUX_SCHNELL
    assert infer_transformer_base(sd35) == "stabilityai/stable-diffusion-3.5-large"
    for path in (dev, comfy, sd35):
        assert as_transformer_file(ModelSource("single_file", path, path)).kind == "transformer"


AURAFLOW = ("double_layers.0.attn.w2q.weight", "double_layers.0.attn.w1q.weight", "cond_seq_linear.weight",
            "t_embedder.mlp.0.weight")  # fmt: skip


def test_what_cannot_load_is_refused_naming_model(engine, tmp_path):
    from easel.testing.tiny_gguf import bfl_names

    all_in_one = {"model.diffusion_model." + name: t for name, t in bfl_names(dev=True).items()}
    all_in_one["vae.encoder.conv_in.weight"] = torch.zeros(2)  # ComfyUI's checkpoints: the VAE beside
    refused = {
        _names_only(tmp_path / "aio.safetensors", all_in_one): "all-in-one",
        _names_only(tmp_path / "fill.safetensors", bfl_names(dev=True, in_channels=384)): "'flux-fill'",
        _names_only(tmp_path / "aura.safetensors", {name: torch.zeros(2) for name in AURAFLOW}): "'auraflow'",
    }
    for path, says in refused.items():
        with pytest.raises(
            UnsupportedFeature, match=rf"model='{re.escape(path)}'.*{says}.*(what loads|use its)"
        ) as caught:
            engine.generate(GenerationRequest(model=path, **FAST))
        assert caught.value.field == "model" and "FLUX.1 or SD 3.5 transformer file" in str(caught.value)


def test_diffusers_names_need_a_base(engine, files):
    with pytest.raises(InvalidRequest, match="base_model") as caught:
        engine.generate(GenerationRequest(model=str(files["float32"]), **FAST))
    assert caught.value.field == "base_model"


def test_quantize_is_refused_for_a_safetensors_file_before_loading(engine, files, monkeypatch):
    """diffusers' from_single_file takes any quantization_config for pre-quantised weights (torchao's
    left the float weights as they were, measured): refused naming quantize, before loading."""
    from easel.models import cache

    def load(*args, **kwargs):
        raise AssertionError("refused only after loading")

    monkeypatch.setattr(cache, "_load", load)
    request = GenerationRequest(
        model=str(files["float32"]), base_model=TINY_FLUX_DEV, quantize="torchao-int8", **FAST
    )
    with pytest.raises(UnsupportedFeature, match=r"quantize='torchao-int8'.*GGUF file") as caught:
        engine.generate(request)
    assert caught.value.field == "quantize"


@pytest.mark.slow
def test_the_cli_loads_a_transformer_file_with_base(files, tmp_path, hf_home):
    from typer.testing import CliRunner

    from easel.cli import app

    env = {"EASEL_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    out = tmp_path / "out.png"
    args = [
        "generate",
        "a red cat",
        "--no-gallery",
        "--steps",
        "2",
        "--width",
        "32",
        "--height",
        "32",
        "-o",
        str(out),
    ]
    done = CliRunner().invoke(app, [*args, "-m", str(files["float32"]), "--base", TINY_FLUX_DEV], env=env)
    assert done.exit_code == 0 and out.is_file(), done.output
    done = CliRunner().invoke(app, [*args, "-m", str(files["float32"])], env=env)
    assert done.exit_code == 2 and "--base" in done.output, done.output
    counted = CliRunner().invoke(
        app, ["tokens", "a red cat", "-m", str(files["float32"]), "--base", TINY_FLUX_DEV, "--json"], env=env
    )
    assert counted.exit_code == 0 and '"tokens"' in counted.output, counted.output


def test_tokens_are_counted_with_the_base_models_tokenizer(engine, files):
    """A transformer file has no tokenizer of its own: easel tokens counts with its base model's
    (given as base_model, or inferred from BFL tensor names), and says which base is missing."""
    path = str(files["float32"])
    from_file = engine.count_tokens("a red cat on a mat", model=path, base_model=TINY_FLUX_DEV)
    from_repo = engine.count_tokens("a red cat on a mat", model=TINY_FLUX_DEV)
    assert (from_file.tokens, from_file.capacity) == (from_repo.tokens, from_repo.capacity)
    with pytest.raises(InvalidRequest, match="base_model") as refused:
        engine.count_tokens("a red cat", model=path)  # diffusers' tensor names: no base to infer
    assert refused.value.field == "base_model"


def test_http_refuses_a_transformer_file_like_any_local_path(engine, files):
    """The native and A1111 doors take listed titles and hub ids only: a transformer file is a local
    path on the server, refused naming model (422), as a GGUF file is."""
    from easel.server.policy import DoorPolicy

    request = GenerationRequest(model=str(files["float32"]), base_model=TINY_FLUX_DEV, **FAST)
    with pytest.raises(InvalidRequest, match="local paths are not accepted over HTTP") as caught:
        DoorPolicy(engine.settings).check(request)
    assert caught.value.field == "model"


def test_an_sd35_transformer_file_gives_the_repo_models_pixels(engine, sd3_models, tmp_path):
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import save_file

    weights = SD3Transformer2DModel.from_pretrained(TINY_SD35_MEDIUM, subfolder="transformer").state_dict()
    path = tmp_path / "sd3.5_medium.safetensors"
    save_file({name: weight.contiguous() for name, weight in weights.items()}, path)
    plain = engine.generate(GenerationRequest(model=TINY_SD35_MEDIUM, **FAST))
    result = engine.generate(GenerationRequest(model=str(path), base_model=TINY_SD35_MEDIUM, **FAST))
    assert result.model_family == "sd35_medium" and result.request.base_model == TINY_SD35_MEDIUM
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(plain.images[0]))

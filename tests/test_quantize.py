"""Quantised loading (issue 20, easel.models.quantize): `quantize` through diffusers' quantization
backends (torchao int8 on the CPU here; bitsandbytes and fp8 refused on it) and GGUF transformer
files (Q8_0 and F32, written from the tiny FLUX.1-dev transformer), through the Python API, the
CLI and the native HTTP door."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FLUX_DEV, TINY_FLUX_SCHNELL, TINY_SD35_MEDIUM
from PIL import Image

from easel import Easel, GenerationRequest, InvalidRequest, UnsupportedFeature

FAST = {"prompt": "a red cat", "steps": 3, "seed": 7, "width": 32, "height": 32}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(autouse=True)
def _installed(flux_models):
    """Every test here needs the tiny FLUX.1 models in the HF cache."""


@pytest.fixture(scope="module")
def float_image(engine) -> np.ndarray:
    return pixels(engine.generate(GenerationRequest(model=TINY_FLUX_DEV, **FAST)).images[0])


def _linear_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Linear)]


def _quantized(engine, reference: str):
    """The cached pipeline of `reference` whose transformer is quantised."""
    for entry in engine.cache.loaded():
        if entry.source.reference == reference and getattr(entry.pipeline.transformer, "is_quantized", False):
            return entry.pipeline
    raise AssertionError(f"no quantised {reference} loaded")


# -- quantize: torchao int8 --------------------------------------------------------------------


def test_torchao_int8_quantises_the_transformer_and_t5_and_is_recorded(engine, float_image, tmp_path):
    result = engine.generate(GenerationRequest(model=TINY_FLUX_DEV, quantize="torchao-int8", **FAST))
    assert result.request.quantize == "torchao-int8"  # recorded: a replay loads it the same way
    quantized = _quantized(engine, TINY_FLUX_DEV)
    for name in ("transformer", "text_encoder_2"):  # the denoiser and T5; CLIP stays as it is
        weights = _linear_weights(getattr(quantized, name))
        assert weights and all(type(w).__module__.startswith("torchao") for w in weights), name
    assert not any(type(w).__module__.startswith("torchao") for w in _linear_weights(quantized.text_encoder))
    image = pixels(result.images[0])
    difference = np.abs(image - float_image)
    # measured: at most 1 level of 255 apart, 0.16 on average (3 steps, 32x32, seed 7)
    assert difference.max() <= 4 and difference.any(), (difference.max(), difference.mean())
    saved = result.save(tmp_path / "int8.png")
    again, index = engine.replay(saved)
    assert index == 0 and again.encode(0) == saved.read_bytes()


def test_the_settings_default_applies_and_replay_keeps_what_ran(engine, float_image, tmp_path):
    """EASEL_QUANTIZE (the server's --quantize) applies to requests that leave quantize out; an image
    made unquantised records quantize None and replays unquantised under that default too."""
    plain = engine.generate(GenerationRequest(model=TINY_FLUX_DEV, **FAST))
    assert plain.request.quantize is None
    saved = plain.save(tmp_path / "plain.png")
    quantizing = Easel(replace(engine.settings, quantize="torchao-int8"), cache=engine.cache)
    defaulted = quantizing.generate(GenerationRequest(model=TINY_FLUX_DEV, **FAST))
    assert defaulted.request.quantize == "torchao-int8"
    again, _ = quantizing.replay(saved)
    assert again.request.quantize is None and again.encode(0) == saved.read_bytes()
    explicit = quantizing.generate(GenerationRequest(model=TINY_FLUX_DEV, quantize="none", **FAST))
    np.testing.assert_array_equal(pixels(explicit.images[0]), float_image)


# -- quantize: refusals, before anything loads --------------------------------------------------


def test_an_unknown_value_is_refused_naming_quantize():
    with pytest.raises(InvalidRequest, match=r"quantize='int4'.*torchao-int8") as caught:
        GenerationRequest(prompt="a cat", quantize="int4")
    assert caught.value.field == "quantize"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("torchao-fp8", "needs a CUDA GPU with compute capability >= 8.9"),
        ("int8", "bitsandbytes LLM.int8() 8-bit weights) needs a CUDA GPU"),
        ("nf4", "needs a CUDA GPU"),
    ],
)
def test_what_the_cpu_cannot_run_is_refused_before_loading(engine, value, says, monkeypatch):
    from easel.models import cache

    def load(*args, **kwargs):
        raise AssertionError("refused only after loading")

    monkeypatch.setattr(cache, "_load", load)
    with pytest.raises(UnsupportedFeature, match=rf"quantize='{value}'") as caught:
        engine.generate(GenerationRequest(model=TINY_FLUX_SCHNELL, quantize=value, **FAST))
    assert says in str(caught.value) and caught.value.field == "quantize"


def test_a_missing_backend_package_is_refused_with_the_pip_command(engine, monkeypatch):
    from easel.models import quantize

    monkeypatch.setattr(quantize, "package_available", lambda package: package != "torchao")
    with pytest.raises(UnsupportedFeature, match=r"quantize='torchao-int8'.*pip install torchao"):
        engine.generate(GenerationRequest(model=TINY_FLUX_DEV, quantize="torchao-int8", **FAST))


def test_a_single_checkpoint_file_cannot_be_quantised(tmp_path):
    from easel.models.quantize import check_quantize
    from easel.models.reference import ModelSource

    source = ModelSource("single_file", "model.safetensors", str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsupportedFeature, match=r"quantize='torchao-int8'.*single checkpoint file"):
        check_quantize("torchao-int8", "cpu", source)


# -- GGUF transformer files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_files(flux_models, tmp_path_factory) -> dict[str, Path]:
    """The tiny FLUX.1-dev transformer as GGUF files: Q8_0 (2-D weights whose rows are a multiple of
    32; the rest F32) and all F32."""
    from diffusers import FluxTransformer2DModel

    from easel.testing.tiny_gguf import write_gguf

    weights = FluxTransformer2DModel.from_pretrained(TINY_FLUX_DEV, subfolder="transformer").state_dict()
    folder = tmp_path_factory.mktemp("gguf")
    return {
        kind: write_gguf(weights, folder / f"tiny-flux-{kind}.gguf", quantization=kind)
        for kind in ("Q8_0", "F32")
    }


def test_a_q8_gguf_transformer_loads_quantised_and_is_close(engine, gguf_files, float_image, tmp_path):
    from diffusers.quantizers.gguf.utils import GGUFParameter

    path = str(gguf_files["Q8_0"])
    result = engine.generate(GenerationRequest(model=path, base_model=TINY_FLUX_DEV, **FAST))
    assert result.model_family == "flux1_dev"
    assert (result.request.model, result.request.base_model) == (path, TINY_FLUX_DEV)
    pipe = _quantized(engine, path)
    attention = pipe.transformer.transformer_blocks[0].attn
    assert all(isinstance(w, GGUFParameter) for w in (attention.to_q.weight, attention.to_out[0].weight))
    difference = np.abs(pixels(result.images[0]) - float_image)
    # measured: at most 1 level of 255 apart, 0.09 on average (3 steps, 32x32, seed 7)
    assert difference.max() <= 4 and difference.any(), (difference.max(), difference.mean())
    saved = result.save(tmp_path / "q8.png")
    again, _ = engine.replay(saved)
    assert again.encode(0) == saved.read_bytes()


def test_an_f32_gguf_transformer_gives_the_repo_models_pixels(engine, gguf_files, float_image):
    request = GenerationRequest(model=str(gguf_files["F32"]), base_model=TINY_FLUX_DEV, **FAST)
    result = engine.generate(request)
    np.testing.assert_array_equal(pixels(result.images[0]), float_image)


def test_the_base_is_inferred_from_bfl_tensor_names_or_asked_for(engine, gguf_files, tmp_path):
    from easel.models.quantize import infer_transformer_base
    from easel.testing.tiny_gguf import write_bfl_names

    assert infer_transformer_base(str(write_bfl_names(tmp_path / "dev.gguf", dev=True))) == TINY_FLUX_DEV
    schnell = write_bfl_names(tmp_path / "schnell.gguf", dev=False)
    assert infer_transformer_base(str(schnell)) == TINY_FLUX_SCHNELL
    # diffusers' own names (the tiny files) say no model: the request must name its base
    with pytest.raises(InvalidRequest, match="base_model") as caught:
        engine.generate(GenerationRequest(model=str(gguf_files["F32"]), **FAST))
    assert caught.value.field == "base_model"
    with pytest.raises(InvalidRequest, match=r"base_model='black-forest-labs/FLUX.1-dev'.*not a \.gguf"):
        engine.generate(GenerationRequest(model=TINY_FLUX_SCHNELL, base_model=TINY_FLUX_DEV, **FAST))


# -- the doors -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(hf_home, flux_models, engine, tmp_path_factory):
    from server_support import server

    with server(tmp_path_factory.mktemp("quantize-server-home"), engine) as client:
        yield client


def test_native_jobs_carry_quantize_and_refuse_what_cannot_run(client, engine):
    import base64
    import io

    body = {"model": TINY_FLUX_DEV, **FAST, "quantize": "torchao-int8"}
    response = client.post("/api/v1/generate?include_images=true", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["request"]["quantize"] == "torchao-int8"
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]["b64_png"])))
    direct = engine.generate(GenerationRequest(**body))
    np.testing.assert_array_equal(pixels(image), pixels(direct.images[0]))
    for fields, says in (
        ({"quantize": "torchao-fp8"}, "quantize='torchao-fp8'"),
        ({"quantize": "int4"}, "quantize"),
        ({"model": "/models/flux1-dev-Q4_K_S.gguf"}, "local paths are not accepted"),
        ({"base_model": "/models/FLUX.1-dev"}, "base_model"),
    ):
        refused = client.post("/api/v1/generate", json={**body, **fields})
        assert refused.status_code == 422 and says in refused.text, refused.text


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--quantize", "int4"], "--quantize"),
        (["--quantize", "torchao-fp8", "-m", TINY_FLUX_SCHNELL], "quantize='torchao-fp8'"),
        (["--base", TINY_FLUX_DEV, "-m", TINY_FLUX_SCHNELL], "invalid --base="),
    ],
)
def test_the_cli_refuses_with_exit_2(args, says, tmp_path, hf_home):
    from typer.testing import CliRunner

    from easel.cli import app

    env = {"EASEL_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    done = CliRunner().invoke(app, ["generate", "a cat", "--no-gallery", *args], env=env)
    assert done.exit_code == 2 and says in done.output, done.output


def test_sd35_gguf_and_torchao_int8(engine, sd3_models, tmp_path):
    """SD 3.5 Medium's transformer (SD3Transformer2DModel) as a Q8_0 GGUF file, and torchao int8:
    measured 1 level of 255 from the float32 image at most (0.10 and 0.12 on average)."""
    from diffusers import SD3Transformer2DModel
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from easel.testing.tiny_gguf import write_gguf

    weights = SD3Transformer2DModel.from_pretrained(TINY_SD35_MEDIUM, subfolder="transformer").state_dict()
    path = str(write_gguf(weights, tmp_path / "tiny-sd35.gguf", arch="sd3"))
    plain = pixels(engine.generate(GenerationRequest(model=TINY_SD35_MEDIUM, **FAST)).images[0])
    for fields in (
        {"model": path, "base_model": TINY_SD35_MEDIUM},
        {"model": TINY_SD35_MEDIUM, "quantize": "torchao-int8"},
    ):
        result = engine.generate(GenerationRequest(**fields, **FAST))
        assert result.model_family == "sd35_medium"
        difference = np.abs(pixels(result.images[0]) - plain)
        assert difference.max() <= 4 and difference.any(), (fields, difference.max(), difference.mean())
    attention = _quantized(engine, path).transformer.transformer_blocks[0].attn
    assert isinstance(attention.to_q.weight, GGUFParameter)


def test_the_server_option_is_checked_before_serving(tmp_path):
    """`easel serve --quantize` (EASEL_QUANTIZE) sets the default of every door's jobs; a value it
    does not know stops the server before it binds, naming quantize."""
    from typer.testing import CliRunner

    from easel.cli import app

    env = {"EASEL_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    done = CliRunner().invoke(app, ["serve", "--quantize", "int4", "--port", "1"], env=env)
    assert done.exit_code == 2 and "quantize='int4'" in done.output, done.output

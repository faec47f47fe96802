"""Speed/memory options: each is applied for real, invalid combinations are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_SD15

from easel import Easel, GenerationRequest, InvalidRequest, Settings, UnsupportedFeature
from easel.config import PerformanceOptions
from easel.models.optimizations import check_options, prepare_task, variant_for


def generate_with(**options):
    engine = Easel(Settings.from_env(**options))
    result = engine.generate(GenerationRequest(model=TINY_SD15, prompt="a red circle", steps=2, seed=3))
    (loaded,) = engine.cache.loaded()
    return result, loaded.pipeline


def assert_valid(result):
    pixels = np.asarray(result.images[0])
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0


def test_default_is_sdpa_attention(hf_home):
    from diffusers.models.attention_processor import AttnProcessor2_0

    result, pipe = generate_with()
    assert_valid(result)
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())
    assert not pipe.vae.use_slicing and not pipe.vae.use_tiling


def test_attention_slicing_vae_slicing_tiling_channels_last(hf_home):
    from diffusers.models.attention_processor import SlicedAttnProcessor

    result, pipe = generate_with(attention="slicing", vae_slicing=True, channels_last=True)
    assert_valid(result)
    assert all(isinstance(p, SlicedAttnProcessor) for p in pipe.unet.attn_processors.values())
    assert pipe.vae.use_slicing and not pipe.vae.use_tiling
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    plain, _ = generate_with()
    # these options change how memory is used, not the maths: same picture within float noise
    difference = np.abs(np.asarray(result.images[0], int) - np.asarray(plain.images[0], int))
    assert difference.max() <= 2
    # tiling decodes overlapping tiles and blends the seams: a valid, slightly different picture
    tiled, pipe = generate_with(vae_tiling=True)
    assert pipe.vae.use_tiling
    assert_valid(tiled)


@pytest.mark.slow  # torch.compile on the CPU: about 100 s
def test_compile_wraps_the_unet_and_makes_images(hf_home):
    result, pipe = generate_with(compile=True, compile_mode="default")
    assert isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert_valid(result)


def test_options_are_part_of_the_cache_key(hf_home):
    from easel.models.cache import PipelineCache

    cache = PipelineCache(max_entries=4)
    plain = Easel(Settings.from_env(), cache=cache)
    sliced = Easel(Settings.from_env(vae_slicing=True), cache=cache)
    plain.generate(GenerationRequest(model=TINY_SD15, prompt="a", steps=1, seed=0))
    sliced.generate(GenerationRequest(model=TINY_SD15, prompt="a", steps=1, seed=0))
    entries = cache.loaded()
    assert len(entries) == 2
    assert sorted(e.pipeline.vae.use_slicing for e in entries) == [False, True]


@pytest.mark.parametrize(
    ("options", "device", "error", "fragment"),
    [
        ({"offload": "model"}, "cpu", UnsupportedFeature, "offload='model' moves weights"),
        ({"offload": "sequential"}, "mps", UnsupportedFeature, "device='mps'"),
        ({"compile": True}, "mps", UnsupportedFeature, "compile is not supported on the mps"),
        ({"compile": True, "offload": "sequential"}, "cuda", InvalidRequest, "cannot be combined"),
    ],
)
def test_invalid_combinations_are_refused(options, device, error, fragment):
    with pytest.raises(error, match=fragment):
        check_options(PerformanceOptions(**options), device)


def test_xformers_missing_is_a_clear_error():
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed here")
    with pytest.raises(UnsupportedFeature, match="xformers is not installed"):
        check_options(PerformanceOptions(attention="xformers"), "cuda")


def test_offload_on_an_accelerator_passes_the_check_and_hooks_each_task_pipeline():
    check_options(PerformanceOptions(offload="model"), "cuda")
    calls = []

    class Recorder:
        def enable_model_cpu_offload(self, device):
            calls.append(("model", device))

        def enable_sequential_cpu_offload(self, device):
            calls.append(("sequential", device))

    prepare_task(Recorder(), PerformanceOptions(offload="model"), "cuda")
    prepare_task(Recorder(), PerformanceOptions(offload="sequential"), "cuda:1")
    prepare_task(Recorder(), PerformanceOptions(), "cuda")
    assert calls == [("model", "cuda"), ("sequential", "cuda:1")]


def test_offload_refused_before_loading_through_the_engine(hf_home):
    engine = Easel(Settings.from_env(offload="model", device="cpu"))
    with pytest.raises(UnsupportedFeature, match="offload"):
        engine.generate(GenerationRequest(model=TINY_SD15, prompt="a", steps=1))
    assert len(engine.cache) == 0


def test_fp16_variant_is_asked_for_half_precision_only():
    assert variant_for(PerformanceOptions(), torch.float16) == "fp16"
    assert variant_for(PerformanceOptions(), torch.float32) is None
    assert variant_for(PerformanceOptions(variant="none"), torch.float16) is None
    assert variant_for(PerformanceOptions(variant="fp16"), torch.float32) == "fp16"


def test_settings_come_from_the_environment_by_type():
    settings = Settings.from_env(
        {"EASEL_COMPILE": "yes", "EASEL_THREADS": "3", "EASEL_OFFLOAD": "model", "EASEL_HOME": "/tmp/x"}
    )
    assert settings.compile is True and settings.threads == 3 and settings.offload == "model"
    assert str(settings.home) == "/tmp/x"
    with pytest.raises(InvalidRequest, match="invalid EASEL_COMPILE='maybe'"):
        Settings.from_env({"EASEL_COMPILE": "maybe"})
    with pytest.raises(InvalidRequest, match="invalid attention='flash'"):
        Settings.from_env({"EASEL_ATTENTION": "flash"})

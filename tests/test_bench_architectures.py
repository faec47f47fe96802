"""The full-size architectures with random weights: published parameter counts (built on the
meta device, so nothing is allocated), the flags of `easel bench --architecture` and its refusal of
what cannot fit, the in-memory route (a tiny FLUX-shaped architecture through the engine's cache,
no weights on disk), and one end-to-end run of SD 1.5 at 64x64 through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_SD15
from typer.testing import CliRunner

from easel.bench import render_report, run_benchmark
from easel.bench_architectures import (
    CLIP_VIT_L_TEXT,
    FLUX_DEV,
    PUBLISHED_PARAMETERS,
    QWEN25_VL_7B,
    QWEN_IMAGE,
    T5_XXL_ENCODER,
    build_random_pipeline,
    in_memory_model,
    memory_needed,
    parameter_counts,
    write_configs,
)
from easel.cli import app

# published figures (SD 1.5 and SDXL model cards, diffusers configs)
PUBLISHED = {
    "sd15": {"unet": 859.5e6, "text_encoder": 123e6, "vae": 83.7e6},
    "sdxl": {"unet": 2.567e9, "text_encoder": 123e6, "text_encoder_2": 695e6, "vae": 83.7e6},
}


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_parameter_counts_are_the_published_ones(name):
    pipeline = build_random_pipeline(name, "meta")
    counts = parameter_counts(pipeline)
    assert set(counts) == set(PUBLISHED[name])
    for module, published in PUBLISHED[name].items():
        assert abs(counts[module] - published) / published < 0.005, (module, counts[module], published)
    assert pipeline.unet.device.type == "meta"  # nothing was allocated
    expected = "StableDiffusionPipeline" if name == "sd15" else "StableDiffusionXLPipeline"
    assert type(pipeline).__name__ == expected
    assert getattr(pipeline, "safety_checker", None) is None


def test_weights_are_made_in_the_target_dtype_and_the_default_comes_back():
    pipeline = build_random_pipeline("sdxl", "meta", torch.float16)
    for module in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert {p.dtype for p in getattr(pipeline, module).parameters()} == {torch.float16}, module
    assert torch.get_default_dtype() == torch.float32
    # the real architecture's shapes: SDXL's text_time embedding and 77-token prompts
    assert pipeline.unet.config.addition_embed_type == "text_time"
    assert pipeline.unet.config.transformer_layers_per_block == [1, 2, 10]
    assert pipeline.tokenizer.model_max_length == 77


# the exact counts of the published weights (the sources are named at PUBLISHED_PARAMETERS)
EXACT = {
    "flux-dev": {
        "transformer": 11_901_408_320,
        "text_encoder": 123_060_480,
        "text_encoder_2": 4_762_310_656,
        "vae": 83_819_683,
    },
    "sd35-medium": {
        "transformer": 2_243_171_520,
        "text_encoder": 123_650_304,
        "text_encoder_2": 694_659_840,
        "text_encoder_3": 4_762_310_656,
        "vae": 83_819_683,
    },
    "qwen-image": {"transformer": 20_430_401_088, "text_encoder": 8_292_166_656, "vae": 126_892_531},
}
PIPELINES = {
    "flux-dev": "FluxPipeline",
    "sd35-medium": "StableDiffusion3Pipeline",
    "qwen-image": "QwenImagePipeline",
}


@pytest.mark.parametrize("name", list(EXACT))
def test_transformer_architectures_have_the_published_parameter_counts(name):
    pipeline = build_random_pipeline(name, "meta", torch.bfloat16)
    assert parameter_counts(pipeline) == EXACT[name] == PUBLISHED_PARAMETERS[name]
    assert type(pipeline).__name__ == PIPELINES[name]
    parameters = [
        p for module in ("transformer", "vae", "text_encoder") for p in getattr(pipeline, module).parameters()
    ]
    assert {(p.device.type, p.dtype) for p in parameters} == {("meta", torch.bfloat16)}  # nothing allocated
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize(("name", "family"), [("flux-dev", "flux1_dev"), ("sd35-medium", "sd35_medium"),
                                              ("qwen-image", "qwen_image")])  # fmt: skip
def test_configuration_folders_hold_no_weights_and_are_detected_as_their_families(name, family, tmp_path):
    from easel.bench_architectures import architecture
    from easel.models.cache import detect_family
    from easel.models.reference import resolve_reference

    folder = write_configs(architecture(name), tmp_path / name)
    source = resolve_reference(str(folder), default_folder=tmp_path, allow_pickle=False)
    assert detect_family(source).name == family
    assert sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) < 100_000  # configs only


def test_an_architecture_that_cannot_fit_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    import easel.bench_architectures as architectures

    def never(*args, **kwargs):
        raise AssertionError("built although it cannot fit")

    monkeypatch.setattr(architectures, "available_memory", lambda device: 8 * 2**30)
    monkeypatch.setattr(architectures, "build_pipeline_from", never)
    monkeypatch.setattr(architectures, "build_random_pipeline", never)
    command = [
        "bench",
        "--architecture",
        "flux-dev",
        "--random-weights",
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
    ]
    done = CliRunner().invoke(app, command, env={"EASEL_HOME": str(tmp_path), "COLUMNS": "200"})
    assert done.exit_code == 2, done.output
    assert "error: --architecture flux-dev needs about 35.4 GiB on cpu in bfloat16" in done.output
    assert "8.0 GiB is free" in done.output
    # one copy of the weights (both sides share it) and 4 GiB of headroom; SD: two copies (two loads)
    assert memory_needed("qwen-image", torch.bfloat16) == 2 * sum(EXACT["qwen-image"].values()) + 4 * 2**30
    assert (
        memory_needed("sd15", torch.float16)
        == 2 * 2 * int(sum(PUBLISHED_PARAMETERS["sd15"].values())) + 4 * 2**30
    )


# FLUX.1-dev's architecture data with every module shrunk (the published scheduler and tokenizers kept)
TINY_FLUX_CONFIG = {
    **FLUX_DEV,
    "modules": {
        "transformer": ("FluxTransformer2DModel", {
            "attention_head_dim": 16, "axes_dims_rope": [4, 6, 6], "guidance_embeds": True, "in_channels": 16,
            "joint_attention_dim": 32, "num_attention_heads": 2, "num_layers": 1, "num_single_layers": 1,
            "patch_size": 1, "pooled_projection_dim": 32,
        }),
        "vae": ("AutoencoderKL", {
            "block_out_channels": [16, 32], "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2, "latent_channels": 4, "layers_per_block": 1,
            "norm_num_groups": 8, "use_quant_conv": False, "use_post_quant_conv": False,
            "scaling_factor": 0.3611, "shift_factor": 0.1159,
        }),
        "text_encoder": ("CLIPTextModel", {
            **CLIP_VIT_L_TEXT, "hidden_size": 32, "intermediate_size": 37, "projection_dim": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4,
        }),
        "text_encoder_2": ("T5EncoderModel", {
            **T5_XXL_ENCODER, "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4,
        }),
    },
}  # fmt: skip


def test_an_in_memory_architecture_runs_through_the_engine_with_no_weights_on_disk(hf_home):
    from easel.config import Settings

    settings = Settings.from_env(device="cpu", dtype="float32")
    with in_memory_model(TINY_FLUX_CONFIG, "tiny-flux") as model:
        assert not [path for path in model.folder.rglob("*") if path.suffix in (".safetensors", ".bin")]
        report = run_benchmark(model=str(model.folder), build=model.build, steps=2, rounds=1, warmup=0,
                               width=32, height=32, settings=settings).as_dict()  # fmt: skip
    # had the engine not found the built pipeline in its cache, loading the folder would have failed
    assert report["images_equal"] is True
    assert (report["model"], report["size"], report["dtype"]) == (
        "tiny-flux-random-weights",
        "32x32",
        "float32",
    )
    assert set(model.counts) == {"transformer", "text_encoder", "text_encoder_2", "vae"}
    assert model.counts["text_encoder_2"] > 32128 * 32  # T5's real vocabulary: the embedding table


# Qwen-Image's architecture data shrunk (the published scheduler, the offline Qwen tokenizer and the model
# card's call kept): a Qwen2.5-VL of width 16 (with the real 152,064-row vocabulary), VAE scale factor 4
TINY_QWEN_CONFIG = {
    **QWEN_IMAGE,
    "modules": {
        "transformer": ("QwenImageTransformer2DModel", {
            "attention_head_dim": 16, "axes_dims_rope": [8, 4, 4], "guidance_embeds": False,
            "in_channels": 16, "joint_attention_dim": 16, "num_attention_heads": 3, "num_layers": 2,
            "out_channels": 4, "patch_size": 2,
        }),
        "vae": ("AutoencoderKLQwenImage", {
            "base_dim": 24, "z_dim": 4, "dim_mult": [1, 2, 4], "num_res_blocks": 1,
            "temperal_downsample": [False, True], "latents_mean": [0.1, -0.2, 0.3, 0.0],
            "latents_std": [1.5, 2.0, 1.2, 2.5],
        }),
        "text_encoder": ("Qwen2_5_VLForConditionalGeneration", {
            **QWEN25_VL_7B,
            "text_config": {
                **QWEN25_VL_7B["text_config"], "hidden_size": 16, "intermediate_size": 16,
                "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            },
            "vision_config": {
                **QWEN25_VL_7B["vision_config"], "depth": 2, "hidden_size": 16, "intermediate_size": 16,
                "num_heads": 2, "out_hidden_size": 16, "fullatt_block_indexes": [1],
            },
        }),
    },
}  # fmt: skip


def test_qwen_image_in_memory_is_compared_with_the_model_cards_call(hf_home):
    """Plain diffusers runs Qwen-Image as its model card does (true_cfg_scale, negative prompt " "):
    equal to easel's; with guidance_scale= (what the other architectures take) it would differ."""
    from easel.config import Settings

    settings = Settings.from_env(device="cpu", dtype="float32")
    options = {"steps": 2, "rounds": 1, "warmup": 0, "width": 32, "height": 32, "settings": settings}
    with in_memory_model(TINY_QWEN_CONFIG, "tiny-qwen") as model:
        reference = TINY_QWEN_CONFIG["reference_call"]
        as_card = run_benchmark(
            model=str(model.folder), build=model.build, reference_call=reference, **options
        )
        plain_guidance = run_benchmark(model=str(model.folder), build=model.build, **options)
    assert as_card.images_equal is True
    assert plain_guidance.images_equal is False
    assert model.counts["text_encoder"] > 152064 * 16  # the real vocabulary


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--architecture", "sd15"], "without --random-weights"),
        (
            ["--architecture", "sd3", "--random-weights"],
            "use one of sd15, sdxl, flux-dev, sd35-medium, qwen-image",
        ),
        (["--architecture", "flux-dev"], "without --random-weights"),
        (["--random-weights"], "without --architecture"),
        (["--architecture", "sd15", "--random-weights", "--model", "x/y"], "with --model"),
        (["--batch", "0"], "--batch=0: use 1 to 64"),
    ],
)
def test_architecture_flags_are_checked(args, expected, tmp_path):
    done = CliRunner().invoke(app, ["bench", *args], env={"EASEL_HOME": str(tmp_path), "COLUMNS": "200"})
    assert done.exit_code == 2, done.output
    assert done.output.startswith("error: invalid --") and expected in done.output, done.output


def test_a_batch_compares_every_image(hf_home):
    report = run_benchmark(model=TINY_SD15, steps=2, rounds=1, warmup=1, num_images=2).as_dict()
    assert report["images_equal"] is True
    assert report["num_images"] == 2
    assert set(report["warmup_s"]) == set(report["first_image_s"]) == {"easel", "diffusers"}
    assert "batch of 2 images per call" in render_report(report)


@pytest.mark.slow  # about a minute on two CPU cores: a 4 GB float32 model saved, loaded twice
def test_sd15_full_size_with_random_weights_runs_on_cpu(tmp_path):
    command = ["bench", "--architecture", "sd15", "--random-weights", "--width", "64", "--height", "64",
               "--steps", "1", "--rounds", "1", "--warmup", "0", "--device", "cpu", "--dtype", "float32",
               "--json"]  # fmt: skip
    done = CliRunner().invoke(app, command, env={"EASEL_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert done.exit_code == 0, done.output
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]  # stderr may have notes
    report = json.loads(line)
    assert report["architecture"] == "sd15" and report["images_equal"] is True
    assert report["size"] == "64x64" and report["device"] == "cpu" and report["dtype"] == "float32"
    assert abs(report["parameters"]["unet"] - 859.5e6) / 859.5e6 < 0.005
    assert "task_switching" not in report

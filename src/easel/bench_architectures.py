"""The published full-size architectures (SD 1.5, SDXL) as data, built with random weights.

Why: no real weights can be downloaded where easel is developed, and no accelerator has been
lent so far, yet a UNet with random weights costs exactly as much per step as a trained one.
The configurations below are the public `config.json` values of runwayml/stable-diffusion-v1-5
and stabilityai/stable-diffusion-xl-base-1.0 (written out here, not downloaded); the tests check
the parameter counts of the built modules against the published ones.

The tokenizer is easel's offline CLIP tokenizer (easel.testing.tokenizer): the same class and
special tokens as the real one, but a small vocabulary. For timing that changes nothing: the text
encoders keep the real 49,408-row embedding, and prompts are always padded to the fixed 77-token
window, so every step sees tensors of the real shapes. The images are noise, of course.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ARCHITECTURES = ("sd15", "sdxl")

_SCALED_LINEAR = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

# CLIP ViT-L/14's text tower: SD 1.5's text encoder and SDXL's first one (about 123 M parameters)
CLIP_VIT_L_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# OpenCLIP ViT-bigG/14's text tower with its projection: SDXL's second text encoder (about 695 M)
OPENCLIP_BIGG_TEXT = {
    **CLIP_VIT_L_TEXT,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "projection_dim": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
}

_SD_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
}

SD15: dict[str, Any] = {
    "pipeline": "StableDiffusionPipeline",
    "native_size": 512,
    "unet": {
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "sample_size": 64,
    },
    "text_encoder": CLIP_VIT_L_TEXT,
    "vae": {**_SD_VAE, "sample_size": 512, "scaling_factor": 0.18215},
    "scheduler": ("PNDMScheduler", _SCALED_LINEAR),
}

SDXL: dict[str, Any] = {
    "pipeline": "StableDiffusionXLPipeline",
    "native_size": 1024,
    "unet": {
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "use_linear_projection": True,
    },
    "text_encoder": CLIP_VIT_L_TEXT,
    "text_encoder_2": OPENCLIP_BIGG_TEXT,
    "vae": {**_SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    "scheduler": (
        "EulerDiscreteScheduler",
        {
            **_SCALED_LINEAR,
            "interpolation_type": "linear",
            "timestep_spacing": "leading",
            "use_karras_sigmas": False,
            "sample_max_value": 1.0,
        },
    ),
}

_BY_NAME = {"sd15": SD15, "sdxl": SDXL}

# published parameter counts (model cards / diffusers configs), for the report and the tests
PUBLISHED_PARAMETERS = {
    "sd15": {"unet": 859.5e6, "text_encoder": 123.1e6, "vae": 83.7e6},
    "sdxl": {"unet": 2.567e9, "text_encoder": 123.1e6, "text_encoder_2": 694.7e6, "vae": 83.7e6},
}

_TOKENIZER_WORDS = ["a", "red", "circle", "on", "blue", "background", "photo", "of", "cat"]


def architecture(name: str) -> dict[str, Any]:
    """The configuration of `name` (one of ARCHITECTURES)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; one of: {', '.join(ARCHITECTURES)}") from None


@contextlib.contextmanager
def _creating_in(device: Any, dtype: Any) -> Iterator[None]:
    """New tensors are made on `device` in `dtype`: no float32 copy on the CPU first."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _tokenizer() -> Any:
    from transformers import CLIPTokenizer

    from easel.testing.tokenizer import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        return CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(scratch), _TOKENIZER_WORDS))


def build_random_pipeline(name: str, device: Any = "cpu", dtype: Any = None) -> Any:
    """The diffusers pipeline of architecture `name` with random weights, created directly on
    `device` in `dtype` (default float32); `device="meta"` allocates nothing (for counting).
    No safety checker."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = architecture(name)
    dtype = dtype or torch.float32
    scheduler_class, scheduler_config = config["scheduler"]
    tokenizer = _tokenizer()
    with _creating_in(device, dtype):
        parts: dict[str, Any] = {
            "unet": diffusers.UNet2DConditionModel(**config["unet"]),
            "vae": diffusers.AutoencoderKL(**config["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**config["text_encoder"])),
            "tokenizer": tokenizer,
        }
        if "text_encoder_2" in config:
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**config["text_encoder_2"]))
            parts["tokenizer_2"] = tokenizer
    # the scheduler's tables stay on the CPU, where diffusers makes them
    parts["scheduler"] = getattr(diffusers, scheduler_class).from_config(scheduler_config)
    for module in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if module in parts:
            parts[module].eval().requires_grad_(False)
    if config["pipeline"] == "StableDiffusionPipeline":
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return getattr(diffusers, config["pipeline"])(**parts)


def parameter_counts(pipeline: Any) -> dict[str, int]:
    """Parameters per module of a built pipeline (unet, text encoders, vae)."""
    counts = {}
    for module in ("unet", "text_encoder", "text_encoder_2", "vae"):
        part = getattr(pipeline, module, None)
        if part is not None:
            counts[module] = sum(p.numel() for p in part.parameters())
    return counts


@contextlib.contextmanager
def random_weights_model(
    name: str, device: Any = "cpu", dtype: Any = None
) -> Iterator[tuple[Path, dict[str, int]]]:
    """A diffusers folder of architecture `name` with random weights, in a temporary directory
    deleted afterwards; yields (folder, parameter counts).

    Why a folder and not the built pipeline itself: easel and plain diffusers are then both
    measured on their real paths (easel resolves, detects the family, loads through its cache
    and prepares the pipeline as for any user's model). The cost is disk space for one copy
    of the weights (SD 1.5: 2 GB in float16, 4 GB in float32; SDXL: 7 GB in float16) for the
    benchmark's duration; the built pipeline is freed before either side loads."""
    import gc

    import torch

    from easel.models.cache import no_loading_bars

    pipeline = build_random_pipeline(name, device, dtype)
    counts = parameter_counts(pipeline)
    with tempfile.TemporaryDirectory(prefix=f"easel-{name}-random-") as scratch:
        folder = Path(scratch) / f"{name}-random-weights"
        with no_loading_bars():  # diffusers draws a bar per module written
            pipeline.save_pretrained(folder, safe_serialization=True)
        del pipeline
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        yield folder, counts

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

FLUX.1-dev, SD 3.5 medium and Qwen-Image (12 to 29 B parameters with their text encoders) are built
the same way, from their published configurations, with easel's offline T5 and Qwen tokenizers
(small vocabularies; the encoders keep their real embedding tables; T5 prompts are padded to the
pipeline's max_sequence_length, Qwen's are the prompt's own length as in the real pipeline). They
are never written to disk (24 to 58 GB in bfloat16): see in_memory_model.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easel.testing.tiny_qwen_image import SCHEDULER_CONFIG as QWEN_IMAGE_SCHEDULER

# built in memory and handed to the engine's cache, never saved (see in_memory_model)
TRANSFORMER_ARCHITECTURES = ("flux-dev", "sd35-medium", "qwen-image")
ARCHITECTURES = ("sd15", "sdxl", *TRANSFORMER_ARCHITECTURES)

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

# The transformer architectures. Each value is the public config.json of the component named, as
# published on the Hugging Face Hub (written out here, checked against several public copies of those
# files found with a code search: FLUX.1-dev's transformer/ and vae/ configs, SD 3.5 medium's
# transformer/ config, Qwen-Image's transformer/ and vae/ configs, Qwen2.5-VL-7B's config); keys left
# out are the classes' defaults, which equal the published values. The parameter counts the tests check
# (PUBLISHED_PARAMETERS) confirm them: a wrong width or depth would change the count.

# google/t5-v1_1-xxl's encoder: FLUX.1-dev's text_encoder_2 and SD 3.5's text_encoder_3 (4.76 B)
T5_XXL_ENCODER = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-06,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
    "tie_word_embeddings": False,
}

# the 16-channel AutoencoderKL of FLUX.1 (black-forest-labs/FLUX.1-dev vae/config.json); SD 3.5's has
# the same shape with its own scaling and shift
_FLOW_VAE = {
    **_SD_VAE,
    "latent_channels": 16,
    "sample_size": 1024,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
}

_FLOW_MATCH = "FlowMatchEulerDiscreteScheduler"

FLUX_DEV: dict[str, Any] = {
    "pipeline": "FluxPipeline",
    "native_size": 1024,
    "modules": {
        # black-forest-labs/FLUX.1-dev transformer/config.json
        "transformer": (
            "FluxTransformer2DModel",
            {
                "attention_head_dim": 128,
                "axes_dims_rope": [16, 56, 56],
                "guidance_embeds": True,
                "in_channels": 64,
                "joint_attention_dim": 4096,
                "num_attention_heads": 24,
                "num_layers": 19,
                "num_single_layers": 38,
                "patch_size": 1,
                "pooled_projection_dim": 768,
            },
        ),
        "vae": ("AutoencoderKL", {**_FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}),
        "text_encoder": ("CLIPTextModel", CLIP_VIT_L_TEXT),
        "text_encoder_2": ("T5EncoderModel", T5_XXL_ENCODER),
    },
    "tokenizers": {"tokenizer": "clip", "tokenizer_2": "t5"},
    # FLUX.1-dev scheduler/scheduler_config.json (the shift grows with the image's size)
    "scheduler": (
        _FLOW_MATCH,
        {
            "num_train_timesteps": 1000,
            "shift": 3.0,
            "use_dynamic_shifting": True,
            "base_shift": 0.5,
            "max_shift": 1.15,
            "base_image_seq_len": 256,
            "max_image_seq_len": 4096,
        },
    ),
}

SD35_MEDIUM: dict[str, Any] = {
    "pipeline": "StableDiffusion3Pipeline",
    "native_size": 1024,
    "modules": {
        # stabilityai/stable-diffusion-3.5-medium transformer/config.json (MMDiT-X: dual attention in
        # blocks 0-12, RMS qk-norm)
        "transformer": (
            "SD3Transformer2DModel",
            {
                "attention_head_dim": 64,
                "caption_projection_dim": 1536,
                "dual_attention_layers": list(range(13)),
                "in_channels": 16,
                "joint_attention_dim": 4096,
                "num_attention_heads": 24,
                "num_layers": 24,
                "out_channels": 16,
                "patch_size": 2,
                "pooled_projection_dim": 2048,
                "pos_embed_max_size": 384,
                "qk_norm": "rms_norm",
                "sample_size": 128,
            },
        ),
        "vae": ("AutoencoderKL", {**_FLOW_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}),
        # CLIP-L and CLIP-G with their projections (pooled: 768 + 1280 = pooled_projection_dim)
        "text_encoder": ("CLIPTextModelWithProjection", CLIP_VIT_L_TEXT),
        "text_encoder_2": ("CLIPTextModelWithProjection", OPENCLIP_BIGG_TEXT),
        "text_encoder_3": ("T5EncoderModel", T5_XXL_ENCODER),
    },
    "tokenizers": {"tokenizer": "clip", "tokenizer_2": "clip", "tokenizer_3": "t5"},
    "scheduler": (_FLOW_MATCH, {"num_train_timesteps": 1000, "shift": 3.0}),
}

# Qwen/Qwen-Image text_encoder/config.json: Qwen2.5-VL-7B-Instruct (its vision tower is loaded too, as
# the pipeline loads it, though text-to-image reads only the language model)
QWEN25_VL_7B = {
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "hidden_act": "silu",
        "in_channels": 3,
    },
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
}

# Qwen/Qwen-Image vae/config.json's latent statistics (per channel)
_QWEN_LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]  # fmt: skip
_QWEN_LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916]  # fmt: skip

QWEN_IMAGE: dict[str, Any] = {
    "pipeline": "QwenImagePipeline",
    "native_size": 1328,  # the model card's 1:1 size
    "modules": {
        # Qwen/Qwen-Image transformer/config.json
        "transformer": (
            "QwenImageTransformer2DModel",
            {
                "attention_head_dim": 128,
                "axes_dims_rope": [16, 56, 56],
                "guidance_embeds": False,
                "in_channels": 64,
                "joint_attention_dim": 3584,
                "num_attention_heads": 24,
                "num_layers": 60,
                "out_channels": 16,
                "patch_size": 2,
            },
        ),
        # Qwen/Qwen-Image vae/config.json (a video VAE, one frame at a time here)
        "vae": (
            "AutoencoderKLQwenImage",
            {
                "base_dim": 96,
                "z_dim": 16,
                "dim_mult": [1, 2, 4, 4],
                "num_res_blocks": 2,
                "attn_scales": [],
                "temperal_downsample": [False, True, True],
                "dropout": 0.0,
                "latents_mean": _QWEN_LATENTS_MEAN,
                "latents_std": _QWEN_LATENTS_STD,
            },
        ),
        "text_encoder": ("Qwen2_5_VLForConditionalGeneration", QWEN25_VL_7B),
    },
    "tokenizers": {"tokenizer": "qwen"},
    "scheduler": (_FLOW_MATCH, QWEN_IMAGE_SCHEDULER),  # Qwen/Qwen-Image scheduler/scheduler_config.json
    # the model card's call: real CFG as true_cfg_scale, with " " as the negative prompt
    "reference_call": {"guidance_argument": "true_cfg_scale", "negative_prompt": " "},
}

_BY_NAME = {
    "sd15": SD15,
    "sdxl": SDXL,
    "flux-dev": FLUX_DEV,
    "sd35-medium": SD35_MEDIUM,
    "qwen-image": QWEN_IMAGE,
}

# published parameter counts, for the report and the tests. SD: the model cards' (rounded). The
# transformer architectures: exact counts of the published weights, each found in more than one public
# source (the Hub's safetensors counts and people's notes quoting them): FLUX.1-dev transformer
# 11,901,408,320; T5-XXL encoder 4,762,310,656; CLIP ViT-L/14 text 123,060,480 (+ its 768x768 projection:
# 123,650,304); OpenCLIP bigG text with projection 694,659,840; the FLUX.1 / SD 3.5 16-channel VAE
# 83,819,683; SD 3.5 medium MMDiT-X 2,243,171,520 (the card's "2.5 B" counts more than the transformer);
# Qwen-Image transformer 20,430,401,088; Qwen2.5-VL-7B 8,292,166,656; Qwen-Image VAE 126,892,531.
_T5_XXL, _CLIP_L, _CLIP_G, _FLOW_VAE_PARAMETERS = 4_762_310_656, 123_060_480, 694_659_840, 83_819_683
PUBLISHED_PARAMETERS = {
    "sd15": {"unet": 859.5e6, "text_encoder": 123.1e6, "vae": 83.7e6},
    "sdxl": {"unet": 2.567e9, "text_encoder": 123.1e6, "text_encoder_2": 694.7e6, "vae": 83.7e6},
    "flux-dev": {
        "transformer": 11_901_408_320,
        "text_encoder": _CLIP_L,
        "text_encoder_2": _T5_XXL,
        "vae": _FLOW_VAE_PARAMETERS,
    },
    "sd35-medium": {
        "transformer": 2_243_171_520,
        "text_encoder": _CLIP_L + 768 * 768,
        "text_encoder_2": _CLIP_G,
        "text_encoder_3": _T5_XXL,
        "vae": _FLOW_VAE_PARAMETERS,
    },
    "qwen-image": {"transformer": 20_430_401_088, "text_encoder": 8_292_166_656, "vae": 126_892_531},
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


_TRANSFORMERS_CONFIG_CLASSES = {
    "CLIPTextModel": "CLIPTextConfig",
    "CLIPTextModelWithProjection": "CLIPTextConfig",
    "T5EncoderModel": "T5Config",
    "Qwen2_5_VLForConditionalGeneration": "Qwen2_5_VLConfig",
}


def _random_module(class_name: str, config: dict[str, Any]) -> Any:
    """A diffusers or transformers module of `class_name`, randomly initialised from `config`."""
    config_class = _TRANSFORMERS_CONFIG_CLASSES.get(class_name)
    if config_class is not None:
        import transformers

        return getattr(transformers, class_name)(getattr(transformers, config_class)(**config))
    import diffusers

    return getattr(diffusers, class_name)(**config)


def _offline_tokenizer(kind: str) -> Any:
    """easel's offline tokenizers: CLIP's, T5's (tiny_flux) or Qwen2's with the ChatML and vision
    tokens and the words of QwenImagePipeline's prompt template (tiny_qwen_image)."""
    if kind == "clip":
        return _tokenizer()
    if kind == "t5":
        from easel.testing.tiny_flux import build_t5_tokenizer

        return build_t5_tokenizer(_TOKENIZER_WORDS)
    from easel.testing.tiny_qwen_image import TEMPLATE_WORDS, VISION_TOKENS
    from easel.testing.tiny_qwen_tokenizer import build_qwen_tokenizer

    return build_qwen_tokenizer([*_TOKENIZER_WORDS, *TEMPLATE_WORDS], extra_special=VISION_TOKENS)


def build_pipeline_from(config: dict[str, Any], device: Any = "cpu", dtype: Any = None) -> Any:
    """The pipeline a transformer architecture's `config` describes (its "modules", "tokenizers" and
    "scheduler"), random weights created directly on `device` in `dtype` (default float32)."""
    import diffusers
    import torch

    parts: dict[str, Any] = {name: _offline_tokenizer(kind) for name, kind in config["tokenizers"].items()}
    with _creating_in(device, dtype or torch.float32):
        for name, (class_name, module_config) in config["modules"].items():
            parts[name] = _random_module(class_name, module_config).eval().requires_grad_(False)
    scheduler_class, scheduler_config = config["scheduler"]
    parts["scheduler"] = getattr(diffusers, scheduler_class).from_config(scheduler_config)
    return getattr(diffusers, config["pipeline"])(**parts)


def build_random_pipeline(name: str, device: Any = "cpu", dtype: Any = None) -> Any:
    """The diffusers pipeline of architecture `name` with random weights, created directly on
    `device` in `dtype` (default float32); `device="meta"` allocates nothing (for counting).
    No safety checker."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = architecture(name)
    if name in TRANSFORMER_ARCHITECTURES:
        return build_pipeline_from(config, device, dtype)
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
    """Parameters per module of a built pipeline (denoiser, text encoders, vae)."""
    counts = {}
    for module in ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
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


# --- memory: refuse before allocating ------------------------------------------------------------

HEADROOM_BYTES = 4 * 2**30  # activations, the VAE decode and the allocator's slack, beside the weights
_TOKENIZER_CLASSES = {"clip": "CLIPTokenizer", "t5": "T5Tokenizer", "qwen": "Qwen2Tokenizer"}


def memory_needed(name: str, dtype: Any) -> int:
    """Bytes `easel bench --architecture name` needs on its device, from the published parameter
    counts: one copy of the weights for the in-memory architectures (easel and plain diffusers share
    the modules), two for SD 1.5 / SDXL (each side loads the saved folder), plus HEADROOM_BYTES."""
    import torch

    itemsize = torch.empty((), dtype=dtype, device="meta").element_size()
    copies = 1 if name in TRANSFORMER_ARCHITECTURES else 2
    return int(sum(PUBLISHED_PARAMETERS[name].values())) * itemsize * copies + HEADROOM_BYTES


def available_memory(device: str) -> int | None:
    """Free bytes where `device`'s tensors live: the GPU's free memory for CUDA, the machine's
    available RAM for the CPU; None where it cannot be read (MPS: unified memory, no reliable figure)."""
    import torch

    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    if device == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    return None


def check_memory(name: str, device: str, dtype: Any) -> None:
    """Refuse, before anything is allocated, an architecture that cannot fit on `device` in `dtype`:
    a 20 B model half-built would take the machine down with it instead of saying why."""
    from easel.errors import UnsupportedFeature

    needed, free = memory_needed(name, dtype), available_memory(device)
    if free is not None and needed > free:
        dtype_name = str(dtype).removeprefix("torch.")
        raise UnsupportedFeature(
            f"--architecture {name} needs about {needed / 2**30:.1f} GiB on {device} in {dtype_name} "
            f"(weights and working memory), and {free / 2**30:.1f} GiB is free; run it on a GPU with more "
            "memory (bfloat16 on an 80 GB H100 / 141 GB H200), or measure sd15 here"
        )


# --- in memory: no copy of the weights on disk ---------------------------------------------------


@dataclass
class InMemoryModel:
    """An architecture built in memory for `easel bench`: `folder` holds its configuration only
    (model_index.json, each module's config.json, the scheduler's; no weights, no tokenizers), so easel
    resolves it and detects its family as for any diffusers folder; `build(device, dtype)` makes the
    pipeline with random weights, which the benchmark hands to the engine's cache (PipelineCache.adopt)
    in place of loading. `counts` holds the built modules' parameter counts."""

    folder: Path
    config: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)

    def build(self, device: Any, dtype: Any) -> Any:
        pipeline = build_pipeline_from(self.config, device, dtype)
        self.counts.update(parameter_counts(pipeline))
        return pipeline


def write_configs(config: dict[str, Any], folder: Path) -> Path:
    """A diffusers folder of `config` (a transformer architecture's) without weights or tokenizers:
    what detection reads (model_index.json, transformer/config.json) and the other modules' configs."""
    import diffusers
    import transformers

    index: dict[str, Any] = {"_class_name": config["pipeline"], "_diffusers_version": diffusers.__version__}
    for name, (class_name, module_config) in config["modules"].items():
        (folder / name).mkdir(parents=True)
        config_class = _TRANSFORMERS_CONFIG_CLASSES.get(class_name)
        if config_class is None:
            index[name] = ["diffusers", class_name]
            text = json.dumps({"_class_name": class_name, **module_config}, indent=2)
            (folder / name / "config.json").write_text(text, "utf-8")
        else:
            index[name] = ["transformers", class_name]
            getattr(transformers, config_class)(**module_config).save_pretrained(folder / name)
    for name, kind in config["tokenizers"].items():
        index[name] = ["transformers", _TOKENIZER_CLASSES[kind]]
    scheduler_class, scheduler_config = config["scheduler"]
    index["scheduler"] = ["diffusers", scheduler_class]
    (folder / "scheduler").mkdir()
    scheduler = {"_class_name": scheduler_class, **scheduler_config}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2), "utf-8")
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), "utf-8")
    return folder


@contextlib.contextmanager
def in_memory_model(config: dict[str, Any], label: str) -> Iterator[InMemoryModel]:
    """An InMemoryModel of `config` (named `label`) whose configuration folder lives in a temporary
    directory for the benchmark's duration.

    Why not random_weights_model's saved folder: FLUX.1-dev, SD 3.5 medium and Qwen-Image are 16 to 58 GB
    in bfloat16 with their encoders; writing and reading that back would measure the disk and could
    fill it. The cost: plain diffusers runs on the very modules easel loaded (a new pipeline object
    around them, with its own scheduler), not on a second copy loaded from disk."""
    with tempfile.TemporaryDirectory(prefix=f"easel-{label}-random-") as scratch:
        folder = write_configs(config, Path(scratch) / f"{label}-random-weights")
        yield InMemoryModel(folder, config)

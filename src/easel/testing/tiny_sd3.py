"""A tiny, randomly initialised Stable Diffusion 3.5 medium, installed under the real repo id.

The recipe (diffusers 0.42 on CPU): an SD3Transformer2DModel shaped like 3.5 medium's (2x2 patches,
`dual_attention_layers` and `qk_norm`, the config marks that tell medium from large), two
CLIPTextModelWithProjection + CLIP tokenizers as the tiny SDXL builds them (CLIP-L and CLIP-G: their
hidden states are concatenated, their projections are the pooled embedding), a tiny T5EncoderModel with
the offline T5 tokenizer of easel.testing.tiny_flux, an AutoencoderKL with 16 latent channels, no quant
convolutions and a shift factor (as SD3's VAE), and the flow-matching Euler scheduler (shift 3). Built
after torch.manual_seed so every install is bit-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easel.testing.tiny_flux import build_t5_tokenizer, tiny_flow_vae, tiny_t5_encoder
from easel.testing.tiny_models import (
    CAPTION_WORDS,
    _tiny_clip_text_config,
    _tiny_tokenizer,
    install_into_hf_cache,
)

SD35_MEDIUM_ID = "stabilityai/stable-diffusion-3.5-medium"
LATENT_CHANNELS = 16
T5_WIDTH = 64  # the joint attention width: CLIP-L + CLIP-G hidden states (32 + 32) are padded to it
# the tiny SD3Transformer2DModel's shape (its tiny ControlNet, easel.testing.tiny_dit_controlnets, shares it)
TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "patch_size": 2,
    "in_channels": LATENT_CHANNELS,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "joint_attention_dim": T5_WIDTH,
    "caption_projection_dim": 32,
    "pooled_projection_dim": 64,  # the two CLIP projections, concatenated
    "out_channels": LATENT_CHANNELS,
    "pos_embed_max_size": 96,
    "dual_attention_layers": (0,),  # 3.5 medium's MMDiT-X blocks
    "qk_norm": "rms_norm",
}


def build_tiny_sd35_medium() -> Any:
    """A tiny StableDiffusion3Pipeline; 2-block VAE (scale factor 2) and sample_size 32, so its
    native size by diffusers' rule (default_sample_size x the VAE factor) is 64."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(35)
    transformer = SD3Transformer2DModel(**TRANSFORMER_CONFIG)
    vae = tiny_flow_vae(LATENT_CHANNELS, scaling_factor=1.5305)
    tokenizer = _tiny_tokenizer()
    text_encoder = CLIPTextModelWithProjection(_tiny_clip_text_config(tokenizer))
    tokenizer_2 = _tiny_tokenizer()
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_text_config(tokenizer_2))
    tokenizer_3 = build_t5_tokenizer(list(CAPTION_WORDS))
    text_encoder_3 = tiny_t5_encoder(tokenizer_3, width=T5_WIDTH)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)  # the published one
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def install_tiny_sd3(hf_home: Path) -> dict[str, Path]:
    """Install the tiny SD 3.5 medium under its real repo id; id -> snapshot."""
    return {SD35_MEDIUM_ID: install_into_hf_cache(build_tiny_sd35_medium(), hf_home, SD35_MEDIUM_ID)}

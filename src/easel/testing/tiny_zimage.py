"""A tiny, randomly initialised Z-Image Turbo, installed under the real repo id.

The recipe (diffusers 0.42 on CPU, as diffusers' own Z-Image tests build it): a
ZImageTransformer2DModel whose head dim (dim / n_heads) equals sum(axes_dims) (its 3-axis RoPE
covers each head), 2x2 patches, cap_feat_dim the text encoder's width; a tiny Qwen3Model text encoder
(the pipeline reads its second-to-last hidden state) with the offline Qwen tokenizer of
easel.testing.tiny_qwen_tokenizer (ChatML template); a 16-channel AutoencoderKL with the real VAE's
scaling and shift factors (easel.testing.tiny_flux's, scale factor 2); and the published scheduler
(flow-matching Euler, shift 3, no dynamic shifting). The transformer's pad tokens are created with
torch.empty, so they are set to ones (as diffusers' tests do) and every install is bit-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easel.testing.tiny_flux import tiny_flow_vae
from easel.testing.tiny_models import CAPTION_WORDS, install_into_hf_cache
from easel.testing.tiny_qwen_tokenizer import build_qwen_tokenizer

ZIMAGE_TURBO_ID = "Tongyi-MAI/Z-Image-Turbo"
LATENT_CHANNELS = 16
TEXT_WIDTH = 16  # the Qwen3 encoder's hidden size: the transformer's cap_feat_dim


def build_tiny_zimage() -> Any:
    """A tiny ZImagePipeline; 2-block VAE (scale factor 2), sizes in multiples of 4."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(20)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=LATENT_CHANNELS,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,  # head dim 16 = sum(axes_dims)
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=TEXT_WIDTH,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        # RoPE positions: captions (up to 512) and the frame after them; 256 rows and columns of 2x2
        # patches, so the native 1024x1024 fits too (the real model's: 1024, 512, 512)
        axes_lens=[1024, 256, 256],
    )
    with torch.no_grad():  # torch.empty in the model: fixed, or installs differ (and may hold NaN)
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    vae = tiny_flow_vae(LATENT_CHANNELS, scaling_factor=0.3611, shift_factor=0.1159)  # the real VAE's
    tokenizer = build_qwen_tokenizer(list(CAPTION_WORDS))
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_WIDTH,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )
    return ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def install_tiny_zimage(hf_home: Path) -> dict[str, Path]:
    """Install the tiny Z-Image Turbo under its real repo id; id -> snapshot."""
    return {ZIMAGE_TURBO_ID: install_into_hf_cache(build_tiny_zimage(), hf_home, ZIMAGE_TURBO_ID)}

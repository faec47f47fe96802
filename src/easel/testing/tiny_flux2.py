"""Tiny, randomly initialised FLUX.2 [klein] models (distilled and base), installed under the real repo ids.

The recipe diffusers 0.42 accepts on CPU (checked here): a Flux2Transformer2DModel whose head dim
equals sum(axes_dims_rope) (its 4-axis RoPE: time, height, width, layer) and whose in_channels are
4 x the VAE's latent channels (the VAE folds 2x2 latent patches into channels), without a guidance
embedding (klein has none); an AutoencoderKLFlux2 of two blocks (scale factor 2, so sizes are
multiples of 4) with its batch-norm statistics; a Qwen3ForCausalLM text encoder deep enough for the
hidden states the pipeline stacks (layers 9, 18 and 27, so 27 layers; the transformer reads
3 x its width), with the offline Qwen tokenizer of easel.testing.tiny_qwen_tokenizer (ChatML
template); and the published scheduler (flow-matching Euler, dynamic shifting). `is_distilled`
goes into model_index.json, as in the published models: the distilled klein says true, the base
false. Built after torch.manual_seed so every install is bit-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easel.testing.tiny_models import CAPTION_WORDS, install_into_hf_cache
from easel.testing.tiny_qwen_tokenizer import build_qwen_tokenizer

FLUX2_KLEIN_ID = "black-forest-labs/FLUX.2-klein-4B"  # distilled: 4 steps, no guidance
FLUX2_KLEIN_BASE_ID = "black-forest-labs/FLUX.2-klein-base-9B"  # the base: real CFG
LATENT_CHANNELS = 4  # the real VAE has 32; the transformer takes 4 x this (2x2 patches)
TEXT_WIDTH = 16  # the Qwen3 encoder's hidden size; the transformer reads three of its layers
TEXT_LAYERS = 27  # the pipeline stacks hidden states 9, 18 and 27


def build_tiny_flux2(*, distilled: bool, seed: int | None = None) -> Any:
    """A tiny Flux2KleinPipeline; 2-block VAE (scale factor 2), so its native size by diffusers'
    rule (default_sample_size 128 x 2) is 256 and sizes are multiples of 4."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed if seed is not None else 30 if distilled else 31)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,  # = sum(axes_dims_rope)
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_WIDTH,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    )
    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    with torch.no_grad():  # statistics of its own, so the normalisation is not the identity
        vae.bn.running_mean.copy_(torch.randn_like(vae.bn.running_mean) * 0.1)
        vae.bn.running_var.copy_(torch.rand_like(vae.bn.running_var) + 0.5)
    tokenizer = build_qwen_tokenizer(list(CAPTION_WORDS))
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_WIDTH,
            intermediate_size=32,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential"
    )
    return Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=distilled,
    )


def install_tiny_flux2(hf_home: Path) -> dict[str, Path]:
    """Install the tiny FLUX.2 [klein] (distilled) and [klein] base under their real repo ids;
    id -> snapshot."""
    return {
        FLUX2_KLEIN_ID: install_into_hf_cache(build_tiny_flux2(distilled=True), hf_home, FLUX2_KLEIN_ID),
        FLUX2_KLEIN_BASE_ID: install_into_hf_cache(
            build_tiny_flux2(distilled=False), hf_home, FLUX2_KLEIN_BASE_ID
        ),
    }

"""A tiny, randomly initialised Qwen-Image, installed under the real repo id (Qwen/Qwen-Image).

The recipe diffusers 0.42 accepts on CPU (as its own QwenImagePipeline tests build one): a
QwenImageTransformer2DModel with 2x2 patches (in_channels = 4 x the VAE's latent channels), an
AutoencoderKLQwenImage with 4 latent channels and two spatial downsamplings (scale factor 4), a
Qwen2_5_VLForConditionalGeneration with a small text model and a small vision config (the pipeline reads
only its text side), the offline Qwen2 tokenizer of easel.testing.tiny_qwen_tokenizer (ChatML and vision
special tokens, a ChatML chat_template) with whole-word tokens for the caption words and for the words
of the pipeline's system prompt, and the published flow-matching scheduler. Built after torch.manual_seed
so every install is bit-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easel.testing.tiny_models import CAPTION_WORDS, install_into_hf_cache

QWEN_IMAGE_ID = "Qwen/Qwen-Image"
LATENT_CHANNELS = 4  # the real VAE has 16; the transformer takes 4 x this (2x2 patches)
VISION_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# the words of QwenImagePipeline's system prompt, so its template reads as whole words here too
TEMPLATE_WORDS = (
    "system user assistant describe image by detailing color shape size texture quantity text spatial "
    "relationships objects background"
).split(" ")
# Qwen-Image's published scheduler_config.json (exponential time shift by image size, shift_terminal)
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}


def build_tiny_qwen_image() -> Any:
    """A tiny QwenImagePipeline; VAE scale factor 4, so the model card's 1328 (166 latent pixels at
    the real factor 8) is 664 here."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from easel.testing.tiny_qwen_tokenizer import build_qwen_tokenizer

    torch.manual_seed(20)
    tokenizer = build_qwen_tokenizer([*CAPTION_WORDS, *TEMPLATE_WORDS], extra_special=VISION_TOKENS)
    token = tokenizer.convert_tokens_to_ids
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=6 * LATENT_CHANNELS,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 2.0, 1.2, 2.5],
    )
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "bos_token_id": token("<|endoftext|>"),  # as Qwen2.5-VL's: end of text, and the chat turn's end
            "eos_token_id": token("<|im_end|>"),
            "pad_token_id": token("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": 16,
        },
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def install_tiny_qwen_image(hf_home: Path) -> dict[str, Path]:
    """Install the tiny Qwen-Image under its real repo id; id -> snapshot."""
    return {QWEN_IMAGE_ID: install_into_hf_cache(build_tiny_qwen_image(), hf_home, QWEN_IMAGE_ID)}

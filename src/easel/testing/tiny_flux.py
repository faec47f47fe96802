"""Tiny, randomly initialised FLUX.1 models (dev and schnell), installed under the real repo ids.

The recipe diffusers 0.42 accepts on CPU (checked here): a FluxTransformer2DModel whose
in_channels are 4 x the VAE's latent channels (FLUX packs 2x2 latent patches), an AutoencoderKL
without quant convolutions (FLUX's has none), a tiny CLIPTextModel and CLIP tokenizer as the SD tiny
models have, and a tiny T5EncoderModel with a T5 tokenizer built offline (a Unigram vocabulary of
whole words and single characters, Metaspace pre-tokenizer: what transformers 5's T5Tokenizer
builds from a vocabulary). `guidance_embeds=True` makes the transformer a "dev" (distilled guidance
input), False a "schnell". Built after torch.manual_seed so every install is bit-identical.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from easel.testing.tiny_models import (
    CAPTION_WORDS,
    _tiny_clip_text_config,
    _tiny_tokenizer,
    install_into_hf_cache,
)

FLUX_DEV_ID = "black-forest-labs/FLUX.1-dev"
FLUX_SCHNELL_ID = "black-forest-labs/FLUX.1-schnell"
FLUX_KONTEXT_ID = "black-forest-labs/FLUX.1-Kontext-dev"
LATENT_CHANNELS = 4  # the real VAE has 16; the transformer takes 4 x this (2x2 patches)
T5_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789,.:;!?()[]+-'\""
# the tiny FluxTransformer2DModel's shape (its tiny ControlNets, easel.testing.tiny_dit_controlnets, share it)
TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 4 * LATENT_CHANNELS,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": (4, 6, 6),
}


def build_t5_tokenizer(words: list[str]) -> Any:
    """A T5Tokenizer (Unigram, <pad>=0, </s>=1, <unk>=2) with a whole-word piece for each of
    `words` (as "▁word") and single-character pieces for everything else; no download."""
    from transformers import T5Tokenizer

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{word}", -1.0) for word in dict.fromkeys(w.lower() for w in words)]
    vocab += [(character, -5.0) for character in T5_CHARACTERS]
    vocab += [(f"▁{character}", -5.5) for character in T5_CHARACTERS]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    with tempfile.TemporaryDirectory() as scratch:  # what loading it from a repo gives
        tokenizer.save_pretrained(scratch)
        return T5Tokenizer.from_pretrained(scratch)


def tiny_flow_vae(latent_channels: int, *, scaling_factor: float, shift_factor: float = 0.0609) -> Any:
    """A 2-block AutoencoderKL (scale factor 2) without quant convolutions and with a shift factor,
    as the FLUX.1, SD 3.5 and Z-Image VAEs are."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
    )


def tiny_t5_encoder(tokenizer: Any, *, width: int) -> Any:
    """A 2-layer T5EncoderModel of `width` (d_model) for `tokenizer` (build_t5_tokenizer's)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=width,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )


def build_tiny_flux(*, dev: bool, seed: int | None = None) -> Any:
    """A tiny FluxPipeline: dev (guidance_embeds=True) or schnell (False); 2-block VAE (scale
    factor 2), so its native size by diffusers' rule (default_sample_size 128 x 2) is 256."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed if seed is not None else 10 if dev else 11)
    transformer = FluxTransformer2DModel(**TRANSFORMER_CONFIG, guidance_embeds=dev)
    vae = tiny_flow_vae(LATENT_CHANNELS, scaling_factor=1.5035)
    tokenizer = _tiny_tokenizer()
    text_encoder = CLIPTextModel(_tiny_clip_text_config(tokenizer))
    tokenizer_2 = build_t5_tokenizer(list(CAPTION_WORDS))
    text_encoder_2 = tiny_t5_encoder(tokenizer_2, width=32)
    # the published schedulers: dev shifts its sigmas by resolution, schnell does not
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0 if dev else 1.0,
        use_dynamic_shifting=dev,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def install_tiny_flux(hf_home: Path) -> dict[str, Path]:
    """Install the tiny FLUX.1-dev and FLUX.1-schnell under their real repo ids; id -> snapshot."""
    return {
        FLUX_DEV_ID: install_into_hf_cache(build_tiny_flux(dev=True), hf_home, FLUX_DEV_ID),
        FLUX_SCHNELL_ID: install_into_hf_cache(build_tiny_flux(dev=False), hf_home, FLUX_SCHNELL_ID),
    }


def build_tiny_flux_kontext() -> Any:
    """A tiny FluxKontextPipeline: FLUX.1 Kontext loads the same components as FLUX.1-dev (its
    transformer reads the reference latents as more tokens of the same sequence), with weights of
    its own (another seed), so it is told apart from the tiny dev by its model_index.json only."""
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**build_tiny_flux(dev=True, seed=12).components)


def install_tiny_flux_kontext(hf_home: Path) -> dict[str, Path]:
    """Install the tiny FLUX.1 Kontext [dev] under its real repo id; id -> snapshot."""
    return {FLUX_KONTEXT_ID: install_into_hf_cache(build_tiny_flux_kontext(), hf_home, FLUX_KONTEXT_ID)}


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def write_tiny_shared_flux_lora(
    transformer: Any, path: Path, *, layout: Literal["kohya", "xlabs"], seed: int = 0, rank: int = 2
) -> Path:
    """A random LoRA for `transformer`'s double-block attention in a layout FLUX LoRAs are shared in,
    which diffusers converts as it loads it: kohya-ss (BFL block names,
    `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, `.lora_up.weight`, `.alpha`) or XLabs
    (`double_blocks.0.processor.qkv_lora1.down.weight`, `proj_lora2.up.weight`: 1 the image stream,
    2 the text stream). One fused q/k/v matrix per stream in both."""
    import torch
    from safetensors.torch import save_file

    config = transformer.config
    inner = config.num_attention_heads * config.attention_head_dim
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for block in range(config.num_layers):
        for stream, number in (("img", 1), ("txt", 2)):
            for part, outputs in (("qkv", 3 * inner), ("proj", inner)):
                down = torch.randn(rank, inner, generator=generator) * 0.3
                up = torch.randn(outputs, rank, generator=generator) * 0.3
                if layout == "kohya":
                    name = f"lora_unet_double_blocks_{block}_{stream}_attn_{part}"
                    tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
                    tensors[f"{name}.alpha"] = torch.tensor(float(rank))
                else:
                    name = f"double_blocks.{block}.processor.{part}_lora{number}"
                    tensors |= {f"{name}.down.weight": down, f"{name}.up.weight": up}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path


def write_tiny_flux_lora(pipe: Any, path: Path, *, seed: int = 0, rank: int = 2, scale: float = 0.5) -> Path:
    """A random LoRA for `pipe`'s transformer attention in the layout diffusers'
    FluxPipeline.save_lora_weights writes (`transformer.<module>.lora_A.weight`, `lora_B`)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for name, layer in pipe.transformer.named_modules():
        if isinstance(layer, torch.nn.Linear) and name.endswith(LORA_TARGETS):
            tensors[f"transformer.{name}.lora_A.weight"] = (
                torch.randn(rank, layer.in_features, generator=generator) * scale
            )
            tensors[f"transformer.{name}.lora_B.weight"] = (
                torch.randn(layer.out_features, rank, generator=generator) * scale
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path

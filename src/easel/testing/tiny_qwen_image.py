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

import shutil
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
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    from easel.testing.tiny_qwen_tokenizer import build_qwen_tokenizer

    torch.manual_seed(20)
    tokenizer = build_qwen_tokenizer([*CAPTION_WORDS, *TEMPLATE_WORDS], extra_special=VISION_TOKENS)
    transformer = _tiny_transformer()
    vae = _tiny_vae(dim_mult=[1, 2, 4], base_dim=6 * LATENT_CHANNELS)
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=_tiny_text_encoder(tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    )


def _tiny_transformer() -> Any:
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(
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


def _tiny_vae(*, dim_mult: list[int], base_dim: int) -> Any:
    """An AutoencoderKLQwenImage with LATENT_CHANNELS channels; scale factor 2 ** (len(dim_mult) - 1)."""
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(
        base_dim=base_dim,
        z_dim=LATENT_CHANNELS,
        dim_mult=dim_mult,
        num_res_blocks=1,
        temperal_downsample=[False, *([True] * (len(dim_mult) - 2))],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 2.0, 1.2, 2.5],
    )


def _tiny_text_encoder(tokenizer: Any) -> Any:
    """A Qwen2_5_VLForConditionalGeneration with a small text model and a small vision tower (the
    Edit pipelines read the reference images through it; QwenImagePipeline only the text side)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    token = tokenizer.convert_tokens_to_ids
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
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def install_tiny_qwen_image(hf_home: Path) -> dict[str, Path]:
    """Install the tiny Qwen-Image under its real repo id; id -> snapshot."""
    return {QWEN_IMAGE_ID: install_into_hf_cache(build_tiny_qwen_image(), hf_home, QWEN_IMAGE_ID)}


# -- the Edit models ------------------------------------------------------------------------------------

QWEN_IMAGE_EDIT_ID = "Qwen/Qwen-Image-Edit"
QWEN_IMAGE_EDIT_2509_ID = "Qwen/Qwen-Image-Edit-2509"
EDIT_PIPELINES = {
    QWEN_IMAGE_EDIT_ID: "QwenImageEditPipeline",
    QWEN_IMAGE_EDIT_2509_ID: "QwenImageEditPlusPipeline",
}
# the words of the Edit pipelines' system prompt, and the Plus pipeline's "Picture N:" labels
EDIT_TEMPLATE_WORDS = (
    "describe the key features of input image color shape size texture objects background then explain how "
    "user's text instruction should alter or modify generate new that meets requirements while maintaining "
    "consistency with original where appropriate picture"
).split(" ")
# The Edit pipelines encode every reference at a fixed ~1 megapixel (VAE_IMAGE_SIZE, a module constant):
# a VAE with scale factor 32 and 2 base channels keeps that cheap (32x32 latents) on a CPU
EDIT_VAE = {"dim_mult": [1, 2, 4, 4, 4, 4], "base_dim": 2}
# the published processor/preprocessor_config.json's sizes (Qwen2.5-VL's image processor)
IMAGE_PROCESSOR_CONFIG = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
                          "temporal_patch_size": 2}  # fmt: skip


def build_tiny_edit_processor() -> Any:
    """The tiny Edit models' image-only processor: the offline Qwen tokenizer (caption words, both
    system prompts' words, the vision tokens) and the PIL image processor with the published sizes."""
    from transformers import Qwen2VLImageProcessorPil

    from easel.families.qwen_processor import QwenImageOnlyProcessor
    from easel.testing.tiny_qwen_tokenizer import build_qwen_tokenizer

    words = [*CAPTION_WORDS, *TEMPLATE_WORDS, *EDIT_TEMPLATE_WORDS]
    tokenizer = build_qwen_tokenizer(words, extra_special=VISION_TOKENS)
    image_processor = Qwen2VLImageProcessorPil(**IMAGE_PROCESSOR_CONFIG)
    return QwenImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_processor_as_published(processor: Any, folder: Path) -> None:
    """Save `processor` into `folder` as the published Edit repos' processor/ folders are laid out:
    tokenizer files, preprocessor_config.json and video_preprocessor_config.json (transformers 5 would
    write one processor_config.json), each naming Qwen2VLProcessor."""
    import json

    processor.save_pretrained(folder)
    saved = json.loads((folder / "processor_config.json").read_text("utf-8"))
    (folder / "processor_config.json").unlink()
    image = {**saved["image_processor"], "image_processor_type": "Qwen2VLImageProcessor"}
    image.update(min_pixels=image["size"]["shortest_edge"], max_pixels=image["size"]["longest_edge"])
    video = {**image, "video_processor_type": "Qwen2VLVideoProcessor"}
    del video["image_processor_type"]
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text("utf-8"))
    for name, config in (("preprocessor_config.json", image), ("video_preprocessor_config.json", video),
                         ("tokenizer_config.json", tokenizer)):  # fmt: skip
        config = {**config, "processor_class": "Qwen2VLProcessor"}
        (folder / name).write_text(json.dumps(config, indent=2), encoding="utf-8")


def build_tiny_qwen_image_edit() -> dict[str, Any]:
    """The components of a tiny Qwen-Image-Edit pipeline (both Edit pipeline classes take the same):
    Qwen-Image's tiny transformer and text encoder (whose vision tower reads the references), a VAE of
    scale factor 32, and the image-only processor (tokenizer + PIL image processor) as `processor`."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(21)
    processor = build_tiny_edit_processor()
    tokenizer = processor.tokenizer
    transformer = _tiny_transformer()
    vae = _tiny_vae(**EDIT_VAE)  # type: ignore[arg-type]
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        "vae": vae,
        "text_encoder": _tiny_text_encoder(tokenizer),
        "tokenizer": tokenizer,
        "processor": processor,
        "transformer": transformer,
    }


def install_tiny_qwen_image_edit(hf_home: Path) -> dict[str, Path]:
    """Install the tiny Qwen-Image-Edit and Qwen-Image-Edit-2509 under their real repo ids, their
    processor recorded as the published repos record it (model_index.json: transformers
    Qwen2VLProcessor; processor/ holds the tokenizer and preprocessor_config.json); id -> snapshot."""
    import json

    import diffusers

    components = build_tiny_qwen_image_edit()
    installed = {}
    for repo_id, class_name in EDIT_PIPELINES.items():
        snapshot = install_into_hf_cache(getattr(diffusers, class_name)(**components), hf_home, repo_id)
        index_path = snapshot / "model_index.json"
        index = json.loads(index_path.read_text("utf-8"))
        index["processor"] = ["transformers", "Qwen2VLProcessor"]
        index_path.write_text(json.dumps(index, indent=2), encoding="utf-8")
        shutil.rmtree(snapshot / "processor")  # saved the transformers 5 way: written again as published
        save_processor_as_published(components["processor"], snapshot / "processor")
        installed[repo_id] = snapshot
    return installed

"""Tiny, randomly initialised diffusers models, installed into a Hugging Face cache.

Why: tests must exercise the exact code path users take (`from_pretrained("org/name")`
through the HF cache, offline) without multi-GB downloads. The components follow the
configs diffusers' own test-suite uses (UNet (32, 64) blocks, 2-block VAE, 32-wide CLIP),
built after torch.manual_seed(0) so every install is bit-identical.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Literal

from easel.testing.tokenizer import write_clip_tokenizer

SD15_IDS = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5")
CAPTION_WORDS = (
    "a an the on of in with and red green blue yellow white black orange purple "
    "circle square triangle background photo cat dog astronaut jungle"
).split(" ")

SafetyMode = Literal["never", "always", "none"]


def build_tiny_sd15(safety: SafetyMode = "never") -> Any:
    """A tiny StableDiffusionPipeline (64x64 native size) with a safety checker that
    flags nothing ("never"), everything ("always"), or no checker at all ("none")."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=32,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(scratch), list(CAPTION_WORDS)))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            projection_dim=32,
        )
    )
    safety_checker, feature_extractor = (None, None) if safety == "none" else _tiny_safety_checker(safety)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=safety != "none",
    )


def _tiny_safety_checker(mode: SafetyMode) -> tuple[Any, Any]:
    """A StableDiffusionSafetyChecker whose thresholds make it flag never or always.

    The checker flags an image when cosine similarity minus a concept's threshold is > 0;
    similarities lie in [-1, 1], so thresholds of +/-10 decide the outcome for any image.
    """
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "vocab_size": 1000,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config)
    threshold = 10.0 if mode == "never" else -10.0
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    return checker, processor


def install_into_hf_cache(
    pipeline: Any, hf_home: Path, repo_id: str, extra_files: dict[str, str] | None = None
) -> Path:
    """save_pretrained into `$HF_HOME/hub/models--ORG--NAME/snapshots/<rev>` + refs/main,
    the layout huggingface_hub resolves offline; returns the snapshot folder."""
    repo_dir = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / revision
    if snapshot.exists():
        shutil.rmtree(snapshot)
    pipeline.save_pretrained(snapshot, safe_serialization=True)
    for name, text in (extra_files or {}).items():
        (snapshot / name).write_text(text, encoding="utf-8")
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def install_tiny_sd15(
    hf_home: Path, repo_ids: tuple[str, ...] = SD15_IDS, safety: SafetyMode = "never"
) -> list[Path]:
    """Build the tiny SD 1.5 once and install it under each of `repo_ids`."""
    pipeline = build_tiny_sd15(safety)
    return [install_into_hf_cache(pipeline, hf_home, repo_id) for repo_id in repo_ids]

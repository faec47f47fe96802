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
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = _tiny_sd15_unet()
    vae = _tiny_vae(norm_num_groups=32)
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


def _tiny_sd15_unet(in_channels: int = 4) -> Any:
    """diffusers' tiny SD UNet; in_channels=9 (latents, mask, masked-image latents) makes it a
    dedicated inpainting UNet."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )


def _tiny_vae(**config: Any) -> Any:
    """diffusers' tiny 2-block AutoencoderKL (vae scale factor 2), with `config` on top."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        **config,
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


SDXL_BASE_ID = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_REFINER_ID = "stabilityai/stable-diffusion-xl-refiner-1.0"
KANDINSKY_DECODER_ID = "kandinsky-community/kandinsky-2-2-decoder"
KANDINSKY_PRIOR_ID = "kandinsky-community/kandinsky-2-2-prior"
KANDINSKY_DECODER_CARD = f"""---
license: apache-2.0
prior:
- {KANDINSKY_PRIOR_ID}
tags:
- text-to-image
- kandinsky
---

# Tiny random Kandinsky 2.2 decoder (easel tests)

Randomly initialised; its prior is named in the front matter, as on the real model card.
"""


def _tiny_tokenizer() -> Any:
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        return CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(scratch), list(CAPTION_WORDS)))


def _tiny_clip_text_config(tokenizer: Any, layers: int = 2) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=layers,
        vocab_size=len(tokenizer),
        hidden_act="gelu",
        projection_dim=32,
    )


def _tiny_sdxl_unet(*, refiner: bool, in_channels: int = 4) -> Any:
    """diffusers' SDXL test UNet: text_time added embeddings of 6 (base) or 5 (refiner:
    no target size, an aesthetic score instead) x 8 time features + the 32-wide pooled text;
    in_channels=9 makes it a dedicated inpainting UNet."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=(5 if refiner else 6) * 8 + 32,
        cross_attention_dim=32 if refiner else 64,  # refiner: text_encoder_2 only
        norm_num_groups=1,
    )


def build_tiny_sdxl() -> Any:
    """A tiny StableDiffusionXLPipeline (64x64 native size), Euler scheduler like the real one."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = _tiny_sdxl_unet(refiner=False)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )
    vae = _tiny_vae(sample_size=128)
    tokenizer = _tiny_tokenizer()
    text_encoder = CLIPTextModel(_tiny_clip_text_config(tokenizer))
    tokenizer_2 = _tiny_tokenizer()
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_text_config(tokenizer_2))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def build_tiny_sdxl_refiner(base: Any) -> Any:
    """A tiny refiner (StableDiffusionXLImg2ImgPipeline, requires_aesthetics_score, no first
    text encoder) whose VAE and second text encoder are the base's, as on the hub."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    torch.manual_seed(1)
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer_2=base.tokenizer_2,
        unet=_tiny_sdxl_unet(refiner=True),
        scheduler=type(base.scheduler).from_config(base.scheduler.config),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


def install_tiny_sdxl(hf_home: Path) -> tuple[Path, Path]:
    """Install the tiny SDXL base and refiner under their real repo ids."""
    base = build_tiny_sdxl()
    refiner = build_tiny_sdxl_refiner(base)
    return (
        install_into_hf_cache(base, hf_home, SDXL_BASE_ID),
        install_into_hf_cache(refiner, hf_home, SDXL_REFINER_ID),
    )


def build_tiny_kandinsky_prior() -> Any:
    """A tiny KandinskyV22PriorPipeline (32-wide CLIP embeddings), per diffusers' tests."""
    import torch
    from diffusers import KandinskyV22PriorPipeline, PriorTransformer, UnCLIPScheduler
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    tokenizer = _tiny_tokenizer()
    text_encoder = CLIPTextModelWithProjection(_tiny_clip_text_config(tokenizer))
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1)
    with torch.no_grad():  # zeros would map every embedding to the mean
        prior.clip_std.fill_(1.0)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            image_size=32,
            projection_dim=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_channels=3,
            num_hidden_layers=2,
            patch_size=8,
        )
    )
    image_processor = CLIPImageProcessor(
        crop_size=32,
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
        size=32,
    )
    scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    return KandinskyV22PriorPipeline(
        prior=prior,
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        image_processor=image_processor,
    )


def build_tiny_kandinsky_decoder(in_channels: int = 4) -> Any:
    """A tiny KandinskyV22Pipeline: image-embedding UNet + 4-block MoVQ (8x downscale);
    in_channels=9 (latents, masked-image latents, mask): a KandinskyV22InpaintPipeline."""
    import torch
    from diffusers import (
        DDIMScheduler,
        KandinskyV22InpaintPipeline,
        KandinskyV22Pipeline,
        UNet2DConditionModel,
        VQModel,
    )

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        in_channels=in_channels,
        out_channels=8,  # predicts mean and variance
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        encoder_hid_dim=32,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=32,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    )
    movq = VQModel(
        block_out_channels=[32, 32, 64, 64],
        down_block_types=[
            "DownEncoderBlock2D",
            "DownEncoderBlock2D",
            "DownEncoderBlock2D",
            "AttnDownEncoderBlock2D",
        ],
        in_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        out_channels=3,
        up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        vq_embed_dim=4,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        thresholding=False,
    )
    pipeline_class = KandinskyV22InpaintPipeline if in_channels == 9 else KandinskyV22Pipeline
    return pipeline_class(unet=unet, scheduler=scheduler, movq=movq)


def install_tiny_kandinsky(hf_home: Path) -> tuple[Path, Path]:
    """Install the tiny Kandinsky 2.2 prior and decoder under their real repo ids; the
    decoder's README.md names the prior, as the real model card does."""
    return (
        install_into_hf_cache(
            build_tiny_kandinsky_decoder(),
            hf_home,
            KANDINSKY_DECODER_ID,
            {"README.md": KANDINSKY_DECODER_CARD},
        ),
        install_into_hf_cache(build_tiny_kandinsky_prior(), hf_home, KANDINSKY_PRIOR_ID),
    )


SD15_CONTROLNET_IDS = (
    "lllyasviel/control_v11p_sd15_openpose",
    "lllyasviel/sd-controlnet-canny",
    "lllyasviel/control_v11f1p_sd15_depth",
)
SDXL_CONTROLNET_IDS = ("diffusers/controlnet-canny-sdxl-1.0",)


def build_tiny_controlnet(unet: Any, seed: int) -> Any:
    """ControlNetModel.from_unet on a tiny UNet, its zero convolutions randomised.

    Why randomised: a fresh ControlNet's output convolutions are zero, so it changes nothing
    and a test could not tell a working ControlNet from an ignored one. The conditioning
    embedding downsamples 2x (two channel stages), matching the tiny VAE's scale factor."""
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    generator = torch.Generator("cpu").manual_seed(seed)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    zero_convs.append(controlnet.controlnet_cond_embedding.conv_out)
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.1)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
    return controlnet


def install_tiny_controlnets(hf_home: Path) -> dict[str, Path]:
    """Tiny ControlNets for the tiny SD 1.5 and SDXL bases, under real ControlNet repo ids
    (each id a differently seeded model); returns id -> snapshot folder."""
    installed: dict[str, Path] = {}
    for bases, builder in ((SD15_CONTROLNET_IDS, build_tiny_sd15), (SDXL_CONTROLNET_IDS, build_tiny_sdxl)):
        unet = builder().unet
        for offset, repo_id in enumerate(bases):
            controlnet = build_tiny_controlnet(unet, seed=100 + offset)
            installed[repo_id] = install_into_hf_cache(controlnet, hf_home, repo_id)
    return installed


SD15_INPAINT_ID = "stable-diffusion-v1-5/stable-diffusion-inpainting"
SDXL_INPAINT_ID = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
KANDINSKY_INPAINT_ID = "kandinsky-community/kandinsky-2-2-decoder-inpaint"


def build_tiny_sd15_inpaint() -> Any:
    """A tiny dedicated SD 1.5 inpainting model: StableDiffusionInpaintPipeline (its
    model_index names it) with a 9-channel UNet, the tiny SD 1.5's other components."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    base = build_tiny_sd15("never")
    torch.manual_seed(2)
    return StableDiffusionInpaintPipeline(**{**base.components, "unet": _tiny_sd15_unet(in_channels=9)})


def build_tiny_sdxl_inpaint() -> Any:
    """A tiny dedicated SDXL inpainting model (StableDiffusionXLInpaintPipeline, 9-channel UNet),
    as diffusers/stable-diffusion-xl-1.0-inpainting-0.1 is."""
    import torch
    from diffusers import StableDiffusionXLInpaintPipeline

    base = build_tiny_sdxl()
    torch.manual_seed(2)
    unet = _tiny_sdxl_unet(refiner=False, in_channels=9)
    return StableDiffusionXLInpaintPipeline(**{**base.components, "unet": unet}, add_watermarker=False)


def install_tiny_inpainting(hf_home: Path) -> dict[str, Path]:
    """Install the tiny dedicated inpainting models under their real repo ids (the Kandinsky
    inpainting decoder's model card names its prior, as the real one does); id -> snapshot."""
    return {
        SD15_INPAINT_ID: install_into_hf_cache(build_tiny_sd15_inpaint(), hf_home, SD15_INPAINT_ID),
        SDXL_INPAINT_ID: install_into_hf_cache(build_tiny_sdxl_inpaint(), hf_home, SDXL_INPAINT_ID),
        KANDINSKY_INPAINT_ID: install_into_hf_cache(
            build_tiny_kandinsky_decoder(in_channels=9),
            hf_home,
            KANDINSKY_INPAINT_ID,
            {"README.md": KANDINSKY_DECODER_CARD},
        ),
    }

"""Qwen-Image (Qwen/Qwen-Image): an MMDiT reading a Qwen2.5-VL text encoder, with a video-style VAE.

What differs from the SD families, and what easel does about it:

- model_index.json says QwenImagePipeline (img2img: QwenImageImg2ImgPipeline, inpainting:
  QwenImageInpaintPipeline, both from_pipe on the base). The Edit models (QwenImageEditPipeline,
  QwenImageEditPlusPipeline) are their own families, task `edit` with reference images, loaded with an
  image-only processor (easel.families.qwen_image_edit).
- `guidance_scale` is real classifier-free guidance: it goes to the pipeline's `true_cfg_scale` (two
  transformer evaluations a step, the negative prompt's and the prompt's). The pipeline's own
  `guidance_scale` is for guidance-distilled variants only (the base transformer has no guidance
  embedding and ignores it), so easel never passes it. Defaults from the model card: 50 steps,
  guidance (true CFG) 4.0.
- The pipeline runs CFG only when it is given a negative prompt (`do_true_cfg`), so with guidance
  above 1 and no negative prompt easel passes " ", as the model card does: the guidance a request
  records is always the guidance that ran. At guidance 1 or below there is no CFG and a negative
  prompt would be ignored: it is refused, naming negative_prompt (as for SD 3.5).
- Prompts are plain text for Qwen2.5-VL (the pipeline wraps them in its ChatML template): weighting
  and BREAK, prompt editing, clip skip, the SD samplers, variation seeds, tiling, the hires fix, the
  latent masked-content fills and textual inversion are refused by name (FLUX.1's checks,
  shared). The text encoder reads max_sequence_length tokens of the prompt (512, the pipeline's
  default); token counts use the model's Qwen tokenizer, and a longer prompt gets a warning.
- LoRAs go through easel's adapter mechanism (diffusers' QwenImageLoraLoaderMixin loads them).
- ControlNet: QwenImageControlNetModel (InstantX/Qwen-Image-ControlNet-Union and single-purpose ones)
  with QwenImageControlNetPipeline, text-to-image, from_pipe on the base. The union model reads the
  kind of control from the image (no num_mode, no control_mode), so a unit's `mode` is refused.
  Several units run as QwenImageMultiControlNetModel, which diffusers runs for one union ControlNet
  over several images: units naming different ControlNets are refused (controls[i].model). Each unit
  has its scale and guidance start/end. QwenImageControlNetInpaintPipeline is refused (controls with a
  mask): it is not easel's inpainting (it denoises from noise, the masked picture only a ControlNet
  input, and it draws that input's VAE sample from the global generator), and the inpainting
  ControlNet it needs (config extra_condition_channels) is refused on text-to-image. A ControlNet for
  another base is refused from its config before its weights load (class, then patch, width, heads,
  text width, rope axes against the transformer); single files are refused as for FLUX.1 (diffusers
  reads QwenImageControlNetModel only with its config.json).
- Latents are packed (batch, sequence, 64) and the VAE's are 5-D (batch, channels, frames, h, w): live
  previews skip them (no picture, no failure); a non-finite decode is redone in float32 the way the
  pipeline decodes (latents_mean/std, the one frame).
- Native size: the model card's 1:1 size, 1328x1328 (166 latent pixels x the VAE's factor 8; the
  pipeline's own default, 128 x 8 = 1024, is not the size the card recommends). Sizes are multiples of 16
  (2x2 patches of the 8x VAE), as for FLUX.1.
- dtype auto on a GPU: bfloat16 (the model card's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest, UnsupportedFeature
from easel.families.base import INPAINTING_TASKS, Family
from easel.families.dit_control import refuse_mode, refuse_other_models
from easel.families.flux import FluxFamily
from easel.families.sd3 import NO_CFG, SD3Family

if TYPE_CHECKING:
    from collections.abc import Mapping

    from PIL.Image import Image

    from easel.models.reference import ModelSource
    from easel.request import GenerationRequest

NATIVE_LATENT_SIDE = 166  # the model card's 1328 pixels / the VAE's factor 8
EMPTY_NEGATIVE = " "  # the model card's negative prompt: what makes the pipeline run CFG without one


@dataclass(frozen=True)
class QwenImageFamily(SD3Family):
    """Qwen-Image: text-to-image, image-to-image and inpainting. Shares SD 3.5's real-CFG checks
    (a negative prompt is refused without CFG) and FLUX.1's refusals, size rule and packed-latent
    run; its own guidance argument (true_cfg_scale), tokenizer, native size and VAE decode."""

    title: str = "Qwen-Image"
    max_sequence_length: int = 512  # the pipeline's default (it refuses above 1024)
    t5_tokenizer: str = "tokenizer"  # its Qwen2 tokenizer: what token counts and warnings use
    window_encoder: str = "Qwen"
    clip_reads: str = ""  # no CLIP encoder
    encoders: str = "the Qwen2.5-VL text encoder"
    latents_note: str = "its latents are packed"
    native_size: str = "1328x1328"

    # what a Qwen-Image ControlNet shares with the transformer: the packed latents it reads, the width
    # and heads of the blocks its residuals are added to, the text width, the rope axes
    CONTROL_KEYS = (
        "in_channels",
        "patch_size",
        "attention_head_dim",
        "num_attention_heads",
        "joint_attention_dim",
        "axes_dims_rope",
    )

    def variant(self, source: ModelSource) -> Family:
        """One model (FluxFamily's variant would read FLUX's transformer config)."""
        return self

    def check_request(self, request: GenerationRequest) -> None:
        """SD 3.5's checks, then the ControlNet units' rule: several units share one ControlNet."""
        super().check_request(request)
        refuse_other_models(
            request,
            self.title,
            "diffusers' QwenImageMultiControlNetModel runs one union ControlNet over several control images",
        )

    def check_control(
        self,
        index: int,
        reference: str,
        config: Mapping[str, Any] | None,
        unet_config: Mapping[str, Any] | None = None,
        *,
        mode: int | str | None = None,
    ) -> None:
        """FLUX.1's checks (single file, class, dimensions) without its union mode, which Qwen-Image's
        ControlNets do not take; an inpainting ControlNet (extra_condition_channels: the masked picture
        and mask beside the latents) is refused, for its pipeline is not served."""
        refuse_mode(self.title, index, reference, mode)
        super().check_control(index, reference, config, unet_config)
        extra = int((config or {}).get("extra_condition_channels") or 0)
        if extra:
            field = f"controls[{index}].model"
            raise InvalidRequest(
                f"invalid {field}={reference!r}: it is an inpainting ControlNet (extra_condition_channels "
                f"{extra}: it reads a masked picture and its mask), which only "
                "QwenImageControlNetInpaintPipeline runs, and easel does not serve that; use a ControlNet "
                "for text-to-image",
                field=field,
                value=reference,
            )

    def combined_controlnet(self, controlnets: list[Any]) -> Any:
        """One unit: its ControlNet as is. Several (one model, as check_request makes sure): that
        ControlNet once in a QwenImageMultiControlNetModel, which runs it on each unit's image."""
        if len(controlnets) == 1:
            return controlnets[0]
        if any(net is not controlnets[0] for net in controlnets):  # check_request refuses this earlier
            raise UnsupportedFeature(f"{self.title} runs several control units on one ControlNet only")
        import diffusers

        return diffusers.QwenImageMultiControlNetModel([controlnets[0]])

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """The model card's 1328x1328: 166 latent pixels x the VAE's scale factor."""
        side = NATIVE_LATENT_SIDE * int(pipe.vae_scale_factor)
        return side, side

    def call_arguments(
        self, pipe: Any, request: GenerationRequest, init_image: Image | None
    ) -> dict[str, Any]:
        """SD 3.5's, with the guidance as true_cfg_scale and, when CFG runs without a negative prompt,
        the model card's " " so the pipeline does run it. One step is refused with a scheduler that
        stretches its sigmas to shift_terminal (Qwen-Image's): diffusers divides by zero there, NaN."""
        scheduler = getattr(pipe, "scheduler", None)
        if request.steps == 1 and scheduler is not None and scheduler.config.get("shift_terminal"):
            raise InvalidRequest(
                f"invalid steps=1: {self.title}'s scheduler stretches its sigmas to end at shift_terminal, "
                "which takes at least 2 steps (1 step gives NaN); use 2 or more",
                field="steps",
                value=1,
            )
        arguments = super().call_arguments(pipe, request, init_image)
        guidance = arguments.pop("guidance_scale")
        arguments["true_cfg_scale"] = guidance
        if guidance > NO_CFG and not arguments.get("negative_prompt"):
            arguments["negative_prompt"] = EMPTY_NEGATIVE
        return arguments

    run = FluxFamily.run  # the caught latents are packed (SD3Family.run takes them as they are)

    def decode_float32(self, pipe: Any, latents: Any) -> Any:
        """Decode unpacked (batch, channels, 1, h, w) latents in float32 as QwenImagePipeline does
        (latents_std, latents_mean; the one frame)."""
        import torch

        vae = pipe.vae
        original = vae.dtype
        try:
            vae.to(dtype=torch.float32)
            latents = latents.to(device=vae.device, dtype=torch.float32)
            shape = (1, int(vae.config.z_dim), 1, 1, 1)
            mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
            std = torch.tensor(vae.config.latents_std).view(shape).to(latents)
            with torch.inference_mode():
                image = vae.decode(latents * std + mean, return_dict=False)[0][:, :, 0]
                return pipe.image_processor.postprocess(image, output_type="np")
        finally:
            vae.to(dtype=original)


QWEN_IMAGE = QwenImageFamily(
    name="qwen_image",
    pipeline_classes=("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline"),
    single_file_types=(),
    text2img_class="QwenImagePipeline",
    img2img_class="QwenImageImg2ImgPipeline",
    tasks=INPAINTING_TASKS,
    inpaint_class="QwenImageInpaintPipeline",
    controlnet_text2img_class="QwenImageControlNetPipeline",
    control_classes=("QwenImageControlNetModel",),
    multi_controlnet_class="QwenImageMultiControlNetModel",
    denoiser="transformer",
    loras=True,  # QwenImageLoraLoaderMixin: transformer adapters
    default_steps=50,  # the model card's
    default_guidance=4.0,  # the model card's true_cfg_scale (real CFG)
    accelerator_dtype="bfloat16",  # the model card's
)

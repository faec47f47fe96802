"""Stable Diffusion 3.5 (medium, large, large turbo) and SD3 medium: an MMDiT reading CLIP-L,
CLIP-G and T5.

What differs from the SD families, and what easel does about it:

- All four models' model_index.json say StableDiffusion3Pipeline; variant() tells them apart from
  the transformer's config (a small JSON file, read before any weights load): 3.5 medium has
  `dual_attention_layers` (its MMDiT-X blocks), 3.5 large has `qk_norm` and none, SD3 medium
  neither. 3.5 large turbo has large's config exactly: it is told apart by its name (the repo id
  or folder name containing "turbo"), a documented fallback; the user's explicit steps and
  guidance always win over the defaults.
- Defaults, from the model cards: 3.5 medium 40 steps, guidance 4.5; 3.5 large 28 steps, 3.5;
  large turbo 4 steps, guidance 0 (no CFG); SD3 medium 28 steps, 7.0.
- guidance_scale is real classifier-free guidance (above 1 the pipeline runs the negative prompt
  beside the prompt); negative prompts go to all three encoders. At guidance 1 or below there is
  no CFG, so a negative prompt would be ignored: it is refused, naming negative_prompt.
- Prompts are plain text for the three encoders, as for FLUX.1 (its checks are shared): weighting
  and BREAK, prompt editing, the SD samplers, variation seeds, tiling, the hires fix, the latent
  masked-content fills and textual inversion are refused by name. T5 reads
  max_sequence_length tokens (256, diffusers' default); token counts use T5.
- ControlNet: SD3ControlNetModel (one, or several through SD3MultiControlNetModel) with
  StableDiffusion3ControlNetPipeline, text-to-image only (diffusers has no SD3 ControlNet img2img, and
  its SD3 ControlNet inpaint pipeline is for one inpainting ControlNet's 17-channel input): the other
  tasks refuse `controls` by name. The pipeline draws the control image's VAE sample from torch's
  global generator, so run() seeds it from the request's seed (inside fork_rng: nothing else moves).
- Clip skip (A1111's count, "Clip skip: N") goes to the pipeline's own `clip_skip` as N - 1: it picks
  the hidden state of both CLIP encoders (T5 is untouched), counted back from the penultimate layer
  the model reads by default. Z-Image and Qwen-Image (subclasses, no CLIP) still refuse it.
- LoRAs go through easel's adapter mechanism (diffusers' SD3LoraLoaderMixin loads them).
- Latents are (batch, 16, h/8, w/8): live previews use the least-squares fit of the VAE.
- Native size: diffusers' own rule, default_sample_size (128) x the VAE's scale factor (8): 1024.
- dtype auto on a GPU: bfloat16 (the model card's; float16 overflows in T5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easel.families.base import INPAINTING_TASKS, Family, Loaded, RunOutput
from easel.families.flux import FluxFamily, _refusal, _transformer_config

if TYPE_CHECKING:
    from collections.abc import Mapping

    from PIL.Image import Image

    from easel.models.reference import ModelSource
    from easel.request import GenerationRequest

NO_CFG = 1.0  # guidance_scale at or below this: the pipeline runs without classifier-free guidance


@dataclass(frozen=True)
class SD3Family(FluxFamily):
    """SD 3.5 / SD3: text-to-image, image-to-image and inpainting (StableDiffusion3Img2ImgPipeline
    and StableDiffusion3InpaintPipeline, from_pipe on the base). Shares FLUX.1's prompt handling,
    refusals, size rule and float32 re-decode (scaling, then shift); its own guidance, negative
    prompts and latents (not packed)."""

    title: str = "SD 3.5"
    distilled_guidance: bool = False  # unused here: guidance_scale is always real CFG
    max_sequence_length: int = 256
    t5_tokenizer: str = "tokenizer_3"
    latents_note: str = "not checked against its 16-channel latents yet"
    clip_reads: str = "s (CLIP-L and CLIP-G) read"
    cfg_threshold: float = NO_CFG  # guidance at or below this runs without CFG (Z-Image: 0)

    # what an SD3 ControlNet shares with the transformer: the latents it reads, the width and heads of
    # the blocks its residuals are added to, the pooled text; the text width only where it reads text
    # (SD 3.5 large's own ControlNets have joint_attention_dim null: no text input)
    CONTROL_KEYS = (
        "in_channels",
        "patch_size",
        "attention_head_dim",
        "num_attention_heads",
        "pooled_projection_dim",
    )
    CONTROL_KEYS_IF_SET = ("joint_attention_dim",)

    def variant(self, source: ModelSource) -> Family:
        """Medium, large, large turbo or SD3 medium, from the transformer's config (and, for turbo,
        the name); unreadable config: by name, else self."""
        name = f"{source.reference} {source.location}".lower()  # repo id, or the folder's path
        config = _transformer_config(source)
        if config is None:
            for marker, family in (("turbo", SD35_LARGE_TURBO), ("3.5-large", SD35_LARGE), ("3-medium", SD3)):
                if marker in name:
                    return family
            return self
        if config.get("dual_attention_layers"):
            return SD35_MEDIUM
        if config.get("qk_norm"):
            return SD35_LARGE_TURBO if "turbo" in name else SD35_LARGE
        return SD3

    def check_request(self, request: GenerationRequest) -> None:
        """Refuse, naming the field, what SD 3.5 here would otherwise ignore or break on."""
        self._check_no_true_cfg(request)
        Family.check_request(self, request)
        guidance = self.default_guidance if request.guidance_scale is None else request.guidance_scale
        if request.negative_prompt and guidance <= self.cfg_threshold:
            raise _refusal(
                "negative_prompt",
                f"negative_prompt: at guidance_scale={guidance:g} {self.title} runs without classifier-free "
                "guidance, so a negative prompt would be ignored; raise guidance_scale above "
                f"{self.cfg_threshold:g} or leave negative_prompt empty",
            )
        self._check_transformer_request(request)

    def _check_no_true_cfg(self, request: GenerationRequest) -> None:
        """FLUX.1's true_cfg_scale is what guidance_scale already is here (real CFG against the
        negative prompt; Qwen-Image's pipeline even calls it true_cfg_scale): refused, pointing to
        guidance_scale, rather than the generic family-field refusal."""
        if request.true_cfg_scale is not None:
            raise _refusal(
                "true_cfg_scale",
                f"true_cfg_scale={request.true_cfg_scale!r}: {self.title}'s guidance_scale already is real "
                "classifier-free guidance (the negative prompt's pass beside the prompt's); give the scale "
                "as guidance_scale and leave true_cfg_scale out",
            )

    def call_arguments(
        self, pipe: Any, request: GenerationRequest, init_image: Image | None
    ) -> dict[str, Any]:
        """FLUX.1's (sizes in multiples of 2 x the VAE factor: 2x2 patches), with real guidance
        and the negative prompt."""
        arguments = super().call_arguments(pipe, request, init_image)
        arguments.update(
            guidance_scale=request.guidance_scale, negative_prompt=request.negative_prompt or None
        )
        skip = self._clip_skip_argument(pipe, request)
        if skip is not None:
            arguments["clip_skip"] = skip
        return arguments

    def takes_clip_skip(self) -> bool:
        """SD 3.5's two CLIP encoders take clip skip (the pipeline's clip_skip); the subclasses
        without CLIP (clip_reads "": Z-Image, Qwen-Image) do not."""
        return bool(self.clip_reads)

    def _clip_skip_argument(self, pipe: Any, request: GenerationRequest) -> int | None:
        """diffusers' clip_skip for A1111's "Clip skip: N": N - 1 layers before the penultimate one
        both CLIP encoders give by default (None: no skip); refused, naming clip_skip, past the
        smaller encoder's depth."""
        if not self.takes_clip_skip():
            return None
        kind = "PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED"  # what the pipeline reads without clip_skip
        encoders = [
            (pipe.tokenizer, pipe.text_encoder, kind, True),
            (pipe.tokenizer_2, pipe.text_encoder_2, kind, True),
        ]
        return self.clip_skip_layers(request, encoders) or None

    def run(
        self,
        pipe: Any,
        arguments: dict[str, Any],
        *,
        request: GenerationRequest,
        companions: Mapping[str, Loaded],
    ) -> RunOutput:
        """Family.run (the latents are not packed: FluxFamily.run unpacks them). With a ControlNet,
        the pipeline samples the control image's latents from torch's global generator (no
        `generator` there): seeded from the request's seed inside fork_rng, so the same request
        gives the same pixels and the caller's random state is left as it was."""
        if "control_image" not in arguments:
            return Family.run(self, pipe, arguments, request=request, companions=companions)
        import torch

        kind = pipe.device.type
        # fork_rng always keeps the CPU generator; device_type names the accelerator's too (default cuda)
        with torch.random.fork_rng(device_type=kind if kind != "cpu" else "cuda"):
            torch.manual_seed(int(request.seed or 0))
            return Family.run(self, pipe, arguments, request=request, companions=companions)

    a1111_parameters = Family.a1111_parameters  # as Forge writes SD3: the plain "CFG scale" (real CFG)


SD3_CLASSES = (
    "StableDiffusion3Pipeline",
    "StableDiffusion3Img2ImgPipeline",
    "StableDiffusion3InpaintPipeline",
)


def _sd3(name: str, title: str, steps: int, guidance: float) -> SD3Family:
    return SD3Family(
        name=name,
        pipeline_classes=SD3_CLASSES,
        single_file_types=(),
        text2img_class="StableDiffusion3Pipeline",
        img2img_class="StableDiffusion3Img2ImgPipeline",
        tasks=INPAINTING_TASKS,
        inpaint_class="StableDiffusion3InpaintPipeline",
        controlnet_text2img_class="StableDiffusion3ControlNetPipeline",
        control_classes=("SD3ControlNetModel",),
        multi_controlnet_class="SD3MultiControlNetModel",
        denoiser="transformer",
        loras=True,  # SD3LoraLoaderMixin: transformer and CLIP text encoder adapters
        default_steps=steps,
        default_guidance=guidance,
        title=title,
        accelerator_dtype="bfloat16",  # the model card's; float16 gives NaNs in T5
    )


SD35_MEDIUM = _sd3("sd35_medium", "SD 3.5 Medium", 40, 4.5)
SD35_LARGE = _sd3("sd35_large", "SD 3.5 Large", 28, 3.5)
SD35_LARGE_TURBO = _sd3("sd35_large_turbo", "SD 3.5 Large Turbo", 4, 0.0)  # no CFG
SD3 = _sd3("sd3_medium", "SD3 Medium", 28, 7.0)

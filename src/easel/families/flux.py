"""FLUX.1 [dev] and [schnell]: a rectified-flow transformer reading CLIP-L (pooled) and T5.

What differs from the SD families, and what easel does about it:

- Both models' model_index.json say FluxPipeline; the transformer's `guidance_embeds` tells them
  apart (variant() reads transformer/config.json, a small JSON file, before any weights load).
- `guidance_scale` means, for FLUX.1-dev, its distilled-guidance input (the transformer is
  conditioned on it; one model evaluation per step, no CFG), default 3.5. FLUX.1-schnell is
  distilled to 4 steps without guidance: its guidance_scale is recorded as 1 (no guidance, as
  Forge writes "CFG scale: 1") and any other value is refused, never silently ignored.
- Negative prompts run with real classifier-free guidance, the request's `true_cfg_scale` (the
  name diffusers' FLUX pipelines give it, a family-only field): above 1 the pipeline evaluates the
  transformer twice a step, for the prompt and for negative_prompt (an empty one too: the
  unconditional text, as Forge's "CFG scale" runs it), so a step costs two passes. guidance_scale
  stays the distilled-guidance input beside it. A negative prompt without true_cfg_scale above 1
  would be ignored by the pipeline: refused, naming negative_prompt. diffusers' FLUX ControlNet
  img2img and inpaint pipelines have no true CFG: true_cfg_scale is refused there. Recorded as
  Forge writes it: "CFG scale: N" (the real CFG, 1 when off) and, for dev, "Distilled CFG Scale: M".
- Prompts are plain text for both encoders: weighting (Compel/A1111) and BREAK have nowhere to
  go and are refused, as are prompt editing/alternation and clip skip. T5 reads
  max_sequence_length tokens: 512 for dev, 256 for schnell (its model card's value); a longer
  prompt gets a warning saying how many tokens are dropped.
- LoRAs go through easel's adapter mechanism (diffusers' FluxLoraLoaderMixin loads them).
- ControlNet: FluxControlNetModel (InstantX, Shakker-Labs, XLabs layouts; several at once through
  FluxMultiControlNetModel) with FluxControlNetPipeline / FluxControlNetImg2ImgPipeline /
  FluxControlNetInpaintPipeline, from_pipe on the base. A ControlNet made for another base is refused
  from its config (class, then width, heads, text dimensions against the transformer) before its
  weights load. Union ControlNets (config num_mode) need each unit's `mode` (the control type);
  other ControlNets refuse it. A single .safetensors ControlNet is refused (diffusers reads FLUX
  ControlNets only with their config.json). The published FLUX ControlNets are trained on dev with
  its guidance input: on schnell (no guidance) their guidance input is dev's default, 3.5.
- Latents are packed (batch, sequence, 64): variation seeds, tiling, the hires fix, the latent
  masked-content fills and textual inversion are refused by name; live
  previews skip FLUX latents (no picture, no failure). Inpainting (FluxInpaintPipeline) takes
  easel's mask steps (blur, fill, only-masked crop, paste-back) as the SD families do.
- Native size: diffusers' own rule, default_sample_size (128) x the VAE's scale factor (8): 1024.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest, UnsupportedFeature
from easel.families.base import INPAINTING_TASKS, Family, Loaded, RunOutput, _catching_latents, _numpy_to_pil

if TYPE_CHECKING:
    from collections.abc import Mapping

    from PIL.Image import Image

    from easel.models.reference import ModelSource
    from easel.request import GenerationRequest

NO_GUIDANCE = 1.0  # what schnell records: Forge's "CFG scale: 1" (no guidance)
CONTROLNET_GUIDANCE = 3.5  # a FLUX ControlNet's guidance input on schnell: dev's default, as it was trained
REFUSED_AS_NONE = ("variation_seed", "variation_strength", "seed_resize_from")


def _refusal(field: str, message: str) -> UnsupportedFeature:
    error = UnsupportedFeature(message)
    error.field = field  # type: ignore[attr-defined]
    return error


@dataclass(frozen=True)
class FluxFamily(Family):
    """FLUX.1: text-to-image, image-to-image and inpainting (FluxImg2ImgPipeline and
    FluxInpaintPipeline, from_pipe on the base)."""

    title: str = "FLUX.1"
    distilled_guidance: bool = True  # dev: guidance_scale is the transformer's guidance input
    max_sequence_length: int = 512
    t5_tokenizer: str = "tokenizer_2"  # the pipeline's T5 tokenizer (SD 3.5: tokenizer_3)
    latents_note: str = "its latents are packed"  # why the latent-level features are not built
    clip_reads: str = " (its pooled embedding) reads"  # SD 3.5: both CLIPs' hidden states too; "": no CLIP
    encoders: str = "T5 and CLIP's pooled output"  # what reads the prompt, for the refusals' messages
    window_encoder: str = "T5"  # whose tokens the window counts (Qwen-Image: its Qwen tokenizer's)
    native_size: str = "1024x1024"  # for the hires refusal's advice
    controlnet_guidance: float | None = None  # schnell: the guidance input its ControlNets get

    # what a FLUX ControlNet shares with the transformer it steers: the packed latents it reads, the
    # width and heads of the blocks its residuals are added to, the text and pooled dimensions
    CONTROL_KEYS = (
        "in_channels",
        "patch_size",
        "attention_head_dim",
        "num_attention_heads",
        "joint_attention_dim",
        "pooled_projection_dim",
        "axes_dims_rope",
    )

    # -- detection ------------------------------------------------------------------------------

    def variant(self, source: ModelSource) -> Family:
        """dev or schnell, from the transformer's config (guidance_embeds); unreadable: self."""
        config = _transformer_config(source)
        if config is None:
            return self
        return FLUX_DEV if config.get("guidance_embeds", False) else FLUX_SCHNELL

    # -- checks -----------------------------------------------------------------------------------

    def check_request(self, request: GenerationRequest) -> None:
        """Refuse, naming the field, everything FLUX.1 here would otherwise ignore or break on."""
        super().check_request(request)
        title = self.title
        self._check_true_cfg(request)
        if not self.distilled_guidance and request.guidance_scale not in (None, NO_GUIDANCE):
            raise _refusal(
                "guidance_scale",
                f"guidance_scale={request.guidance_scale!r}: {title} is distilled to run without guidance, "
                f"so a guidance scale would be ignored; leave guidance_scale out (or at {NO_GUIDANCE:g})",
            )
        self._check_transformer_request(request)
        self._check_union_task(request)

    def _check_true_cfg(self, request: GenerationRequest) -> None:
        """A negative prompt runs only with real CFG (true_cfg_scale above 1; the pipeline would
        ignore it otherwise); real CFG is refused where diffusers' pipeline for the task has none
        (the FLUX ControlNet img2img and inpaint pipelines)."""
        if request.negative_prompt and not true_cfg(request):
            raise _refusal(
                "negative_prompt",
                f"negative_prompt: {self.title} runs a negative prompt only with real classifier-free "
                "guidance (its guidance_scale is a distilled input, not CFG), so without it the negative "
                f"prompt would be ignored; give true_cfg_scale above {NO_GUIDANCE:g} (two transformer passes "
                "a step) or leave negative_prompt empty",
            )
        if true_cfg(request) and request.controls and request.task in ("img2img", "inpaint"):
            raise _refusal(
                "true_cfg_scale",
                f"true_cfg_scale={request.true_cfg_scale!r}: diffusers' FLUX ControlNet {request.task} "
                "pipeline has no real CFG; leave true_cfg_scale out with controls there, or drop the init "
                "image",
            )

    def _check_union_task(self, request: GenerationRequest) -> None:
        """Union modes only for text-to-image: diffusers' FLUX ControlNet img2img and inpaint
        pipelines shape the mode for one image (a batch of two fails inside the ControlNet)."""
        for index, unit in enumerate(request.controls):
            if unit.mode is not None and request.task != "text2img":
                raise InvalidRequest(
                    f"invalid controls[{index}].mode={unit.mode!r}: union ControlNets (a control type) work "
                    f"with {self.title} text-to-image only here (diffusers' FLUX ControlNet {request.task} "
                    "pipeline gives the mode to one image of a batch); drop the init image, or use a "
                    "single-purpose ControlNet",
                    field=f"controls[{index}].mode",
                    value=unit.mode,
                )

    def _check_transformer_request(self, request: GenerationRequest) -> None:
        """The refusals FLUX.1 and SD 3.5 share: SD samplers, clip skip, the latent-level
        features (variation seeds, tiling, latent fills, hires) and prompt syntax."""
        title = self.title
        if request.scheduler is not None:
            raise _refusal(
                "scheduler",
                f"scheduler={request.scheduler!r}: {title} runs its own flow-matching Euler scheduler; the "
                "SD samplers do not apply; leave scheduler out",
            )
        if request.clip_skip not in (None, 1) and not self.takes_clip_skip():
            raise _refusal(
                "clip_skip",
                f"clip_skip={request.clip_skip}: {title} reads prompts with {self.encoders}, so clip skip "
                "does not apply; leave clip_skip out or at 1",
            )
        for name in REFUSED_AS_NONE:
            if getattr(request, name) not in (None, 0):
                raise _refusal(
                    name,
                    f"{name}={getattr(request, name)!r}: variation seeds are not built for {title} "
                    f"({self.latents_note}); variation seeds work with SD 1.x/2.x and SDXL models",
                )
        if request.tiling:
            raise _refusal(
                "tiling",
                f"tiling=True: seamless tiling is not built for {title} (its transformer has no "
                "convolutions to pad); tiling works with SD 1.x/2.x and SDXL models",
            )
        if request.is_inpaint and request.masked_content.startswith("latent_"):
            raise _refusal(
                "masked_content",
                f"masked_content={request.masked_content!r}: the latent fills are not built for {title} "
                f"({self.latents_note}); use original or fill",
            )
        if request.hires is not None:
            raise _refusal(
                "hires",
                f"hires: the hires fix is not built for {title} yet; generate at the size you want "
                f"(its native size is {self.native_size}) or upscale the result",
            )
        self._check_prompt_syntax(request)

    def _check_prompt_syntax(self, request: GenerationRequest) -> None:
        from easel.prompts.encoding import plan_prompt
        from easel.prompts.scheduling import parse_schedule

        for field, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
            if parse_schedule(text, request.prompt_syntax) is not None:
                raise _refusal(
                    field,
                    f"{field}={text!r} uses prompt editing or alternation ('[from:to:when]', '[a|b]'), which "
                    f"is not built for {self.title}; write one prompt",
                )
            if plan_prompt(text, request.prompt_syntax, field=field).weighted:
                raise _refusal(
                    field,
                    f"{field}={text!r} uses {request.prompt_syntax} weighting or BREAK syntax, which "
                    f"{self.title} cannot honour (it reads the plain text with {self.encoders}); remove the "
                    "weights or use prompt_syntax='plain'",
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
        """Family.check_control's class and dimension checks (no union mode there), then the
        union rule: a union ControlNet (config num_mode) needs `mode`, any other refuses it; a
        single file is refused (its config is unknown and diffusers cannot read one)."""
        field = f"controls[{index}].model"
        if config is None:
            raise InvalidRequest(
                f"invalid {field}={reference!r}: a single-file ControlNet cannot be loaded for {self.title} "
                f"(diffusers reads {' / '.join(self.control_classes)} only from a folder or hub repo with "
                "its config.json); give that folder or repo id",
                field=field,
                value=reference,
            )
        super().check_control(index, reference, config, unet_config)
        self.check_union_mode(index, reference, config, mode)

    def check_union_mode(
        self, index: int, reference: str, config: Mapping[str, Any], mode: int | str | None
    ) -> None:
        """A union ControlNet steers by one of its num_mode control types, which the unit must name;
        a ControlNet without num_mode has none to pick."""
        field = f"controls[{index}].mode"
        count = config.get("num_mode")
        if count is None:
            if mode is not None:
                raise InvalidRequest(
                    f"invalid {field}={mode!r}: {reference!r} is not a union ControlNet (its config has no "
                    "num_mode), so it takes no control type; leave mode out",
                    field=field,
                    value=mode,
                )
            return
        if mode is None:
            raise InvalidRequest(
                f"invalid {field}=None: {reference!r} is a union ControlNet ({count} control types), so "
                f"each unit must say which: give mode, an index below {count} or a name "
                f"({', '.join(_union_modes())})",
                field=field,
                value=mode,
            )
        if union_mode_index(mode) >= int(count):
            raise InvalidRequest(
                f"invalid {field}={mode!r}: {reference!r} has {count} control types (0 to {int(count) - 1})",
                field=field,
                value=mode,
            )

    def control_base_config(self, pipe: Any) -> dict[str, Any]:
        """The transformer's config: the ControlNet's residuals are added to its blocks."""
        return dict(pipe.transformer.config)

    def control_arguments(
        self, request: GenerationRequest, control_images: list[Any], *, img2img: bool
    ) -> dict[str, Any]:
        """Family.control_arguments, with the images always as `control_image` (FLUX's ControlNet
        pipelines keep `image` for the init image), each union unit's mode as `control_mode`, and,
        on schnell, the ControlNet's guidance input (controlnet_guidance)."""
        arguments = super().control_arguments(request, control_images, img2img=True)
        if not arguments:
            return arguments
        modes = [None if unit.mode is None else union_mode_index(unit.mode) for unit in request.controls]
        if any(mode is not None for mode in modes):
            arguments["control_mode"] = modes[0] if len(modes) == 1 else modes
        if self.controlnet_guidance is not None:
            arguments["guidance_scale"] = self.controlnet_guidance
        return arguments

    def takes_clip_skip(self) -> bool:
        """Whether clip skip reaches an encoder: FLUX.1 reads only CLIP's pooled output (no hidden
        states to skip), so no; SD 3.5 says yes."""
        return False

    def token_window(self) -> tuple[str, int] | None:
        """T5 (tokenizer_2; SD 3.5: tokenizer_3) reads one window of max_sequence_length tokens;
        CLIP reads only its first 77, so T5's count is the one that says what is dropped."""
        return self.t5_tokenizer, self.max_sequence_length

    # -- running ----------------------------------------------------------------------------------

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """diffusers' own default: default_sample_size x the VAE scale factor (1024 for FLUX.1)."""
        side = int(pipe.default_sample_size) * int(pipe.vae_scale_factor)
        return side, side

    def call_arguments(
        self, pipe: Any, request: GenerationRequest, init_image: Image | None
    ) -> dict[str, Any]:
        # FLUX packs 2x2 latent patches: diffusers would silently shrink any other size
        multiple = 2 * int(pipe.vae_scale_factor)  # 16 for FLUX.1's VAE
        for field in ("width", "height"):
            value = getattr(request, field)
            if value is not None and value % multiple:
                raise InvalidRequest(
                    f"invalid {field}={value}: {self.title} makes sizes in multiples of {multiple} (its "
                    f"latents are packed in 2x2 patches); use {value // multiple * multiple} or "
                    f"{(value // multiple + 1) * multiple}",
                    field=field,
                    value=value,
                )
        arguments: dict[str, Any] = {
            "prompt": request.prompt,
            "num_inference_steps": request.steps,
            "num_images_per_prompt": request.num_images,
            "max_sequence_length": self.max_sequence_length,
            # img2img too: FluxImg2ImgPipeline resizes the image to height x width (1024 when not given)
            "width": request.width,
            "height": request.height,
        }
        if self.distilled_guidance:
            arguments["guidance_scale"] = request.guidance_scale
        if true_cfg(request):  # an empty negative prompt too: "" is the unconditional text
            arguments.update(true_cfg_scale=request.true_cfg_scale, negative_prompt=request.negative_prompt)
        if init_image is not None:
            arguments.update(image=init_image, strength=request.strength)
        return arguments

    def apply_prompts(
        self,
        pipe: Any,
        request: GenerationRequest,
        arguments: dict[str, Any],
        state: dict[str, Any],
        *,
        first_step: int = 0,
    ) -> list[str]:
        """The prompt as plain text to both encoders (check_request refused weights); warnings
        say how many tokens each encoder drops."""
        from easel.prompts.encoding import plan_prompt

        text = plan_prompt(request.prompt, request.prompt_syntax).text
        arguments["prompt"] = text
        if request.negative_prompt and arguments.get("negative_prompt"):  # SD 3.5; FLUX.1 with true CFG
            arguments["negative_prompt"] = plan_prompt(request.negative_prompt, request.prompt_syntax).text
        warnings = []
        t5 = self.window_tokens(pipe, text)
        if t5 > self.max_sequence_length:
            warnings.append(
                f"prompt has {t5} {self.window_encoder} tokens; {self.title} reads the first "
                f"{self.max_sequence_length}, so {t5 - self.max_sequence_length} are dropped"
            )
        if not self.clip_reads:  # no CLIP encoder (Qwen-Image)
            return warnings
        clip = len(pipe.tokenizer(text).input_ids)
        limit = int(pipe.tokenizer.model_max_length)
        if clip > limit:
            warnings.append(
                f"prompt has {clip} CLIP tokens; {self.title}'s CLIP encoder{self.clip_reads} the first "
                f"{limit} (T5 reads the rest)"
            )
        return warnings

    def window_tokens(self, pipe: Any, text: str) -> int:
        """How many tokens of the window `text` takes as the pipeline tokenizes it: T5's, with its
        </s> (Z-Image: the Qwen chat template around it)."""
        return len(getattr(pipe, self.t5_tokenizer)(text).input_ids)

    def run(
        self,
        pipe: Any,
        arguments: dict[str, Any],
        *,
        request: GenerationRequest,
        companions: Mapping[str, Loaded],
    ) -> RunOutput:
        """As Family.run (numpy output, non-finite images decoded again in float32), with the
        caught latents unpacked from (batch, sequence, 64) to (batch, channels, h, w) first."""
        caught: dict[str, Any] = {}
        output = pipe(**_catching_latents(arguments, caught), output_type="np")
        latents = caught.get("latents")
        if latents is not None:  # at the size the pipeline worked at (inpaint_area=masked: the native size)
            height, width = int(arguments["height"]), int(arguments["width"])
            latents = self.unpack_latents(pipe, latents, height, width)
        images, warnings = self.finite_images(pipe, output.images, latents)
        return RunOutput(images=_numpy_to_pil(images), nsfw_content_detected=None, warnings=warnings)

    def unpack_latents(self, pipe: Any, latents: Any, height: int, width: int) -> Any:
        """Caught (batch, sequence, channels) latents as decode_float32 takes them: the pipeline's
        own _unpack_latents (FLUX.2 has its own layout and overrides this)."""
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)

    def decode_float32(self, pipe: Any, latents: Any) -> Any:
        """Decode unpacked latents in float32 as FluxPipeline does (scaling, then shift)."""
        import torch

        vae = pipe.vae
        original = vae.dtype
        try:
            vae.to(dtype=torch.float32)
            latents = latents.to(device=vae.device, dtype=torch.float32)
            with torch.inference_mode():
                latents = latents / vae.config.scaling_factor + vae.config.shift_factor
                image = vae.decode(latents, return_dict=False)[0]
                return pipe.image_processor.postprocess(image, output_type="np")
        finally:
            vae.to(dtype=original)

    def a1111_parameters(self, request: GenerationRequest) -> dict[str, object]:
        """As Forge writes FLUX: "CFG scale" is the real CFG (true_cfg_scale; 1: none) and, for dev
        and Kontext, "Distilled CFG Scale" the distilled guidance (schnell has none, as in Forge)."""
        entries: dict[str, object] = {"CFG scale": _shown(request.true_cfg_scale or NO_GUIDANCE)}
        if self.distilled_guidance and request.guidance_scale is not None:
            entries["Distilled CFG Scale"] = _shown(request.guidance_scale)
        return entries


def true_cfg(request: GenerationRequest) -> bool:
    """Whether the request runs FLUX.1's real CFG: true_cfg_scale above 1 (None or 1: off)."""
    return request.true_cfg_scale is not None and request.true_cfg_scale > NO_GUIDANCE


def _shown(value: float) -> str:
    """A scale as A1111 writes numbers: 3.5, and 4 rather than 4.0."""
    return f"{value:g}" if value != int(value) else str(int(value))


def _union_modes() -> tuple[str, ...]:
    from easel.request import UNION_MODES

    return UNION_MODES


def union_mode_index(mode: int | str) -> int:
    """A unit's union mode as the index the ControlNet's mode embedding takes (names: the
    InstantX / Shakker-Labs union order, easel.request.UNION_MODES)."""
    return mode if isinstance(mode, int) else _union_modes().index(mode)


def _transformer_config(source: ModelSource) -> dict[str, Any] | None:
    """transformer/config.json of a folder or hub model (None: single file, or not readable)."""
    try:
        if source.kind == "folder":
            path = Path(source.location) / "transformer" / "config.json"
        elif source.kind == "single_file":
            return None
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source.location, "transformer/config.json"))
        return json.loads(path.read_text("utf-8"))
    except Exception:  # not cached, offline, not JSON: the family's own defaults (loading reports it)
        return None


FLUX_CLASSES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
TRUE_CFG = ("true_cfg_scale",)  # FLUX.1's family-only field: its pipelines' real CFG (request.FAMILY_FIELDS)
FLUX_CONTROLNET: dict[str, Any] = {
    "controlnet_text2img_class": "FluxControlNetPipeline",
    "controlnet_img2img_class": "FluxControlNetImg2ImgPipeline",
    "controlnet_inpaint_class": "FluxControlNetInpaintPipeline",
    "control_classes": ("FluxControlNetModel",),
    "multi_controlnet_class": "FluxMultiControlNetModel",
    "denoiser": "transformer",
}

FLUX_DEV = FluxFamily(
    name="flux1_dev",
    pipeline_classes=FLUX_CLASSES,
    single_file_types=(),
    text2img_class="FluxPipeline",
    img2img_class="FluxImg2ImgPipeline",
    tasks=INPAINTING_TASKS,
    inpaint_class="FluxInpaintPipeline",
    **FLUX_CONTROLNET,
    options=TRUE_CFG,
    loras=True,  # FluxLoraLoaderMixin: transformer and CLIP text encoder adapters
    default_steps=28,
    default_guidance=3.5,  # distilled guidance (the transformer's guidance input), not CFG
    title="FLUX.1-dev",
    distilled_guidance=True,
    max_sequence_length=512,
    accelerator_dtype="bfloat16",  # float16 overflows in T5 and the transformer
)

FLUX_SCHNELL = FluxFamily(
    name="flux1_schnell",
    pipeline_classes=FLUX_CLASSES,
    single_file_types=(),
    text2img_class="FluxPipeline",
    img2img_class="FluxImg2ImgPipeline",
    tasks=INPAINTING_TASKS,
    inpaint_class="FluxInpaintPipeline",
    **FLUX_CONTROLNET,
    options=TRUE_CFG,
    loras=True,  # FluxLoraLoaderMixin: transformer and CLIP text encoder adapters
    default_steps=4,
    default_guidance=NO_GUIDANCE,  # no guidance at all; recorded as 1, other values refused
    title="FLUX.1-schnell",
    distilled_guidance=False,
    max_sequence_length=256,  # the model card's value (diffusers' pipeline default is 512)
    controlnet_guidance=CONTROLNET_GUIDANCE,
    accelerator_dtype="bfloat16",  # float16 overflows in T5 and the transformer
)

"""FLUX.2 [klein] (black-forest-labs/FLUX.2-klein-4B / -9B, and the -base models): a rectified-flow
transformer reading one Qwen3 text encoder, that generates from text and edits with several
reference images.

What differs from FLUX.1, and what easel does about it:

- model_index.json says Flux2KleinPipeline for all four klein models; its `is_distilled` flag (a
  pipeline config value the published files carry: true for FLUX.2-klein-4B / -9B) tells the
  step-distilled models from the base models (matches() reads it; no weights, no other file).
  FLUX.2 [dev] (Flux2Pipeline, a Mistral Small text encoder) is not built: detection refuses it
  by name (NOT_BUILT). The klein KV model (Flux2KleinKVPipeline) is left undetected.
- Guidance, as Flux2KleinPipeline's do_classifier_free_guidance says (guidance_scale > 1 and not
  is_distilled): for the base models `guidance_scale` is real classifier-free guidance (two
  transformer evaluations a step), default 4.0 with 50 steps (the pipeline's documented example
  for FLUX.2-klein-base-9B). Its negative prompt is "" unless negative_prompt_embeds are given:
  easel encodes the request's negative prompt with the pipeline's own encode_prompt, so it is
  honoured; at guidance 1 or below there is no CFG and a negative prompt is refused, naming
  negative_prompt. The distilled models run 4 steps and ignore guidance_scale entirely: it is
  recorded as 1 (Forge's "CFG scale: 1") and any other value is refused, as is a negative prompt.
- Tasks: text-to-image; `edit` with up to 4 reference images (request.reference_images, the
  pipeline's `image=` list; 4 is what BFL's klein API takes; the pipeline reads each as more tokens
  of the sequence). An edit without a size comes out at the first reference's size as the pipeline
  works it (above one megapixel scaled down to it, then cut to multiples of 16), recorded in the
  concrete request. References under 64 pixels a side or beyond 8:1 are refused naming the
  reference, before the run (the pipeline's own check_image_input). Inpainting runs
  Flux2KleinInpaintPipeline (from_pipe on the base) with easel's mask steps. diffusers 0.42 has
  no FLUX.2 image-to-image pipeline: init_image without a mask is refused by name.
- Prompts are plain text for Qwen3, which the pipeline wraps in its chat template (thinking off)
  and reads at layers 9, 18 and 27: weighting and BREAK, prompt editing, clip skip, the SD samplers,
  variation seeds, tiling, the hires fix, the latent masked-content fills, ControlNet and textual
  inversion are refused by name (FLUX.1's checks, shared through SD 3.5's). The window is
  max_sequence_length (512) Qwen tokens, the chat template included; a longer prompt gets a warning.
- LoRAs go through easel's adapter mechanism (diffusers' Flux2LoraLoaderMixin loads them).
- Latents are packed (batch, sequence, 128) and batch-normalised: live previews skip them (no
  picture, no failure); a non-finite decode is redone in float32 the way the pipeline decodes
  (the VAE's batch-norm statistics, then the 2x2 patches unfolded).
- Native size: diffusers' own rule, default_sample_size (128) x the VAE's scale factor (8): 1024;
  sizes are multiples of 2 x the VAE factor (16), as for FLUX.1.
- dtype auto on a GPU: bfloat16 (the model cards').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest
from easel.families.base import Family
from easel.families.flux import NO_GUIDANCE, FluxFamily, _refusal
from easel.families.sd3 import SD3Family
from easel.families.zimage import chat_template_tokens

if TYPE_CHECKING:
    from collections.abc import Mapping

    from PIL.Image import Image

    from easel.models.reference import ModelSource
    from easel.request import GenerationRequest

KLEIN_TASKS = ("text2img", "inpaint", "edit")
REFERENCE_AREA = 1024 * 1024  # Flux2KleinPipeline scales a larger reference down to this area


@dataclass(frozen=True)
class Flux2KleinFamily(SD3Family):
    """FLUX.2 [klein]: text-to-image, editing with reference images and inpainting. SD 3.5's real-CFG
    checks (base) and FLUX.1's refusals and size rule; its own detection (is_distilled), guidance
    rule for the distilled models, negative prompt (as embeddings), references, token window and
    packed, batch-normalised latents."""

    title: str = "FLUX.2 [klein]"
    distilled: bool = True  # step-distilled: guidance_scale is ignored by the pipeline
    max_sequence_length: int = 512  # the pipeline's default
    t5_tokenizer: str = "tokenizer"  # the Qwen tokenizer: the one whose window counts
    window_encoder: str = "Qwen"
    clip_reads: str = ""  # no CLIP encoder
    encoders: str = "its Qwen3 text encoder, through a chat template"
    latents_note: str = "its latents are packed"

    # -- detection ------------------------------------------------------------------------------

    def matches(self, model_index: Mapping[str, Any]) -> bool:
        """A klein pipeline whose `is_distilled` (absent: False, the pipeline's default) is ours."""
        return super().matches(model_index) and bool(model_index.get("is_distilled", False)) == self.distilled

    def variant(self, source: ModelSource) -> Family:
        """matches() already told distilled from base (SD3Family.variant reads SD3 configs)."""
        return self

    def unsupported_task_message(self, task: str) -> str:
        if task == "img2img":
            return (
                f"init_image: {self.title} has no image-to-image pipeline in diffusers (strength); give "
                "the picture as reference_images and say the change in the prompt, or add a mask_image "
                "to inpaint"
            )
        return super().unsupported_task_message(task)

    # -- checks -----------------------------------------------------------------------------------

    def check_request(self, request: GenerationRequest) -> None:
        """The base models: SD 3.5's (a negative prompt needs guidance above 1). The distilled ones
        ignore guidance: another value than 1, or a negative prompt, is refused by name."""
        if not self.distilled:
            super().check_request(request)
            return
        Family.check_request(self, request)
        if request.guidance_scale not in (None, NO_GUIDANCE):
            raise _refusal(
                "guidance_scale",
                f"guidance_scale={request.guidance_scale!r}: {self.title} is step-distilled and its pipeline "
                f"ignores guidance, so the value would not be used; leave guidance_scale out (or at "
                f"{NO_GUIDANCE:g}), or use a FLUX.2 [klein] base model for classifier-free guidance",
            )
        if request.negative_prompt:
            raise _refusal(
                "negative_prompt",
                f"negative_prompt: {self.title} is step-distilled and runs without classifier-free guidance, "
                "so a negative prompt would be ignored; leave negative_prompt empty, or use a FLUX.2 "
                "[klein] base model",
            )
        self._check_transformer_request(request)

    # -- running ----------------------------------------------------------------------------------

    def window_tokens(self, pipe: Any, text: str) -> int:
        """The prompt's tokens in the chat template the pipeline feeds Qwen3 (thinking off)."""
        return chat_template_tokens(pipe.tokenizer, text, thinking=False)

    def call_arguments(
        self, pipe: Any, request: GenerationRequest, init_image: Image | None
    ) -> dict[str, Any]:
        """SD 3.5's (sizes in multiples of 16, guidance_scale as given or defaulted) without
        negative_prompt, which the pipeline has no argument for (apply_prompts encodes it)."""
        arguments = super().call_arguments(pipe, request, init_image)
        arguments.pop("negative_prompt", None)
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
        """The prompt as plain text (FLUX.1's, with the window warning); a negative prompt (only
        where CFG runs: check_request) encoded by the pipeline's own encode_prompt into
        negative_prompt_embeds, as the pipeline's "" would be."""
        import torch

        from easel.prompts.encoding import plan_prompt

        warnings = super().apply_prompts(pipe, request, arguments, state, first_step=first_step)
        if request.negative_prompt:
            text = plan_prompt(request.negative_prompt, request.prompt_syntax).text
            with torch.no_grad():
                embeds, _ = pipe.encode_prompt(
                    prompt=text,
                    device=pipe._execution_device,
                    num_images_per_prompt=1,  # the pipeline repeats them per image
                    max_sequence_length=self.max_sequence_length,
                )
            arguments["negative_prompt_embeds"] = embeds
        return warnings

    def edit_size(self, pipe: Any, references: list[Image]) -> tuple[int, int]:
        """The first reference's size as Flux2KleinPipeline works it: scaled down to one megapixel
        when larger (its own _resize_to_target_area), then cut to multiples of 2 x the VAE factor."""
        first = references[0]
        if first.width * first.height > REFERENCE_AREA:
            first = pipe.image_processor._resize_to_target_area(first, REFERENCE_AREA)
        multiple = 2 * int(pipe.vae_scale_factor)
        width, height = (max(multiple, side // multiple * multiple) for side in first.size)
        return width, height

    def edit_arguments(
        self, pipe: Any, request: GenerationRequest, references: list[Image]
    ) -> dict[str, Any]:
        """Every reference image, as the pipeline's `image=` list; each checked first with the
        pipeline's own check (64 pixels a side at least, 8:1 at most), naming the reference."""
        for index, reference in enumerate(references):
            try:
                pipe.image_processor.check_image_input(reference)
            except ValueError as error:
                field = f"reference_images[{index}]"
                raise InvalidRequest(
                    f"invalid {field}: {error} ({self.title} reads references of at least 64 pixels a side, "
                    "up to 8:1)",
                    field=field,
                ) from None
        return {"image": list(references)}

    run = FluxFamily.run  # numpy output; the caught latents unpacked (unpack_latents) for a re-decode

    def unpack_latents(self, pipe: Any, latents: Any, height: int, width: int) -> Any:
        """(batch, sequence, channels) tokens in row-major order (the pipeline's latent ids) to
        (batch, channels, height / 16, width / 16): the patchified, normalised latents."""
        side = 2 * int(pipe.vae_scale_factor)
        rows, columns = height // side, width // side
        return latents.reshape(latents.shape[0], rows, columns, latents.shape[-1]).permute(0, 3, 1, 2)

    def decode_float32(self, pipe: Any, latents: Any) -> Any:
        """Decode patchified latents in float32 as Flux2KleinPipeline does: undo the VAE's batch
        norm, unfold the 2x2 patches, decode."""
        import torch

        vae = pipe.vae
        original = vae.dtype
        try:
            vae.to(dtype=torch.float32)
            latents = latents.to(device=vae.device, dtype=torch.float32)
            mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents)
            std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents)
            with torch.inference_mode():
                latents = pipe._unpatchify_latents(latents * std + mean)
                image = vae.decode(latents, return_dict=False)[0]
                return pipe.image_processor.postprocess(image, output_type="np")
        finally:
            vae.to(dtype=original)


KLEIN_CLASSES = ("Flux2KleinPipeline", "Flux2KleinInpaintPipeline")


def _klein(name: str, title: str, *, distilled: bool, steps: int, guidance: float) -> Flux2KleinFamily:
    return Flux2KleinFamily(
        name=name,
        pipeline_classes=KLEIN_CLASSES,
        single_file_types=(),
        text2img_class="Flux2KleinPipeline",
        img2img_class="Flux2KleinPipeline",  # never used: img2img is not in `tasks` (refused by name)
        tasks=KLEIN_TASKS,
        inpaint_class="Flux2KleinInpaintPipeline",
        edit_class="Flux2KleinPipeline",
        max_reference_images=4,
        loras=True,  # Flux2LoraLoaderMixin: transformer adapters
        default_steps=steps,
        default_guidance=guidance,
        title=title,
        distilled=distilled,
        accelerator_dtype="bfloat16",  # the model cards'
    )


# step-distilled (FLUX.2-klein-4B / -9B): 4 steps, guidance ignored (recorded as 1)
FLUX2_KLEIN = _klein("flux2_klein", "FLUX.2 [klein]", distilled=True, steps=4, guidance=NO_GUIDANCE)
# base (FLUX.2-klein-base-4B / -9B): real CFG, the pipeline's example's 50 steps at guidance 4
FLUX2_KLEIN_BASE = _klein("flux2_klein_base", "FLUX.2 [klein] base", distilled=False, steps=50, guidance=4.0)

# pipeline class -> why easel refuses it (families.family_for_index raises it, naming `model`)
NOT_BUILT = {
    "Flux2Pipeline": (
        "model: pipeline class 'Flux2Pipeline' (FLUX.2 [dev], a 32B transformer reading a Mistral Small "
        "text encoder) is not supported by easel yet; FLUX.2 [klein] models are "
        "(black-forest-labs/FLUX.2-klein-4B, -9B and their -base models)"
    ),
}

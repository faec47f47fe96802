"""FLUX.1 Kontext [dev]: instruction editing (task `edit`) with a reference image, and text-to-image.

Kontext is a FLUX.1-dev transformer that also reads the latents of a reference image (its tokens
follow the output's in one sequence); FluxKontextPipeline loads the same components as FLUX.1-dev
and its model_index.json names that class, which is how it is detected. What differs from FLUX.1
(whose checks, prompt handling, float32 re-decode and Forge parameters it shares):

- Tasks: `edit` (request.reference_images, FluxKontextPipeline with `image=`) and text-to-image
  (the same pipeline without an image). The pipeline reads one reference image (with a list it
  sizes from the first and cannot batch the rest), so more are refused naming reference_images.
  Image-to-image (init_image/strength) has no place in it and Kontext inpainting
  (FluxKontextInpaintPipeline) is not built here yet: both are refused by name.
- Defaults from the model card: 28 steps, guidance 2.5 (a distilled-guidance input, as FLUX.1-dev's;
  recorded as "Distilled CFG Scale" with "CFG scale: 1", as Forge writes it). Negative prompts run
  with real CFG (true_cfg_scale above 1, "CFG scale: N"), as for FLUX.1.
- Sizes: Kontext was trained at PREFERRED_KONTEXT_RESOLUTIONS (about one megapixel). The reference is
  resized to the one nearest its aspect ratio, as the pipeline's `_auto_resize` does, and an edit
  without a size comes out at that size (recorded in the concrete request). The list is scaled by the
  model's native size / 1024, which is 1 for the real model (exactly diffusers' own rule) and makes a
  tiny test model work at its own small scale. The pipeline would also rescale any output size to its
  `max_area` (1024^2 by default); easel passes max_area = width x height, so the size asked for is
  the size that runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easel.errors import GenerationFailed
from easel.families.base import Family
from easel.families.flux import TRUE_CFG, FluxFamily

if TYPE_CHECKING:
    from PIL.Image import Image

    from easel.models.reference import ModelSource
    from easel.request import GenerationRequest

KONTEXT_NATIVE = 1024  # the side PREFERRED_KONTEXT_RESOLUTIONS were made for (default_sample_size 128 x 8)
EDIT_TASKS = ("text2img", "edit")


def edit_model_refusal(title: str, task: str, inpaint_class: str, inpaints: str) -> str | None:
    """Why an instruction-editing model (Kontext, Qwen-Image-Edit) refuses image-to-image and inpainting
    (None for other tasks): the picture goes in reference_images; `inpaints` names a model that can."""
    if task == "img2img":
        return (
            f"init_image: {title} does not do image-to-image (strength); give the picture as "
            "reference_images and say the change in the prompt (instruction editing)"
        )
    if task == "inpaint":
        return (
            f"mask_image/outpaint: {title} inpainting ({inpaint_class}) is not built in easel yet; edit with "
            f"reference_images and the prompt, or inpaint with {inpaints}"
        )
    return None


@dataclass(frozen=True)
class FluxKontextFamily(FluxFamily):
    """FLUX.1 Kontext: one reference image edited as the prompt says (FluxKontextPipeline), or
    text-to-image with the same pipeline."""

    def variant(self, source: ModelSource) -> Family:
        """One Kontext model so far (FluxFamily.variant would read it as FLUX.1-dev)."""
        return self

    def unsupported_task_message(self, task: str) -> str:
        refusal = edit_model_refusal(self.title, task, "FluxKontextInpaintPipeline", "FLUX.1-dev")
        return refusal or super().unsupported_task_message(task)

    # -- sizes ------------------------------------------------------------------------------------

    def reference_size(self, pipe: Any, reference: Image) -> tuple[int, int]:
        """(width, height) the reference is worked at: the preferred Kontext resolution nearest its
        aspect ratio (diffusers' `_auto_resize`), scaled to the model's native size, in multiples
        of the packed patch (2 x the VAE factor)."""
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        aspect = reference.width / reference.height
        _, width, height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        scale = self.default_size(pipe)[0] / KONTEXT_NATIVE
        multiple = 2 * int(pipe.vae_scale_factor)
        return tuple(max(multiple, int(side * scale) // multiple * multiple) for side in (width, height))  # type: ignore[return-value]

    def edit_size(self, pipe: Any, references: list[Image]) -> tuple[int, int]:
        """An edit comes out at the size its reference is worked at (as the model was trained)."""
        return self.reference_size(pipe, references[0])

    # -- running ----------------------------------------------------------------------------------

    def call_arguments(
        self, pipe: Any, request: GenerationRequest, init_image: Image | None
    ) -> dict[str, Any]:
        """FLUX.1's (sizes in multiples of 16), with max_area = width x height: FluxKontextPipeline
        rescales every output size to max_area, and easel runs the size it records."""
        arguments = super().call_arguments(pipe, request, init_image)
        width, height = int(request.width or 0), int(request.height or 0)
        arguments["max_area"] = width * height
        # the pipeline's own arithmetic, checked: the size that runs is the recorded one
        aspect = width / height
        ran = (round((width * height * aspect) ** 0.5), round((width * height / aspect) ** 0.5))
        if ran != (width, height):
            raise GenerationFailed(f"{self.title} would run {ran[0]}x{ran[1]} for {width}x{height}")
        return arguments

    def edit_arguments(
        self, pipe: Any, request: GenerationRequest, references: list[Image]
    ) -> dict[str, Any]:
        """The reference image, resized here to its working size (reference_size) with the
        pipeline's own resize, and `_auto_resize` off so the pipeline keeps it."""
        reference = references[0]
        width, height = self.reference_size(pipe, reference)
        resized = (
            reference
            if reference.size == (width, height)
            else pipe.image_processor.resize(reference, height, width)
        )
        return {"image": resized, "_auto_resize": False}


FLUX_KONTEXT_DEV = FluxKontextFamily(
    name="flux1_kontext_dev",
    pipeline_classes=("FluxKontextPipeline", "FluxKontextInpaintPipeline"),
    single_file_types=(),
    text2img_class="FluxKontextPipeline",
    img2img_class="FluxKontextPipeline",  # never used: img2img is not in `tasks` (refused by name)
    tasks=EDIT_TASKS,
    edit_class="FluxKontextPipeline",
    max_reference_images=1,
    options=TRUE_CFG,  # FluxKontextPipeline's true_cfg_scale and negative_prompt, as FLUX.1's
    loras=True,  # FluxLoraLoaderMixin, as FLUX.1-dev
    default_steps=28,
    default_guidance=2.5,  # the model card's; distilled guidance (the transformer's input), not CFG
    title="FLUX.1 Kontext",
    distilled_guidance=True,
    max_sequence_length=512,
    accelerator_dtype="bfloat16",  # float16 overflows in T5 and the transformer
)

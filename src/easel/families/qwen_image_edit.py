"""Qwen-Image-Edit (Qwen/Qwen-Image-Edit, Qwen/Qwen-Image-Edit-2509): instruction editing, task `edit`.

Both are Qwen-Image's transformer and VAE with pipelines that read reference images twice: the VAE encodes
each (at about one megapixel: the pipelines' VAE_IMAGE_SIZE) into latents the transformer reads beside the
output's, and the Qwen2.5-VL text encoder sees each (at about 384x384) through its vision tower, with the
prompt in a system template. What differs from Qwen-Image, and what easel does about it:

- Loading: the pipelines' `processor` is a transformers Qwen2VLProcessor, which in transformers 5.24
  cannot be built without torchvision (its video processor requires it; easel does not install
  torchvision). easel loads the model's processor/ folder as an image-only subclass
  (easel.families.qwen_processor.QwenImageOnlyProcessor: the tokenizer and the PIL image processor)
  and passes it as `processor=` to from_pretrained; the pipelines only ever give it text and images.
- Tasks: `edit` only. QwenImageEditPipeline (Qwen-Image-Edit) reads one reference image;
  QwenImageEditPlusPipeline (Qwen-Image-Edit-2509) several, each named "Picture N" in the text
  encoder's prompt: up to 3, what the model card says it is made for (diffusers sets no limit). Both
  pipelines size everything from a reference and fail without one, so text-to-image is refused
  naming reference_images (Qwen/Qwen-Image generates from text); image-to-image (init_image) and
  inpainting (QwenImageEditInpaintPipeline, not built here) are refused by name.
- Output size: when the request gives none, what the pipeline computes: calculate_dimensions(1024 x 1024,
  the aspect ratio of the reference it sizes from: the first for Qwen-Image-Edit, the last for 2509), cut
  to multiples of 2 x the VAE factor; recorded in the concrete request, so a replay runs the same size.
- Guidance, prompts and refusals are Qwen-Image's: true CFG (`true_cfg_scale`) with the model cards'
  defaults (50 steps for Qwen-Image-Edit, 40 for 2509, 4.0, negative prompt " " when none is given);
  weighting, BREAK, prompt editing, clip skip, the SD samplers, hires fix and the rest refused by name.
  The Edit pipelines do not cut the prompt to max_sequence_length (their encode_prompt reads it
  whole), so no tokens are reported dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easel.errors import UnsupportedFeature
from easel.families.flux_kontext import edit_model_refusal
from easel.families.qwen_image import QwenImageFamily

if TYPE_CHECKING:
    from collections.abc import Mapping

    from PIL.Image import Image

    from easel.models.reference import ModelSource
    from easel.request import GenerationRequest

EDIT_ONLY = ("edit",)
OUTPUT_AREA = 1024 * 1024  # the area the Edit pipelines size an output from a reference's aspect ratio


@dataclass(frozen=True)
class QwenImageEditFamily(QwenImageFamily):
    """Qwen-Image-Edit: Qwen-Image's true CFG, prompts and refusals; its own processor (image-only),
    task (edit only), reference images and output size."""

    title: str = "Qwen-Image-Edit"
    size_from_last: bool = False  # the reference the pipeline sizes the output from: 2509 the last
    max_sequence_length: int = 1024  # the pipelines' limit for the argument; they read the prompt whole

    # -- checks -----------------------------------------------------------------------------------

    def check_request(self, request: GenerationRequest) -> None:
        """Qwen-Image's checks; a request without reference images is refused first, naming
        reference_images (the pipelines cannot generate from text alone)."""
        if request.task == "text2img":
            error = UnsupportedFeature(self.unsupported_task_message("text2img"))
            error.field = "reference_images"  # type: ignore[attr-defined]
            raise error
        super().check_request(request)

    def unsupported_task_message(self, task: str) -> str:
        if task == "text2img":
            return (
                f"reference_images: {self.title} edits pictures (its pipeline sizes everything from a "
                "reference image and cannot run without one); give reference_images, or generate from "
                "text with Qwen/Qwen-Image"
            )
        refusal = edit_model_refusal(self.title, task, "QwenImageEditInpaintPipeline", "Qwen/Qwen-Image")
        return refusal or super().unsupported_task_message(task)

    # -- loading ----------------------------------------------------------------------------------

    def load_pipeline(
        self,
        source: ModelSource,
        *,
        dtype: Any,
        allow_pickle: bool,
        components: Mapping[str, Any] | None = None,
        variant: str | None = None,
        quantization_config: Any = None,
    ) -> Any:
        """The pipeline with the image-only processor (loaded from the model's processor/ folder) in
        place of the Qwen2VLProcessor that needs torchvision."""
        from easel.families.qwen_processor import load_image_only_processor

        given = dict(components or {})
        if "processor" not in given:
            given["processor"] = load_image_only_processor(source.location)
        return super().load_pipeline(
            source, dtype=dtype, allow_pickle=allow_pickle, components=given, variant=variant,
            quantization_config=quantization_config,
        )  # fmt: skip

    # -- running ----------------------------------------------------------------------------------

    def edit_size(self, pipe: Any, references: list[Image]) -> tuple[int, int]:
        """What the pipeline computes without a size: calculate_dimensions(1024 x 1024, the sizing
        reference's aspect ratio), then cut to multiples of 2 x the VAE factor."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

        reference = references[-1] if self.size_from_last else references[0]
        width, height = calculate_dimensions(OUTPUT_AREA, reference.width / reference.height)
        multiple = 2 * int(pipe.vae_scale_factor)
        return max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)

    def edit_arguments(
        self, pipe: Any, request: GenerationRequest, references: list[Image]
    ) -> dict[str, Any]:
        """The reference image (Qwen-Image-Edit) or the list of them (2509), as read: the pipeline
        resizes each itself (for the VAE and for the vision tower)."""
        return {"image": references[0] if self.max_reference_images == 1 else list(references)}

    def window_tokens(self, pipe: Any, text: str) -> int:
        """0: the Edit pipelines read the prompt whole (their encode_prompt does not cut it to
        max_sequence_length), so no warning says tokens are dropped."""
        return 0


QWEN_IMAGE_EDIT = QwenImageEditFamily(
    name="qwen_image_edit",
    pipeline_classes=("QwenImageEditPipeline",),
    single_file_types=(),
    text2img_class="QwenImageEditPipeline",  # the base pipeline; text-to-image itself is refused
    img2img_class="QwenImageEditPipeline",  # never used: img2img is not in `tasks` (refused by name)
    tasks=EDIT_ONLY,
    edit_class="QwenImageEditPipeline",
    max_reference_images=1,
    loras=True,  # QwenImageLoraLoaderMixin, as Qwen-Image
    default_steps=50,  # the model card's num_inference_steps
    default_guidance=4.0,  # the model card's true_cfg_scale
    accelerator_dtype="bfloat16",
)

QWEN_IMAGE_EDIT_2509 = QwenImageEditFamily(
    name="qwen_image_edit_2509",
    pipeline_classes=("QwenImageEditPlusPipeline",),
    single_file_types=(),
    text2img_class="QwenImageEditPlusPipeline",
    img2img_class="QwenImageEditPlusPipeline",  # never used (refused by name)
    tasks=EDIT_ONLY,
    edit_class="QwenImageEditPlusPipeline",
    max_reference_images=3,  # the model card: multi-image editing, 1 to 3 images
    loras=True,
    default_steps=40,  # the model card's num_inference_steps
    default_guidance=4.0,  # the model card's true_cfg_scale (its guidance_scale 1.0 is for distilled ones)
    title="Qwen-Image-Edit-2509",
    size_from_last=True,  # QwenImageEditPlusPipeline sizes from image[-1]
    accelerator_dtype="bfloat16",
)

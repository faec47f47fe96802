"""Qwen-Image-Edit (Qwen/Qwen-Image-Edit, Qwen/Qwen-Image-Edit-2509): refused at detection, saying why.

Both are instruction-editing models (task `edit`, `reference_images`) on Qwen-Image's transformer
and VAE; their pipelines (QwenImageEditPipeline: one reference image; QwenImageEditPlusPipeline:
several, each named "Picture N" in the prompt; diffusers 0.42 sets no limit, the model card shows
one to three) differ from QwenImagePipeline in one component that easel cannot build: `processor`,
a transformers Qwen2VLProcessor, through which the Qwen2.5-VL text encoder reads the reference
images with its vision tower.

Why it cannot be built (transformers 5.24, without torchvision, which easel does not install: PyPI's
torchvision must match the user's torch build): the image half has a PIL fallback
(Qwen2VLImageProcessor falls back to Qwen2VLImageProcessorPil), but Qwen2VLProcessor also requires
a `video_processor`. Its class, Qwen2VLVideoProcessor, needs torchvision (no PIL fallback);
Qwen2VLProcessor.from_pretrained, AutoProcessor.from_pretrained and so the pipelines' own
from_pretrained fail with "Qwen2VLVideoProcessor requires the Torchvision library", and building
one with video_processor=None fails the processor's class check (ProcessorMixin looks up
VideoProcessorMixin, which is not importable without torchvision either).

What serving them would take: with torchvision installed, the pipelines load as they are; without
it, an image-only processor (a Qwen2VLProcessor subclass whose __init__ takes no video_processor and
calls ProcessorMixin.__init__ with the image processor and tokenizer) passed as `processor=` runs
QwenImageEditPlusPipeline with one and two reference images (tried with a tiny model; the pipeline
only ever calls processor(text=..., images=...)). Then an edit family as FLUX.1 Kontext's: true CFG
as Qwen-Image's, the output size from calculate_dimensions(1024 * 1024, the last reference's aspect
ratio), and a tiny model whose VAE factor keeps the pipeline's fixed 1024x1024 reference latents
cheap (VAE_IMAGE_SIZE is a module constant).

So detection names the reason instead of the generic "pipeline class ... is not supported"
(families.family_for_index reads NOT_BUILT). tests/test_qwen_image_edit.py checks that the reason
still holds, so the refusal is revisited when transformers or the environment changes.
"""

from __future__ import annotations

# pipeline class -> (the model it is, what it reads)
EDIT_MODELS = {
    "QwenImageEditPipeline": ("Qwen/Qwen-Image-Edit", "a reference image"),
    "QwenImageEditPlusPipeline": ("Qwen/Qwen-Image-Edit-2509", "several reference images"),
}


def _not_built(class_name: str, model: str, reads: str) -> str:
    return (
        f"model: pipeline class {class_name!r} is not supported by easel yet ({model}, instruction editing "
        f"with {reads}): its Qwen2.5-VL text encoder reads the reference images through transformers' "
        "Qwen2VLProcessor, which cannot be built without torchvision (the processor requires a "
        "Qwen2VLVideoProcessor, and that class needs torchvision; easel does not install it). Edit with "
        "black-forest-labs/FLUX.1-Kontext-dev; Qwen/Qwen-Image does text-to-image, image-to-image and "
        "inpainting"
    )


# pipeline class -> why easel refuses it (families.family_for_index raises it, naming `model`)
NOT_BUILT = {name: _not_built(name, model, reads) for name, (model, reads) in EDIT_MODELS.items()}

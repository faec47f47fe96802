"""Model families: everything that differs between SD 1.5, SDXL, Kandinsky, ... lives here.

Nothing outside this package switches on a family's name; the engine asks the family
detected for a model what to load and how to call it.
"""

from __future__ import annotations

from typing import Any

from easel.errors import UnsupportedFeature
from easel.families.base import Family, register
from easel.families.flux import FLUX_DEV, FLUX_SCHNELL
from easel.families.flux2 import FLUX2_KLEIN, FLUX2_KLEIN_BASE
from easel.families.flux2 import NOT_BUILT as FLUX2_NOT_BUILT
from easel.families.flux_kontext import FLUX_KONTEXT_DEV
from easel.families.kandinsky import KANDINSKY22, KANDINSKY22_INPAINT, KANDINSKY22_PRIOR
from easel.families.qwen_image import QWEN_IMAGE
from easel.families.qwen_image_edit import QWEN_IMAGE_EDIT, QWEN_IMAGE_EDIT_2509
from easel.families.sd3 import SD3, SD35_LARGE, SD35_LARGE_TURBO, SD35_MEDIUM
from easel.families.sd15 import SD15
from easel.families.sdxl import SDXL, SDXL_REFINER
from easel.families.zimage import ZIMAGE_TURBO

FAMILIES: tuple[Family, ...] = (
    SD15,
    SDXL,
    SDXL_REFINER,
    KANDINSKY22,
    KANDINSKY22_INPAINT,
    KANDINSKY22_PRIOR,
    FLUX_DEV,
    FLUX_SCHNELL,
    FLUX_KONTEXT_DEV,
    FLUX2_KLEIN,  # Flux2KleinPipeline; matches() reads model_index.json's is_distilled
    FLUX2_KLEIN_BASE,
    SD35_MEDIUM,  # the first detected for StableDiffusion3Pipeline; variant() picks the model's
    SD35_LARGE,
    SD35_LARGE_TURBO,
    SD3,
    QWEN_IMAGE,
    QWEN_IMAGE_EDIT,  # edit only; an image-only processor (no torchvision)
    QWEN_IMAGE_EDIT_2509,
    ZIMAGE_TURBO,
)
register(FAMILIES)  # the hooks' errors name the families that take a field


def _supported_classes() -> str:
    return ", ".join(dict.fromkeys(c for f in FAMILIES for c in f.pipeline_classes))


def family_for_pipeline_class(class_name: str) -> Family:
    """The family whose pipelines include `class_name` (from model_index.json)."""
    return family_for_index({"_class_name": class_name})


def family_for_checkpoint(model_type: str) -> Family:
    """The family for a single-file checkpoint, from diffusers' inferred model type."""
    for family in FAMILIES:
        if model_type in family.single_file_types:
            return family
    raise UnsupportedFeature(f"single-file checkpoints of type {model_type!r} are not supported")


def family_for_index(model_index: dict[str, Any]) -> Family:
    """The family a model_index.json describes (its _class_name, and for SDXL whether it
    requires aesthetic scores, which marks the refiner)."""
    for family in FAMILIES:
        if family.matches(model_index):
            return family
    class_name = str(model_index.get("_class_name", ""))
    not_built = FLUX2_NOT_BUILT
    if class_name in not_built:  # a known model easel cannot serve yet: say why (FLUX.2 dev)
        error = UnsupportedFeature(not_built[class_name])
        error.field = "model"  # type: ignore[attr-defined]
        raise error
    raise UnsupportedFeature(
        f"pipeline class {class_name!r} is not supported by easel (supported: {_supported_classes()})"
    )

"""Model families: everything that differs between SD 1.5, SDXL, Kandinsky, ... lives here.

Nothing outside this package switches on a family's name; the engine asks the family
detected for a model what to load and how to call it.
"""

from __future__ import annotations

from typing import Any

from easel.errors import UnsupportedFeature
from easel.families.base import Family
from easel.families.sd15 import SD15

FAMILIES: tuple[Family, ...] = (SD15,)


def family_for_pipeline_class(class_name: str) -> Family:
    """The family whose pipelines include `class_name` (from model_index.json)."""
    for family in FAMILIES:
        if class_name in family.pipeline_classes:
            return family
    raise UnsupportedFeature(
        f"pipeline class {class_name!r} is not supported by easel "
        f"(supported: {', '.join(c for f in FAMILIES for c in f.pipeline_classes)})"
    )


def family_for_checkpoint(model_type: str) -> Family:
    """The family for a single-file checkpoint, from diffusers' inferred model type."""
    for family in FAMILIES:
        if model_type in family.single_file_types:
            return family
    raise UnsupportedFeature(f"single-file checkpoints of type {model_type!r} are not supported")


def family_for_index(model_index: dict[str, Any]) -> Family:
    return family_for_pipeline_class(str(model_index.get("_class_name", "")))

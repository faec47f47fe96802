"""What a family is: its pipelines, its defaults, and how its pipelines are called."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """A model family, described as data so the engine needs no branches on names.

    Pipeline classes are named (not imported) so describing a family imports nothing heavy.
    """

    name: str
    pipeline_classes: tuple[str, ...]  # _class_name values in model_index.json
    single_file_types: tuple[str, ...]  # diffusers infer_diffusers_model_type() results
    text2img_class: str
    img2img_class: str
    default_steps: int
    default_guidance: float

    def pipeline_class(self, task: str) -> Any:
        import diffusers

        name = {"text2img": self.text2img_class, "img2img": self.img2img_class}[task]
        return getattr(diffusers, name)

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """(width, height) the model was trained at, as diffusers computes it."""
        side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        return side, side

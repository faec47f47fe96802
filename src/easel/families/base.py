"""What a family is: its pipelines, its defaults, and how its pipelines are loaded and called.

A family is data plus a few overridable methods. The engine never branches on a family's
name: it asks the family to load a base pipeline, derive a task pipeline from it, and turn
a concrete request into the pipeline's call arguments. A family with different needs
(SDXL's refiner, Kandinsky's prior) subclasses Family and overrides just those methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image

    from easel.models.reference import ModelSource
    from easel.request import GenerationRequest

TASKS = ("text2img", "img2img")


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

    def load_pipeline(self, source: ModelSource, *, dtype: Any, allow_pickle: bool) -> Any:
        """Load the base (text-to-image) pipeline; library errors propagate to the cache,
        which translates them."""
        pipeline_class = self.pipeline_class("text2img")
        if source.kind == "single_file":
            return pipeline_class.from_single_file(source.location, torch_dtype=dtype)
        return pipeline_class.from_pretrained(
            source.location, torch_dtype=dtype, use_safetensors=None if allow_pickle else True
        )

    def derive(self, base: Any, task: str, **overrides: Any) -> Any:
        """The task's pipeline sharing `base`'s weights (from_pipe), with `overrides`
        (a fresh scheduler, safety_checker=None, ...) as its own components."""
        return self.pipeline_class(task).from_pipe(base, **overrides)

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """(width, height) the model was trained at, as diffusers computes it."""
        side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        return side, side

    def call_arguments(
        self, pipe: Any, request: GenerationRequest, init_image: Image | None
    ) -> dict[str, Any]:
        """The pipeline's keyword arguments for a concrete request (generators and the step
        callback are added by the engine)."""
        arguments: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or None,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance_scale,
            "num_images_per_prompt": request.num_images,
        }
        if init_image is not None:
            arguments.update(image=init_image, strength=request.strength)
        else:
            arguments.update(width=request.width, height=request.height)
        return arguments

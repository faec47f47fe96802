"""GenerationResult: the images plus the concrete request that makes them again."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from easel.request import GenerationRequest, effective_steps

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class Progress:
    """One denoising step finished: `step` of `total` (1-based); `preview`: a picture of the
    first image's current latents, at the steps the run was asked to preview (easel.previews)."""

    step: int
    total: int
    preview: Image | None = field(default=None, compare=False, repr=False)


class CancelToken(Protocol):
    """Anything with is_set(), e.g. threading.Event."""

    def is_set(self) -> bool: ...


@dataclass
class GenerationResult:
    """What a generation made.

    `request` is concrete: seed, size, steps, guidance, scheduler and strength are filled in,
    so generating it again gives the same images. `nsfw[i]` is True when the model's safety
    checker flagged image i (diffusers then returns it blacked out).
    """

    images: list[Image]
    request: GenerationRequest
    nsfw: list[bool]
    model_family: str
    model_name: str = ""  # short name for metadata ("stable-diffusion-v1-5", "easel-demo")
    model_hashes: dict[str, str] = field(default_factory=dict)  # component -> weights sha256
    sampler: str = ""  # the scheduler used, as an A1111 sampler label where one matches
    timings: dict[str, float] = field(default_factory=dict)
    init_image: Image | None = None
    mask_image: Image | None = None  # inpainting: the mask as read, fitted to init_image (L)
    inpainting_conditioning: bool = False  # a 9-channel (dedicated inpainting) UNet saw the mask
    warnings: list[str] = field(default_factory=list)  # e.g. "much smaller than SDXL's 1024x1024"
    # ControlNet units: each image fitted to the output size (what the gallery keeps for
    # replay) and the conditioning image its preprocessor made from it (what steered)
    control_inputs: list[Image] = field(default_factory=list)
    control_images: list[Image] = field(default_factory=list)
    # instruction editing: the reference images as read (what the gallery keeps for replay)
    reference_images: list[Image] = field(default_factory=list)
    # A1111 `parameters` entries the family writes its own way (FLUX: "CFG scale: 1, Distilled CFG Scale")
    family_parameters: dict[str, object] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        assert self.request.seed is not None  # a concrete request always has one
        return [self.request.seed + i for i in range(len(self.images))]

    @property
    def effective_steps(self) -> int:
        """Denoising steps actually run (steps x strength for image-to-image; with the hires fix,
        both passes)."""
        assert self.request.steps is not None
        steps = effective_steps(self.request.steps, self.request.strength)
        hires = self.request.hires
        if hires is not None:
            steps += effective_steps(hires.second_steps(self.request.steps), hires.strength)
        return steps

    def grid(self) -> Image:
        """All images in one: the init image first for image-to-image, then the control
        images that steered them, then the outputs."""
        from easel.storage.grid import make_grid

        lead = [self.init_image] if self.init_image is not None else []
        lead += self.reference_images
        lead += self.control_images
        return make_grid([*lead, *self.images])

    def parameters(self, index: int = 0) -> str:
        """The AUTOMATIC1111 `parameters` text of image `index`."""
        from easel.models.hashing import short_hash
        from easel.storage.metadata import (
            control_parameters,
            embedding_parameters,
            format_parameters,
            hires_parameters,
            inpaint_parameters,
            lora_parameters,
        )

        return format_parameters(
            self.request,
            seed=self.seeds[index],
            sampler=self.sampler,
            model_name=self.model_name,
            model_hash=short_hash(self.model_hashes.get("base")),
            vae_hash=short_hash(self.model_hashes.get("vae")),
            extra={
                **self.family_parameters,
                **inpaint_parameters(self.request),
                **hires_parameters(self.request),
                **control_parameters(self.request, self.model_hashes),
                **lora_parameters(self.request, self.model_hashes),
                **embedding_parameters(self.model_hashes),
            },
        )

    def encode(self, index: int = 0, suffix: str = ".png") -> bytes:
        """Image `index` as file bytes (PNG, JPEG or WebP) carrying its full recipe."""
        from easel.storage.metadata import encode_image, image_document

        return encode_image(self.images[index], suffix, self.parameters(index), image_document(self, index))

    def save(self, path: str | Path, index: int = 0) -> Path:
        """Write image `index` with its metadata, atomically; the format follows the suffix."""
        from easel.storage.files import write_atomically

        target = Path(path)
        return write_atomically(target, self.encode(index, target.suffix))

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (no pixels), shared by the CLI's --json and the server."""
        return {
            "model_family": self.model_family,
            "model": self.model_name,
            "sampler": self.sampler,
            "seeds": self.seeds,
            "nsfw": self.nsfw,
            "effective_steps": self.effective_steps,
            "request": self.request.model_dump(mode="json"),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
            "inpainting_conditioning": self.inpainting_conditioning,
        }

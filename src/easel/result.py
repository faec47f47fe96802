"""GenerationResult: the images plus the concrete request that makes them again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from easel.request import GenerationRequest, effective_steps

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class Progress:
    """One denoising step finished: `step` of `total` (1-based)."""

    step: int
    total: int


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
    timings: dict[str, float] = field(default_factory=dict)
    init_image: Image | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. "much smaller than SDXL's 1024x1024"

    @property
    def seeds(self) -> list[int]:
        assert self.request.seed is not None  # a concrete request always has one
        return [self.request.seed + i for i in range(len(self.images))]

    @property
    def effective_steps(self) -> int:
        """Denoising steps actually run (steps x strength for image-to-image)."""
        assert self.request.steps is not None
        return effective_steps(self.request.steps, self.request.strength)

    def grid(self) -> Image:
        """All images in one, the init image first for image-to-image."""
        from easel.storage.grid import make_grid

        lead = [self.init_image] if self.init_image is not None else []
        return make_grid([*lead, *self.images])

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (no pixels), shared by the CLI's --json and the server."""
        return {
            "model_family": self.model_family,
            "seeds": self.seeds,
            "nsfw": self.nsfw,
            "effective_steps": self.effective_steps,
            "request": self.request.model_dump(mode="json"),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }

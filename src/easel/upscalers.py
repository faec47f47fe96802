"""Upscalers: make a picture bigger, by resampling (Lanczos, Nearest) or with a model.

Used by `easel upscale`, A1111's extras routes and the hires fix's second pass. Names are
A1111's: "None" (no upscaling: the picture is only resized to the asked size, as A1111's None
does), "Lanczos", "Nearest", and model upscalers (ESRGAN, RealESRGAN, SwinIR, ... loaded with
spandrel) by their file name in the upscaler folder (EASEL_UPSCALER_DIR). The latent upscalers
("Latent", "Latent (bicubic)", ...) work on latents, not pictures; only the hires fix has
latents, so they are listed in LATENT_UPSCALERS and handled there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL.Image import Image

# A1111's latent upscale modes: name -> (torch interpolate mode, antialias)
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# resampling upscalers every install has (PIL resampling filter names)
BUILTIN_UPSCALERS: dict[str, str | None] = {"None": None, "Lanczos": "LANCZOS", "Nearest": "NEAREST"}


class Upscalers:
    """The upscalers of one engine: the built-in ones, and model upscalers from `folder`
    (loaded once, kept while the engine lives)."""

    def __init__(self, folder: Path, *, allow_pickle: bool = False, device: str = "cpu") -> None:
        self.folder = Path(folder)
        self.allow_pickle = allow_pickle
        self.device = device
        self._models: dict[Path, Any] = {}

    def names(self) -> list[str]:
        """Every picture upscaler a request may name: the built-in ones, then model files."""
        return list(BUILTIN_UPSCALERS)

    def upscale(self, image: Image, width: int, height: int, name: str, *, field: str = "upscaler") -> Image:
        """`image` made `width` x `height` with upscaler `name`; an unknown name is an
        InvalidRequest naming `field` and listing what there is."""
        from PIL import Image as PILImage

        image = image.convert("RGB")
        if name in BUILTIN_UPSCALERS:
            resample = BUILTIN_UPSCALERS[name] or "LANCZOS"
            if image.size == (width, height):
                return image
            return image.resize((width, height), getattr(PILImage.Resampling, resample))
        raise InvalidRequest(
            f"invalid {field}={name!r}: unknown upscaler; known: {', '.join(self.names())}",
            field=field,
            value=name,
        )

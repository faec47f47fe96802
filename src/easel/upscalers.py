"""Upscalers: make a picture bigger, by resampling (Lanczos, Nearest) or with a model.

Used by `easel upscale`, A1111's extras routes and the hires fix's second pass. Names are
A1111's: "None" (no upscaling: the picture is only resized to the asked size, as A1111's None
does), "Lanczos", "Nearest", and model upscalers (ESRGAN, RealESRGAN, SwinIR, ... loaded with
spandrel) by their file name in the upscaler folder (EASEL_UPSCALER_DIR). The latent upscalers
("Latent", "Latent (bicubic)", ...) work on latents, not pictures; only the hires fix has
latents, so they are listed in LATENT_UPSCALERS and handled there.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easel.errors import GenerationFailed, InvalidRequest, UnsupportedFeature

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
# model files: safetensors hold only tensors; the others are pickles, which can run code when loaded
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
# a model sees at most TILE x TILE input pixels at once (memory stays bounded on large pictures);
# tiles overlap by OVERLAP pixels of context on each side, and only their centres are kept, so
# no seam shows where the model's receptive field fits in the overlap
TILE = 512
OVERLAP = 32
# spandrel architecture ids A1111 lists under /sdapi/v1/realesrgan-models
REALESRGAN_ARCHITECTURES = ("ESRGAN", "Compact")


@dataclass(frozen=True)
class ModelInfo:
    """What the A1111 routes tell about one model upscaler (read from the loaded model)."""

    name: str
    path: Path
    scale: int
    architecture: str  # spandrel's architecture id: "ESRGAN", "Compact", "SwinIR", ...


class Upscalers:
    """The upscalers of one engine: the built-in ones, and model upscalers from `folder`
    (loaded once per file version, kept while the engine lives)."""

    def __init__(self, folder: Path, *, allow_pickle: bool = False, device: str = "cpu") -> None:
        self.folder = Path(folder)
        self.allow_pickle = allow_pickle
        self.device = device
        self._models: dict[Path, tuple[int, Any]] = {}  # path -> (mtime_ns, spandrel descriptor)
        # one model run at a time: the cache is shared by server threads, and two runs on one
        # accelerator would only compete for its memory
        self._lock = threading.Lock()

    def model_files(self) -> dict[str, Path]:
        """Model upscalers by name (file name less extension, as A1111 lists them); pickles are
        listed even when not allowed, so naming one gets the reason it is refused. A name
        found as both a .safetensors and a pickle is the .safetensors."""
        if not self.folder.is_dir():
            return {}
        found: dict[str, Path] = {}
        for path in sorted(self.folder.iterdir()):
            suffix = path.suffix.lower()
            if not path.is_file() or suffix not in SAFE_SUFFIXES + PICKLE_SUFFIXES:
                continue
            if path.stem not in found or suffix in SAFE_SUFFIXES:
                found[path.stem] = path
        return found

    def names(self) -> list[str]:
        """Every picture upscaler a request may name: the built-in ones, then model files."""
        return [*BUILTIN_UPSCALERS, *sorted(self.model_files())]

    def info(self, name: str, *, field: str = "upscaler") -> ModelInfo:
        """The model upscaler `name`'s scale and architecture (loads it: they are in its weights)."""
        path = self._path(name, field)
        with self._lock:
            model = self._model(name, path, field)
        return ModelInfo(name=name, path=path, scale=int(model.scale), architecture=model.architecture.id)

    def upscale(self, image: Image, width: int, height: int, name: str, *, field: str = "upscaler") -> Image:
        """`image` made `width` x `height` with upscaler `name`; an unknown name is an
        InvalidRequest naming `field` and listing what there is.

        A model upscaler runs as many times as it takes to reach at least the asked size,
        then the picture is resized (Lanczos) to exactly that size, as A1111 does.
        """
        from PIL import Image as PILImage

        image = image.convert("RGB")
        if name in BUILTIN_UPSCALERS:
            resample = BUILTIN_UPSCALERS[name] or "LANCZOS"
            if image.size == (width, height):
                return image
            return image.resize((width, height), getattr(PILImage.Resampling, resample))
        path = self._path(name, field)
        with self._lock:
            model = self._model(name, path, field)
            while image.width < width or image.height < height:
                before = image.size
                image = run_model(model, image)
                if image.size == before:  # a 1x model (restoration): one pass, then the resize
                    break
        if image.size != (width, height):
            image = image.resize((width, height), PILImage.Resampling.LANCZOS)
        return image

    def _path(self, name: str, field: str) -> Path:
        """The file of model upscaler `name`; unknown names and refused pickles are InvalidRequest."""
        path = self.model_files().get(name)
        if path is None:
            raise InvalidRequest(
                f"invalid {field}={name!r}: unknown upscaler; known: {', '.join(self.names())} "
                f"(model upscalers are read from {self.folder})",
                field=field,
                value=name,
            )
        if path.suffix.lower() in PICKLE_SUFFIXES and not self.allow_pickle:
            raise InvalidRequest(
                f"invalid {field}={name!r}: {path.name} is a pickle that can run code when loaded; use a "
                ".safetensors upscaler, or pass --allow-pickle (EASEL_ALLOW_PICKLE=1) if you trust this file",
                field=field,
                value=name,
            )
        return path

    def _model(self, name: str, path: Path, field: str) -> Any:
        """The spandrel model in `path`, loaded once per file version (path + mtime), on the
        device, in eval mode; files spandrel cannot read are InvalidRequest naming `field`."""
        mtime = path.stat().st_mtime_ns
        cached = self._models.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        model = load_model(path, field=field, name=name).to(self.device).eval()
        self._models[path] = (mtime, model)
        return model


def load_model(path: Path, *, field: str, name: str) -> Any:
    """A spandrel ImageModelDescriptor from `path` (on the CPU); anything that is not a 3-channel
    picture-to-picture model spandrel knows is refused, naming `field`."""
    import torch

    try:
        from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError, canonicalize_state_dict
    except Exception as error:  # spandrel imports torchvision, whose build must match torch's
        raise UnsupportedFeature(
            "model upscalers need spandrel and a torchvision built for this torch "
            f"({torch.__version__}): pip install 'easel[upscalers]' (importing spandrel failed: "
            f"{type(error).__name__}: {error}); the built-in upscalers (Lanczos, Nearest, Latent) need "
            "nothing more"
        ) from None

    def refuse(why: str) -> InvalidRequest:
        return InvalidRequest(f"invalid {field}={name!r}: {path.name} {why}", field=field, value=name)

    loader = ModelLoader(device="cpu")
    try:
        if path.suffix.lower() == ".bin":  # spandrel reads .pth/.pt/.ckpt; a .bin is the same pickle
            state = canonicalize_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            state = loader.load_state_dict_from_file(path)
        model = loader.load_from_state_dict(state)
    except UnsupportedModelError:
        raise refuse("is not an upscaler model spandrel knows (ESRGAN, RealESRGAN, SwinIR, ...)") from None
    except Exception as error:  # unreadable file: truncated, not a checkpoint, unexpected keys
        raise refuse(f"cannot be read as an upscaler model: {type(error).__name__}: {error}") from None
    if not isinstance(model, ImageModelDescriptor) or model.purpose == "FaceSR":
        raise refuse(f"is a {model.architecture.name} model ({model.purpose}), not an upscaler")
    if model.input_channels != 3 or model.output_channels != 3:
        raise refuse(f"takes {model.input_channels}-channel pictures; upscalers here take RGB")
    return model


def run_model(model: Any, image: Image) -> Image:
    """One pass of spandrel `model` over an RGB picture, in tiles of at most TILE x TILE input
    pixels (see tiled)."""
    import numpy as np
    import torch
    from PIL import Image as PILImage

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(model.device, model.dtype)
    try:
        with torch.inference_mode():
            output = tiled(model, tensor)
    except torch.OutOfMemoryError as error:
        raise GenerationFailed(f"the upscaler ran out of memory: {error}") from None
    pixels = (output[0].float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return PILImage.fromarray(pixels, "RGB")


def tiled(model: Any, tensor: Any, tile: int = TILE, overlap: int = OVERLAP) -> Any:
    """`model` over a (1, C, H, W) tensor in tiles: each tile is a core of `tile - 2 * overlap`
    pixels with up to `overlap` pixels of context on every side, and only the core's output is
    kept. A picture that fits one tile runs whole (identical to calling the model on it)."""
    _, _, height, width = tensor.shape
    if height <= tile and width <= tile:
        return model(tensor)
    scale = int(model.scale)
    core = tile - 2 * overlap
    output = tensor.new_zeros((1, model.output_channels, height * scale, width * scale))
    for top in range(0, height, core):
        for left in range(0, width, core):
            bottom, right = min(top + core, height), min(left + core, width)
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1, x1 = min(bottom + overlap, height), min(right + overlap, width)
            piece = model(tensor[..., y0:y1, x0:x1])
            output[..., top * scale : bottom * scale, left * scale : right * scale] = piece[
                ..., (top - y0) * scale : (bottom - y0) * scale, (left - x0) * scale : (right - x0) * scale
            ]
    return output


def target_size(
    size: tuple[int, int], *, scale: float | None = None, width: int | None = None, height: int | None = None
) -> tuple[int, int]:
    """The size an upscale of a `size` picture asks for: `scale` times it, or `width` x
    `height` (one of them alone keeps the aspect ratio). Errors name the field at fault."""
    import math

    if scale is not None and (width is not None or height is not None):
        raise InvalidRequest(
            f"invalid scale={scale!r}: give scale, or width/height, not both", field="scale", value=scale
        )
    if scale is None and width is None and height is None:
        raise InvalidRequest("missing scale: give scale, or width and/or height", field="scale")
    if scale is not None:
        if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
            raise InvalidRequest(f"invalid scale={scale!r}: must be a number > 0", field="scale", value=scale)
        return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    for name, value in (("width", width), ("height", height)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidRequest(
                f"invalid {name}={value!r}: must be an integer >= 1", field=name, value=value
            )
    if width is None:
        assert height is not None
        width = max(1, round(size[0] * height / size[1]))
    if height is None:
        height = max(1, round(size[1] * width / size[0]))
    return width, height

"""Control images: read, fitted to the output size, preprocessed.

Order matters: the image is resized to the output size first and preprocessed after, so
edges and detected maps are drawn at the resolution the ControlNet sees (thin canny lines
stay one pixel wide). The fitted image, not the processed one, is what the gallery keeps
for replay: preprocessing it again gives the same map.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from easel.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL.Image import Image

    from easel.request import GenerationRequest

ASPECT_TOLERANCE = 0.02  # 2%: rounding sides to multiples of 8 must not count as a mismatch


def load_control_inputs(request: GenerationRequest, *, stored_inputs: Path | None = None) -> list[Image]:
    """Each unit's image, read (path, URL, data URL, stored input) as RGB; errors name
    controls[i].image."""
    from easel.storage.images import load_image

    return [
        load_image(unit.image, field=f"controls[{i}].image", stored_inputs=stored_inputs)
        for i, unit in enumerate(request.controls)
    ]


def fit_control_inputs(images: list[Image], width: int, height: int) -> list[Image]:
    """Each image resized to width x height; an image of another shape would be stretched,
    which bends poses and edges, so it is refused naming the unit instead."""
    from PIL import Image as PILImage

    fitted = []
    for i, image in enumerate(images):
        if image.size == (width, height):
            fitted.append(image)
            continue
        ours, theirs = width / height, image.width / image.height
        if abs(theirs - ours) / ours > ASPECT_TOLERANCE:
            raise InvalidRequest(
                f"invalid controls[{i}].image size {image.width}x{image.height}: its shape does not "
                f"match the output size {width}x{height} (it would be stretched); crop it to that "
                "aspect ratio or set width and height to match it",
                field=f"controls[{i}].image",
                value=f"{image.width}x{image.height}",
            )
        fitted.append(image.resize((width, height), PILImage.Resampling.LANCZOS))
    return fitted


def process_control_inputs(request: GenerationRequest, fitted: list[Image]) -> list[Image]:
    """The conditioning image of each unit (its preprocessor applied to the fitted image)."""
    from easel.control.preprocessors import preprocess

    return [
        preprocess(
            image,
            unit.preprocessor,
            canny_low=unit.canny_low,
            canny_high=unit.canny_high,
            field=f"controls[{i}].preprocessor",
        )
        for i, (unit, image) in enumerate(zip(request.controls, fitted, strict=True))
    ]

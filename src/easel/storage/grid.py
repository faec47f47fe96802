"""One image of several: what users post to compare seeds, or input against output."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image


def make_grid(images: list[Image]) -> Image:
    """Lay images out row by row in a near-square grid, all cells the first image's size."""
    from PIL import Image as PILImage

    if not images:
        raise ValueError("a grid needs at least one image")
    width, height = images[0].size
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = PILImage.new("RGB", (cols * width, rows * height), "black")
    for index, image in enumerate(images):
        cell = image if image.size == (width, height) else image.resize((width, height))
        grid.paste(cell.convert("RGB"), (index % cols * width, index // cols * height))
    return grid

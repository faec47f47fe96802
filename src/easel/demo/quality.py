"""Image-quality measures of the demo model's pictures: specks, stray shapes, off-palette colours.

Why these three: they are what a user saw first (issue 19) — a dark or rainbow speck beside
nearly every shape, a second shape now and then, a "black" that came out dark green and a
"white" that came out pink. Every training image is one flat palette shape on a flat palette
background, so each defect has an exact measure against that ground truth:

- **speck**: outside a thin band around the shape (its edge may be soft), every pixel should
  be the background colour. `background_deviation` is the largest channel difference from the
  background's palette colour there; an image "has a speck" when some pixel differs by more
  than SPECK_LEVEL (a quarter of the range: far beyond any smooth shading).
- **stray shapes**: connected regions of non-background palette labels of at least
  MIN_REGION pixels (a shape is 18-40 px across: >= 250 px; a speck is a handful).
- **palette error**: mean absolute difference (0..255, per channel) from the palette colour,
  over the background outside the band and over the shape's inside (eroded away from its edge).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from easel.demo import shapes

BAND = 3  # pixels around the shape left out of the background measures (anti-aliased edges)
SPECK_LEVEL = 64  # a channel this far from the background colour, outside the band: a speck
MIN_REGION = 12  # pixels: the smallest region counted as a (stray) shape


@dataclass(frozen=True)
class ImageQuality:
    """What one image shows against the one-shape-on-flat-background ground truth."""

    regions: int  # non-background regions of at least MIN_REGION pixels
    background_deviation: float  # largest channel difference from the background colour, off the band
    background_error: float  # mean absolute channel difference there
    shape_error: float  # mean absolute channel difference inside the shape (nan: no shape)

    @property
    def has_speck(self) -> bool:
        return self.background_deviation > SPECK_LEVEL


def measure(image: np.ndarray) -> ImageQuality:
    """Measure an (H,W,3) uint8 image; the background is its most common palette colour and the
    shape its largest other region (what easel.demo.shapes.read_scene reads too)."""
    from scipy import ndimage

    names = list(shapes.COLORS)
    labels = shapes.nearest_color_labels(image)
    background = int(np.bincount(labels.ravel(), minlength=len(names)).argmax())
    drawn = labels != background
    regions, count = ndimage.label(drawn)
    sizes = np.asarray(ndimage.sum(drawn, regions, range(1, count + 1))) if count else np.zeros(0)
    shape = regions == int(np.argmax(sizes)) + 1 if count else np.zeros_like(drawn)
    outside = ~ndimage.binary_dilation(shape, iterations=BAND) if count else np.ones_like(drawn)
    pixels = image.astype(np.float32)
    off = np.abs(pixels[outside] - np.array(shapes.COLORS[names[background]], np.float32))
    inside = ndimage.binary_erosion(shape, iterations=2)
    shape_error = float("nan")
    if inside.any():
        colour = int(np.bincount(labels[shape]).argmax())
        shape_error = float(
            np.abs(pixels[inside] - np.array(shapes.COLORS[names[colour]], np.float32)).mean()
        )
    return ImageQuality(
        regions=int((sizes >= MIN_REGION).sum()),
        background_deviation=float(off.max()) if off.size else 0.0,
        background_error=float(off.mean()) if off.size else 0.0,
        shape_error=shape_error,
    )


def summarize(images: np.ndarray) -> dict[str, float]:
    """The figures the model card states, over a batch of (N,H,W,3) uint8 images."""
    measured = [measure(image) for image in images]
    return {
        "one_shape": round(float(np.mean([m.regions == 1 for m in measured])), 4),
        "speck_images": round(float(np.mean([m.has_speck for m in measured])), 4),
        "background_deviation_mean": round(float(np.mean([m.background_deviation for m in measured])), 1),
        "background_error": round(float(np.mean([m.background_error for m in measured])), 2),
        "shape_error": round(float(np.nanmean([m.shape_error for m in measured])), 2),
    }

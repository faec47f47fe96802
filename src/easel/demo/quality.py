"""Image-quality measures of the demo model's pictures: specks, stray shapes, off-palette colours.

Why these three: they are what a user saw first (issue 19) — a dark or rainbow speck beside
nearly every shape, a second shape now and then, a "black" that came out dark green and a
"white" that came out pink. Every training image is one flat palette shape on a flat palette
background, so each defect has an exact measure against that ground truth:

- **speck**: outside a thin band around the shape (its edge may be soft), every pixel should
  be the background colour. `background_deviation` is the largest channel difference from the
  background's palette colour there; an image "has a speck" when some pixel differs by more
  than SPECK_LEVEL (a quarter of the range: far beyond any smooth shading).
- **edge speck**: inside that band a clean render draws only blends of the background and shape
  colours (anti-aliasing), so a pixel far from every such blend is a speck at the edge (the
  rainbow or dark dot the issue saw at the lower-left edge, which the band hides from the measure
  above). `edge_deviation` is the largest channel difference from the nearest blend there; an
  image "has an edge speck" past the same SPECK_LEVEL.
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
    edge_deviation: float  # largest channel difference from the nearest background-shape blend, in the band

    @property
    def has_speck(self) -> bool:
        return self.background_deviation > SPECK_LEVEL

    @property
    def has_edge_speck(self) -> bool:
        return self.edge_deviation > SPECK_LEVEL


@dataclass(frozen=True)
class Layout:
    """How an image reads against the ground truth's form: which palette colour is the
    background, which pixels are its shape (the largest other region) and how large every
    non-background region is."""

    labels: np.ndarray  # (H,W) index into shapes.COLORS of each pixel's nearest palette colour
    background: int  # the most common label
    shape: np.ndarray  # (H,W) bool: the largest connected non-background region (empty: none)
    sizes: np.ndarray  # pixels of each connected non-background region

    @property
    def outside(self) -> np.ndarray:
        """Pixels off the band around the shape: all of them background in a clean render."""
        from scipy import ndimage

        return ~ndimage.binary_dilation(self.shape, iterations=BAND) if self.shape.any() else ~self.shape

    @property
    def inside(self) -> np.ndarray:
        """The shape's pixels away from its (anti-aliased) edge."""
        from scipy import ndimage

        return ndimage.binary_erosion(self.shape, iterations=2)

    @property
    def shape_colour(self) -> int:
        return int(np.bincount(self.labels[self.shape]).argmax())


def layout(image: np.ndarray) -> Layout:
    """Read an (H,W,3) uint8 image: the background is its most common palette colour and the
    shape its largest other region (what easel.demo.shapes.read_scene reads too)."""
    from scipy import ndimage

    labels = shapes.nearest_color_labels(image)
    background = int(np.bincount(labels.ravel(), minlength=len(shapes.COLORS)).argmax())
    drawn = labels != background
    regions, count = ndimage.label(drawn)
    sizes = np.asarray(ndimage.sum(drawn, regions, range(1, count + 1))) if count else np.zeros(0)
    shape = regions == int(np.argmax(sizes)) + 1 if count else np.zeros_like(drawn)
    return Layout(labels=labels, background=background, shape=shape, sizes=sizes)


def _palette(index: int) -> np.ndarray:
    return np.array(list(shapes.COLORS.values())[index], np.float32)


def measure(image: np.ndarray) -> ImageQuality:
    """Measure an (H,W,3) uint8 image against its `layout`."""
    read = layout(image)
    pixels = image.astype(np.float32)
    outside, inside = read.outside, read.inside  # properties that dilate / erode: read once
    off = np.abs(pixels[outside] - _palette(read.background))
    shape_error, edge_deviation = float("nan"), 0.0
    if inside.any():
        shape_error = float(np.abs(pixels[inside] - _palette(read.shape_colour)).mean())
    band = ~outside & ~inside
    if read.shape.any() and band.any():
        edge_deviation = _blend_deviation(pixels[band], read.background, read.shape_colour)
    return ImageQuality(
        regions=int((read.sizes >= MIN_REGION).sum()),
        background_deviation=float(off.max()) if off.size else 0.0,
        background_error=float(off.mean()) if off.size else 0.0,
        shape_error=shape_error,
        edge_deviation=edge_deviation,
    )


def _blend_deviation(pixels: np.ndarray, background: int, shape: int) -> float:
    """The largest channel difference of (N,3) pixels from their nearest blend of the two palette
    colours (the projection onto the segment between them)."""
    start = _palette(background)
    direction = _palette(shape) - start
    length = float(direction @ direction)
    share = np.clip((pixels - start) @ direction / length, 0, 1) if length else np.zeros(len(pixels))
    return float(np.abs(pixels - (start + share[:, None] * direction)).max())


def palette_target(image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """`image` as a clean render of what it shows would be: every pixel off the band set to the
    background's palette colour and the shape's inside to its own, the band left as drawn; with
    the shape's mask. None when the image shows no shape or more than one (there is no single
    scene to snap to). Why: the decoder fine-tune's targets for latents the UNet sampled, whose
    scene no clean render gives, so that near-miss latents decode to flat colours (no speck)."""
    read = layout(image)
    if int((read.sizes >= MIN_REGION).sum()) != 1:
        return None
    target = image.copy()
    target[read.outside] = _palette(read.background).astype(np.uint8)
    target[read.inside] = _palette(read.shape_colour).astype(np.uint8)
    return target, read.shape


def summarize(images: np.ndarray) -> dict[str, float]:
    """The figures the model card states, over a batch of (N,H,W,3) uint8 images."""
    measured = [measure(image) for image in images]
    return {
        "one_shape": round(float(np.mean([m.regions == 1 for m in measured])), 4),
        "speck_images": round(float(np.mean([m.has_speck for m in measured])), 4),
        "background_deviation_mean": round(float(np.mean([m.background_deviation for m in measured])), 1),
        "edge_speck_images": round(float(np.mean([m.has_edge_speck for m in measured])), 4),
        "edge_deviation_mean": round(float(np.mean([m.edge_deviation for m in measured])), 1),
        "background_error": round(float(np.mean([m.background_error for m in measured])), 2),
        "shape_error": round(float(np.nanmean([m.shape_error for m in measured])), 2),
    }

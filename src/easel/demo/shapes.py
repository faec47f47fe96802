"""Procedural training and evaluation data for the bundled demo model.

Why procedural: no image data set can be downloaded here, and a generator that draws a known
shape in a known colour on a known background gives both unlimited training pairs and exact
ground truth (colours, mask) to measure what the trained model does with a prompt.

Everything is a pure function of a seed (numpy Generator + PIL drawing), so training and
evaluation are reproducible across runs and machines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
# The eight corners of the RGB cube: as far apart as colours can be, so that "the dominant
# colour of a region" is unambiguous even when a small model draws soft edges.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Phrasings of a full caption. Word order varies so the text encoder has to bind each colour
# to its role ("shape" or "background") instead of relying on position alone.
TEMPLATES: tuple[str, ...] = (
    "a {color} {shape} on a {background} background",
    "a {color} {shape} on a {background} background",
    "a {background} background with a {color} {shape}",
    "{color} {shape} on {background} background",
    "a {color} {shape} against a {background} background",
    "{color} {shape}, {background} background",
)
# Captions that leave something out, so that single-concept prompts (including negative
# prompts such as "red") mean something to the model.
PARTIAL_TEMPLATES: tuple[str, ...] = (
    "a {color} {shape}",
    "{color} {shape}",
    "a {shape} on a {background} background",
    "a {background} background",
    "a {shape}",
    "{color}",
)
EXTRA_WORDS: tuple[str, ...] = ("a", "on", "with", "against", "background")
# Margin kept free around every shape: the outer frame of an image is pure background,
# which the evaluation uses to read the background colour.
MARGIN = 4


def vocabulary() -> list[str]:
    """All words that appear in captions (the tokenizer gets one whole-word token each)."""
    return sorted({*COLORS, *SHAPES, *EXTRA_WORDS})


@dataclass(frozen=True)
class Scene:
    """One drawable image: which shape, which colours, where."""

    shape: str
    color: str
    background: str
    cx: float
    cy: float
    size: float
    angle: float

    def caption(self, template: str = TEMPLATES[0]) -> str:
        """Fill a caption template with this scene's words."""
        return template.format(color=self.color, shape=self.shape, background=self.background)


def random_scene(rng: np.random.Generator) -> Scene:
    """Draw shape, colours (shape != background) and geometry from `rng`."""
    names = list(COLORS)
    color_index = int(rng.integers(len(names)))
    background_index = int(rng.integers(len(names) - 1))
    if background_index >= color_index:
        background_index += 1
    size = float(rng.uniform(18, 40))
    half = size / 2
    low, high = MARGIN + half, IMAGE_SIZE - MARGIN - half
    return Scene(
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        color=names[color_index],
        background=names[background_index],
        cx=float(rng.uniform(low, high)),
        cy=float(rng.uniform(low, high)),
        size=size,
        angle=float(rng.uniform(0, 2 * np.pi)),
    )


def _polygon(scene: Scene) -> list[tuple[float, float]] | None:
    """Vertices of the shape, or None for a circle (drawn as an ellipse)."""
    half = scene.size / 2
    if scene.shape == "square":
        # Axis-aligned: a square rotated by 45 degrees would look like a diamond.
        return [
            (scene.cx - half, scene.cy - half),
            (scene.cx + half, scene.cy - half),
            (scene.cx + half, scene.cy + half),
            (scene.cx - half, scene.cy + half),
        ]
    if scene.shape == "triangle":
        # Upright equilateral triangle inscribed in the circle of radius `half`.
        angles = [-np.pi / 2, -np.pi / 2 + 2 * np.pi / 3, -np.pi / 2 + 4 * np.pi / 3]
        return [(scene.cx + half * np.cos(a), scene.cy + half * np.sin(a)) for a in angles]
    return None


def draw_mask(scene: Scene) -> Image.Image:
    """The shape's silhouette: white shape on black, mode "L"."""
    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(mask)
    polygon = _polygon(scene)
    if polygon is None:
        half = scene.size / 2
        draw.ellipse([scene.cx - half, scene.cy - half, scene.cx + half, scene.cy + half], fill=255)
    else:
        draw.polygon(polygon, fill=255)
    return mask


def draw_scene(scene: Scene) -> Image.Image:
    """The RGB image of a scene."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), COLORS[scene.background])
    image.paste(Image.new("RGB", image.size, COLORS[scene.color]), mask=draw_mask(scene))
    return image


def random_caption(scene: Scene, rng: np.random.Generator, partial_prob: float = 0.0) -> str:
    """A caption for `scene` in a random phrasing; with `partial_prob`, a partial one."""
    partial = partial_prob > 0 and rng.random() < partial_prob
    templates = PARTIAL_TEMPLATES if partial else TEMPLATES
    return scene.caption(templates[int(rng.integers(len(templates)))])


def make_batch(seed: int, count: int) -> tuple[np.ndarray, np.ndarray, list[Scene]]:
    """`count` scenes from `seed`: images (N,64,64,3) uint8, masks (N,64,64) bool, scenes."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    images = np.stack([np.asarray(draw_scene(s)) for s in scenes])
    masks = np.stack([np.asarray(draw_mask(s)) > 127 for s in scenes])
    return images, masks, scenes


def nearest_color_labels(image: np.ndarray) -> np.ndarray:
    """Index into COLORS of the nearest palette colour, per pixel of an (H,W,3) uint8 image."""
    palette = np.array(list(COLORS.values()), dtype=np.float32)
    pixels = image.reshape(-1, 3).astype(np.float32)
    distances = ((pixels[:, None, :] - palette[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1).reshape(image.shape[:2])


def read_scene(image: np.ndarray, min_shape_pixels: int = 40) -> dict[str, object]:
    """Read back what an image shows: background colour, shape colour, shape mask and kind.

    Why this rule: every pixel is snapped to the nearest palette colour. A shape covers at
    most ~40% of a training image, so the background is the most common palette colour of the
    whole image; the shape is the most common other colour away from the image border (the
    outer MARGIN pixels are always background in training data, and a small model's decoder
    leaves artefacts there). Returns shape_color None when too few pixels differ from the
    background (no visible shape). The shape kind is guessed from how much of its bounding box
    the shape fills (square ~1, circle ~0.79, triangle ~0.5).
    """
    labels = nearest_color_labels(image)
    names = list(COLORS)
    background = int(np.bincount(labels.ravel(), minlength=len(names)).argmax())
    inner = labels[MARGIN:-MARGIN, MARGIN:-MARGIN]
    others = inner[inner != background]
    result: dict[str, object] = {
        "background": names[background],
        "shape_color": None,
        "mask": None,
        "shape": None,
    }
    if others.size < min_shape_pixels:
        return result
    shape_color = int(np.bincount(others, minlength=len(names)).argmax())
    mask = labels == shape_color
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = mask.sum() / box
    shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
    result.update(shape_color=names[shape_color], mask=mask, shape=shape)
    return result

"""Where a result's images go: the gallery, a path the user named, or both.

Shared by every door, so the CLI and the server write the same files the same way. With a
gallery, the gallery's PNG is the original and a user-named file is an exact copy (or the
same pixels and metadata re-encoded as JPEG/WebP), so both replay identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from easel.storage.files import write_atomically

if TYPE_CHECKING:
    from easel.result import GenerationResult
    from easel.storage.gallery import Gallery


@dataclass(frozen=True)
class SavedImage:
    path: Path
    seed: int | None
    nsfw: bool
    gallery_id: str | None = None


def output_paths(output: Path, count: int) -> list[Path]:
    """out.png for one image; out-0.png, out-1.png, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def grid_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}-grid{output.suffix}")


def save_result(
    result: GenerationResult, *, gallery: Gallery | None, output: Path | None, grid: bool
) -> tuple[list[SavedImage], SavedImage | None]:
    """Write the images (and grid); returns what was written, images first."""
    count = len(result.images)
    if gallery is not None:
        entries = gallery.add_result(result, grid=grid)
        saved = [SavedImage(e.path, e.seed, e.nsfw, e.id) for e in entries]
    else:
        target = output or Path(f"easel-{result.seeds[0]}.png")
        saved = [
            SavedImage(result.save(path, index), result.seeds[index], result.nsfw[index])
            for index, path in enumerate(output_paths(target, count))
        ]
        if grid:
            path = grid_path(target)
            write_atomically(path, _encode_grid(result, path.suffix))
            saved.append(SavedImage(path, None, any(result.nsfw)))
    if gallery is not None and output is not None:
        targets = output_paths(output, count) + ([grid_path(output)] if grid else [])
        saved = [
            SavedImage(copy_image(item.path, target), item.seed, item.nsfw, item.gallery_id)
            for item, target in zip(saved, targets, strict=True)
        ]
    images, grid_item = saved[:count], (saved[count] if grid else None)
    return images, grid_item


def copy_image(source: Path, target: Path) -> Path:
    """Copy an image with its metadata; re-encode when the target's format differs."""
    if target.suffix.lower() == source.suffix.lower():
        return write_atomically(target, source.read_bytes())
    from PIL import Image

    from easel.storage.metadata import encode_image, read_metadata

    metadata = read_metadata(source)
    with Image.open(source) as image:
        data = encode_image(
            image.convert("RGB"), target.suffix, metadata.parameters or "", metadata.document or {}
        )
    return write_atomically(target, data)


def _encode_grid(result: GenerationResult, suffix: str) -> bytes:
    from easel.storage.metadata import encode_image

    return encode_image(result.grid(), suffix, result.parameters(0), {"schema": "easel.grid/1"})

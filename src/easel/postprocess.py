"""Upscaling a picture someone hands in (A1111's "extras"), and the PNG it comes back as.

Every door that upscales (`easel upscale`, /sdapi/v1/extra-*, /api/v1/upscale) reads the
picture here, with the text it carries, and writes the result here, so they agree on what
the output says about itself: the source's text chunks are kept (easel's recipe and A1111's
`parameters`, read from EXIF for a JPEG or WebP source), and A1111's `postprocessing` info
text is added ("Postprocess upscale by: 2, Postprocess upscaler: Lanczos"), as A1111's extras
tab writes it. The recipe still describes the picture before the upscale: replaying it makes
that picture, and the `postprocessing` text says what was done to it after.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

from easel.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL.Image import Image

POSTPROCESSING_KEY = "postprocessing"


def read_source(data: bytes, *, field: str, value: object = None) -> tuple[Image, dict[str, str]]:
    """A picture handed in to be upscaled, as RGB (EXIF orientation applied), with the text it
    carries (PNG text chunks; `parameters` and `easel` from EXIF for other formats)."""
    from PIL import ImageOps

    from easel.storage.images import check_pixel_limit, opened_image
    from easel.storage.metadata import EASEL_KEY, PARAMETERS_KEY, read_metadata

    with opened_image(data, field=field, value=value) as opened:
        check_pixel_limit(opened.width, opened.height, field=field, value=value)
        opened.load()
        text = {k: v for k, v in (getattr(opened, "text", None) or {}).items() if isinstance(v, str)}
        image = ImageOps.exif_transpose(opened).convert("RGB")
    if PARAMETERS_KEY not in text or EASEL_KEY not in text:
        metadata = read_metadata(io.BytesIO(data))
        if metadata.parameters is not None:
            text.setdefault(PARAMETERS_KEY, metadata.parameters)
        if metadata.document is not None:
            text.setdefault(EASEL_KEY, json.dumps(metadata.document, ensure_ascii=False, sort_keys=True))
    return image, text


def read_source_file(path: str | Path, *, field: str) -> tuple[Image, dict[str, str]]:
    """read_source for a file path; a missing or unreadable file is an InvalidRequest naming `field`."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        why = "no such file" if isinstance(error, FileNotFoundError) else error.strerror or str(error)
        raise InvalidRequest(f"invalid {field}={str(path)!r}: {why}", field=field, value=str(path)) from None
    return read_source(data, field=field, value=str(path))


def postprocessing_info(items: dict[str, object]) -> str:
    """A1111's postprocessing info text: "Key: value" items joined by ", " (numbers without a
    needless ".0", values with commas or colons JSON-quoted, as A1111 quotes them)."""
    from easel.storage.metadata import _number, _quote

    def shown(value: object) -> str:
        return (
            _number(value)
            if isinstance(value, int | float) and not isinstance(value, bool)
            else _quote(value)
        )

    return ", ".join(f"{key}: {shown(value)}" for key, value in items.items())


def upscaled_png(image: Image, text: dict[str, str], info: str | None) -> bytes:
    """`image` as PNG bytes carrying `text` (the source's chunks) and `info` as `postprocessing`."""
    from PIL import PngImagePlugin

    chunks = PngImagePlugin.PngInfo()
    for key, value in text.items():
        if key != POSTPROCESSING_KEY:
            chunks.add_text(key, value)
    if info:
        chunks.add_text(POSTPROCESSING_KEY, info)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=chunks)
    return buffer.getvalue()

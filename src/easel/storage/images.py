"""Reading the images users hand in (init images now, control images later).

Users pass a path, an http(s) URL or a data: URL (what browsers and the A1111 API send).
Whatever comes in is made safe and regular here: EXIF orientation applied (phone photos),
converted to RGB (RGBA/P/L inputs), decompression bombs refused, and any failure reported as
an InvalidRequest naming the field, never as a PIL traceback.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from easel.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL.Image import Image

INPUT_SCHEME = "easel-input:"  # an input image the gallery stored, by content hash
STORED_INPUT = re.compile(r"^[0-9a-f]{64}\.png$")
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
DOWNLOAD_TIMEOUT_S = 30


def load_image(reference: str, *, field: str, stored_inputs: Path | None = None) -> Image:
    """Open `reference` as an RGB image with EXIF orientation applied.

    `easel-input:<sha256>.png` names an input the gallery stored (in `stored_inputs`): image
    recipes refer to their inputs that way, so they replay without carrying a server path.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if reference.startswith(INPUT_SCHEME):
        reference = str(_stored_input(reference, field=field, folder=stored_inputs))
    data = _read_bytes(reference, field=field)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise InvalidRequest(
                    f"invalid {field}={_short(reference)}: {opened.width}x{opened.height} is larger "
                    f"than the {MAX_PIXELS // 1_000_000} megapixel limit",
                    field=field,
                    value=reference,
                )
            image = ImageOps.exif_transpose(opened)
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as error:
        raise InvalidRequest(
            f"invalid {field}={_short(reference)}: not a readable image ({error})",
            field=field,
            value=reference,
        ) from None
    return image


def fit_to_multiple_of_8(image: Image, width: int | None, height: int | None) -> Image:
    """Resize to the requested size, or round the image's own size down to multiples of 8."""
    target = (width or image.width // 8 * 8, height or image.height // 8 * 8)
    if target[0] < 8 or target[1] < 8:
        raise InvalidRequest(
            f"invalid init_image size {image.width}x{image.height}: smaller than 8x8",
            field="init_image",
            value=f"{image.width}x{image.height}",
        )
    if image.size == target:
        return image
    from PIL import Image as PILImage

    return image.resize(target, PILImage.Resampling.LANCZOS)


def _stored_input(reference: str, *, field: str, folder: Path | None) -> Path:
    name = reference[len(INPUT_SCHEME) :]
    if not STORED_INPUT.match(name):
        raise InvalidRequest(
            f"invalid {field}={reference!r}: stored inputs are named by a sha256 hex digest", field=field
        )
    path = None if folder is None else folder / name
    if path is None or not path.is_file():
        raise InvalidRequest(
            f"invalid {field}={reference!r}: this gallery has no such stored input",
            field=field,
            value=reference,
        )
    return path


def _read_bytes(reference: str, *, field: str) -> bytes:
    if reference.startswith("data:"):
        _, _, payload = reference.partition(",")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"invalid {field}: data URL is not valid base64", field=field) from None
    if reference.startswith(("http://", "https://")):
        return _download(reference, field=field)
    path = Path(reference).expanduser()
    if not path.is_file():
        raise InvalidRequest(
            f"invalid {field}={reference!r}: no such file ({path.resolve()})", field=field, value=reference
        )
    if path.stat().st_size > MAX_DOWNLOAD_BYTES:
        raise InvalidRequest(
            f"invalid {field}={reference!r}: file larger than 50 MB", field=field, value=reference
        )
    return path.read_bytes()


def _download(url: str, *, field: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "easel"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except (urllib.error.URLError, TimeoutError, ValueError) as error:
        raise InvalidRequest(
            f"invalid {field}={url!r}: could not download ({error})", field=field, value=url
        ) from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise InvalidRequest(f"invalid {field}={url!r}: larger than 50 MB", field=field, value=url)
    return data


def _short(reference: str) -> str:
    return repr(reference if len(reference) <= 80 else reference[:77] + "...")

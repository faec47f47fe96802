"""Reading the images users hand in (init images now, control images later).

Users pass a path, an http(s) URL or a data: URL (what browsers and the A1111 API send).
Whatever comes in is made safe and regular here: EXIF orientation applied (phone photos),
converted to RGB (RGBA/P/L inputs), decompression bombs refused, and any failure reported as
an InvalidRequest naming the field, never as a PIL traceback.

Only IMAGE_FORMATS are read (opened_image, the one way easel opens an image it is handed):
PNG, JPEG and WebP, what browsers, phones and the A1111/OpenAI clients send, plus GIF (its
first frame) and BMP, which Pillow decodes in its own small code. Not TIFF (libtiff and its
many codecs are a large attack surface, and no client sends TIFF), and none of Pillow's other
formats: EPS would run Ghostscript on whatever PostScript a caller sends.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

from easel.errors import EaselError, InvalidRequest

if TYPE_CHECKING:
    from PIL.Image import Image

INPUT_SCHEME = "easel-input:"  # an input image the gallery stored, by content hash
STORED_INPUT = re.compile(r"^[0-9a-f]{64}\.png$")
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
DOWNLOAD_TIMEOUT_S = 30
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # Pillow's names; see the module docstring
READABLE = "PNG, JPEG or WebP"  # what messages ask for (GIF and BMP are read, not advertised)
OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f...>"
TEXT_CHUNK_ERRORS = ("decompressed data too large", "too much memory used in text chunks")  # lower case


@contextmanager
def opened_image(
    source: bytes | str | Path | IO[bytes], *, field: str, value: object = None
) -> Iterator[Image]:
    """Image.open limited to IMAGE_FORMATS. Every failure inside the block (opening, decoding,
    converting) is an InvalidRequest naming `field` (and `value` when given): an unsupported
    format by name, a PNG text chunk that inflates past Pillow's limit, truncated or corrupt
    data. Pillow's own limits stay as they are; its object reprs never reach the message."""
    from PIL import Image as PILImage

    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with PILImage.open(stream, formats=IMAGE_FORMATS) as image:
            yield image
    except EaselError:
        raise
    except Exception as error:  # Pillow's decoders fail in many ways on hostile data
        named = f"{field}={_short(str(value))}" if value is not None else field
        raise InvalidRequest(f"invalid {named}: {_why_unreadable(error, source)}", field=field,
                             value=value) from None  # fmt: skip


def check_pixel_limit(
    width: int, height: int, *, field: str, value: object = None, named: bool = False
) -> None:
    """Refuse an input image over MAX_PIXELS, from its header's size (before decoding, so a
    decompression bomb never inflates): one refusal for every door. `named`: the message shows
    `value` beside the field (a path or reference the user gave)."""
    if width * height > MAX_PIXELS:
        shown = f"{field}={_short(str(value))}" if named else field
        raise InvalidRequest(
            f"invalid {shown}: {width}x{height} is larger than the {MAX_PIXELS // 1_000_000} megapixel "
            "limit for input images",
            field=field,
            value=value,
        )


def _why_unreadable(error: Exception, source: bytes | str | Path | IO[bytes]) -> str:
    from PIL import PngImagePlugin, UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        found = _sniff_format(source)
        if found is not None and found not in IMAGE_FORMATS:
            return f"unsupported image format {found}: send {READABLE}"
        return f"not a readable image ({READABLE})"
    if isinstance(error, ValueError) and any(text in str(error).lower() for text in TEXT_CHUNK_ERRORS):
        return (f"text chunk too large: the image's text chunks inflate past "
                f"{PngImagePlugin.MAX_TEXT_CHUNK // 2**20} MB")  # fmt: skip
    reason = OBJECT_REPR.sub("the data", str(error)).strip() or type(error).__name__
    return f"not a readable image ({READABLE}): {reason}"


def _sniff_format(source: bytes | str | Path | IO[bytes]) -> str | None:
    """The format Pillow would take `source` for, from its first bytes only (nothing decoded)."""
    from PIL import Image as PILImage

    try:
        if isinstance(source, bytes):
            prefix = source[:16]
        elif isinstance(source, str | Path):
            with open(source, "rb") as file:
                prefix = file.read(16)
        else:
            source.seek(0)
            prefix = source.read(16)
    except (OSError, ValueError):
        return None
    PILImage.init()
    for name in PILImage.ID:
        accept = PILImage.OPEN[name][1]
        try:
            if accept is not None and accept(prefix):
                return name
        except Exception:  # an accept function that wants more bytes: not this format
            continue
    return None


def load_image(reference: str, *, field: str, stored_inputs: Path | None = None, mask: bool = False) -> Image:
    """Open `reference` as an RGB image with EXIF orientation applied (`mask`: as an L mask,
    see as_mask).

    `easel-input:<sha256>.png` names an input the gallery stored (in `stored_inputs`): image
    recipes refer to their inputs that way, so they replay without carrying a server path.
    """
    from PIL import ImageOps

    if reference.startswith(INPUT_SCHEME):
        reference = str(stored_input_path(reference, field=field, folder=stored_inputs))
    data = _read_bytes(reference, field=field)
    with opened_image(data, field=field, value=reference) as opened:
        check_pixel_limit(opened.width, opened.height, field=field, value=reference, named=True)
        image = ImageOps.exif_transpose(opened)
        image = as_mask(image) if mask else image.convert("RGB")
    return image


def as_mask(image: Image) -> Image:
    """An inpainting mask as L (white = repaint), read as AUTOMATIC1111 reads one: a mask with
    transparency (strokes painted on a transparent layer) is its alpha channel, opaque (> 128)
    meaning repaint; any other image is its luminance."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha.point(lambda value: 255 if value > 128 else 0)
    return image.convert("L")


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


def stored_input_path(reference: str, *, field: str, folder: Path | None) -> Path:
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

"""Image metadata: how an image was made, in the formats the ecosystem already reads.

Every image carries two texts:
- `parameters`: the AUTOMATIC1111 layout (prompt line(s), an optional "Negative prompt:" line,
  then the "Steps: ..., Sampler: ..., ..." settings line) that A1111, sd-parsers,
  sd-prompt-reader and most galleries parse;
- `easel`: the complete concrete request as schema-versioned JSON, with the index of the image
  in its batch and the hashes of every model component used, which is what replay needs.

PNG stores them as text chunks (iTXt when not Latin-1, so Chinese and emoji round-trip);
JPEG and WebP store `parameters` in EXIF UserComment (as A1111 does) and the JSON in EXIF
ImageDescription. Nothing time- or machine-dependent is written, so replaying a request on
the same machine gives a byte-identical file.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from easel.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL.Image import Image

    from easel.request import GenerationRequest

SCHEMA = "easel.image/1"
PARAMETERS_KEY = "parameters"
EASEL_KEY = "easel"
EXIF_USER_COMMENT = 0x9286
EXIF_IMAGE_DESCRIPTION = 0x010E
EXIF_IFD = 0x8769
UNICODE_PREFIX = b"UNICODE\x00"
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
# one "Key: value" item of the settings line; values may be JSON-quoted
SETTING = re.compile(r'\s*([\w][\w \-/+.()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


class Recipe(Protocol):
    """What image_document reads of a result (easel.result.GenerationResult is one; that
    module imports this one, so this one names only the fields)."""

    @property
    def request(self) -> GenerationRequest: ...
    @property
    def seeds(self) -> list[int]: ...
    @property
    def sampler(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    @property
    def model_family(self) -> str: ...
    @property
    def model_hashes(self) -> dict[str, str]: ...
    @property
    def nsfw(self) -> list[bool]: ...


@dataclass(frozen=True)
class ImageMetadata:
    """What an image file carries (either part may be missing for other tools' images)."""

    parameters: str | None
    document: dict[str, Any] | None

    def parsed_parameters(self) -> dict[str, Any] | None:
        return None if self.parameters is None else parse_parameters(self.parameters)


# -- the A1111 "parameters" text ------------------------------------------------------------


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def _number(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))


def format_parameters(
    request: GenerationRequest,
    *,
    seed: int,
    sampler: str,
    model_name: str,
    model_hash: str | None,
    extra: dict[str, object] | None = None,
    vae_hash: str | None = None,
) -> str:
    """The A1111 layout for one image of a concrete request (its LoRAs as <lora:...> tags at
    the end of the prompt, where A1111 reads them)."""
    from easel.prompts.extra_networks import lora_tag

    lines = ["".join([request.prompt, *(f" {lora_tag(lora.name, lora.weight)}" for lora in request.loras)])]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    from easel.schedulers import split_label

    parts = split_label(sampler)  # A1111 >= 1.9: "Sampler: DPM++ 2M, Schedule type: Karras"
    settings: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": sampler if parts is None else parts[0],
        **({} if parts is None or parts[1] is None else {"Schedule type": parts[1]}),
        "CFG scale": _number(request.guidance_scale or 0),
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
    }
    if model_hash:
        settings["Model hash"] = model_hash
    settings["Model"] = model_name
    if request.vae is not None:  # A1111's order and names: "VAE hash: 63aeecb90f, VAE: sdxl_vae.safetensors"
        from easel.model_names import vae_display_name

        if vae_hash:
            settings["VAE hash"] = vae_hash
        settings["VAE"] = vae_display_name(request.vae)
    if request.variation_seed is not None and request.variation_strength > 0:  # A1111: only then
        settings["Variation seed"] = request.variation_seed + (seed - (request.seed or 0))  # this image's
        settings["Variation seed strength"] = _number(request.variation_strength)
    if request.seed_resize_from is not None:
        settings["Seed resize from"] = "{}x{}".format(*request.seed_resize_from)
    if request.is_img2img and request.strength is not None:
        settings["Denoising strength"] = _number(request.strength)
    if request.eta:  # A1111 writes DDIM's eta only when it is not 0
        settings["Eta DDIM"] = _number(request.eta)
    if request.clip_skip is not None and request.clip_skip > 1:  # A1111 writes it only then
        settings["Clip skip"] = request.clip_skip
    if request.tiling:  # A1111 writes it only when on
        settings["Tiling"] = "True"
    settings.update(extra or {})
    settings["Version"] = f"easel {_easel_version()}"
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in settings.items()))
    return "\n".join(lines)


def control_parameters(request: GenerationRequest, hashes: dict[str, str]) -> dict[str, object]:
    """One "ControlNet i" entry per unit, in the layout sd-webui-controlnet writes
    (`ControlNet 0: "Module: canny, Model: name [hash], Weight: 1, ..."`)."""
    from easel.model_names import control_display_name

    entries: dict[str, object] = {}
    for index, unit in enumerate(request.controls):
        model = control_display_name(unit.model)
        digest = hashes.get(f"control_{index}")
        if digest:
            model += f" [{digest[:8]}]"
        parts = [
            f"Module: {unit.preprocessor}",
            f"Model: {model}",
            f"Weight: {_number(unit.conditioning_scale)}",
        ]
        if unit.preprocessor == "canny":
            parts += [f"Threshold A: {unit.canny_low}", f"Threshold B: {unit.canny_high}"]
        if unit.mode is not None:  # a union ControlNet's control type (FLUX.1 union models)
            parts.append(f"Union Mode: {unit.mode}")
        parts += [
            f"Guidance Start: {_number(unit.guidance_start)}",
            f"Guidance End: {_number(unit.guidance_end)}",
        ]
        entries[f"ControlNet {index}"] = ", ".join(parts)
    return entries


def lora_parameters(request: GenerationRequest, hashes: dict[str, str]) -> dict[str, object]:
    """`Lora hashes: "name: 0123456789ab, ..."` as A1111 writes it (12 hex of the addnet hash)."""
    entries = [
        f"{lora.name.replace(':', '').replace(',', '')}: {hashes[f'lora:{lora.name}'][:12]}"
        for lora in request.loras
        if f"lora:{lora.name}" in hashes
    ]
    return {"Lora hashes": ", ".join(entries)} if entries else {}


def embedding_parameters(hashes: dict[str, str]) -> dict[str, object]:
    """`TI hashes: "name: 0123456789ab, ..."` as A1111 writes it (12 hex of the embedding file's
    sha256), from the `ti:<name>` entries of the model hashes (in the order the prompts name them)."""
    entries = [
        f"{key[3:].replace(':', '').replace(',', '')}: {digest[:12]}"
        for key, digest in hashes.items()
        if key.startswith("ti:")
    ]
    return {"TI hashes": ", ".join(entries)} if entries else {}


def inpaint_parameters(request: GenerationRequest) -> dict[str, object]:
    """The inpainting entries as AUTOMATIC1111 writes them, in its order, each only when not
    its default: "Mask mode: Inpaint not masked" (inverted), "Mask blur" (when blurred),
    "Inpaint area: Only masked" with "Masked area padding", "Masked content" (other than
    original); plus easel's "Outpaint" (left, top, right, bottom) and "Paste back: False",
    which A1111 does not have."""
    from easel.inpaint import A1111_MASKED_CONTENT

    if not request.is_inpaint:
        return {}
    entries: dict[str, object] = {}
    if request.invert_mask:
        entries["Mask mode"] = "Inpaint not masked"
    if request.mask_blur > 0:
        entries["Mask blur"] = request.mask_blur
    if request.inpaint_area == "masked":
        entries["Inpaint area"] = "Only masked"
        entries["Masked area padding"] = request.inpaint_padding
    if request.masked_content != "original":
        entries["Masked content"] = A1111_MASKED_CONTENT[request.masked_content]
    if request.outpaint is not None:
        entries["Outpaint"] = ",".join(str(side) for side in request.outpaint)
    if not request.paste_back:
        entries["Paste back"] = "False"
    return entries


def hires_parameters(request: GenerationRequest) -> dict[str, object]:
    """The hires fix entries as AUTOMATIC1111 writes them: "Denoising strength", then "Hires
    upscale" (or "Hires resize: WxH" with 0 for a side not given), "Hires steps" (when set),
    "Hires upscaler", and the hires prompt, negative prompt, sampler and CFG scale when they
    differ from the first pass's. `Size` stays the first pass's, as in A1111."""
    hires = getattr(request, "hires", None)
    if hires is None:
        return {}
    entries: dict[str, object] = {"Denoising strength": _number(hires.strength)}
    if hires.width is None and hires.height is None:
        entries["Hires upscale"] = _number(2.0 if hires.scale is None else hires.scale)
    else:
        entries["Hires resize"] = f"{hires.width or 0}x{hires.height or 0}"
    if hires.steps:
        entries["Hires steps"] = hires.steps
    entries["Hires upscaler"] = hires.upscaler
    if hires.prompt is not None and hires.prompt != request.prompt:
        entries["Hires prompt"] = hires.prompt
    if hires.negative_prompt is not None and hires.negative_prompt != request.negative_prompt:
        entries["Hires negative prompt"] = hires.negative_prompt
    if hires.scheduler is not None and hires.scheduler != request.scheduler:
        entries["Hires sampler"] = hires.scheduler
    if hires.guidance_scale is not None and hires.guidance_scale != request.guidance_scale:
        entries["Hires CFG Scale"] = _number(hires.guidance_scale)
    return entries


def parse_parameters(text: str) -> dict[str, Any]:
    """Split an A1111 `parameters` text into prompt, negative prompt and settings."""
    lines = text.strip("\n").split("\n")
    settings: dict[str, str] = {}
    if lines and lines[-1].startswith("Steps:"):
        for key, value in SETTING.findall(lines.pop()):
            settings[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if negative_lines or line.startswith("Negative prompt:"):
            negative_lines.append(
                line.removeprefix("Negative prompt:").lstrip() if not negative_lines else line
            )
        else:
            prompt_lines.append(line)
    return {
        "prompt": "\n".join(prompt_lines),
        "negative_prompt": "\n".join(negative_lines),
        "settings": settings,
    }


# -- the easel JSON document ------------------------------------------------------------------


def image_document(result: Recipe, index: int) -> dict[str, Any]:
    """Everything needed to make image `index` of `result` again."""
    return {
        "schema": SCHEMA,
        "easel_version": _easel_version(),
        "request": result.request.model_dump(mode="json"),
        "image_index": index,
        "seed": result.seeds[index],
        "sampler": result.sampler,
        "model": {"name": result.model_name, "family": result.model_family, "hashes": result.model_hashes},
        "nsfw": result.nsfw[index],
    }


def request_from_document(
    document: dict[str, Any], overrides: dict[str, Any] | None = None
) -> tuple[GenerationRequest, int]:
    """The request (with `overrides` applied) and image index recorded in an easel document."""
    from easel.request import GenerationRequest

    schema = document.get("schema")
    if schema != SCHEMA:
        raise InvalidRequest(
            f"invalid metadata: schema {schema!r} is not {SCHEMA!r}", field="schema", value=schema
        )
    fields = {**document["request"], **(overrides or {})}
    index = int(document.get("image_index", 0))
    if overrides and ("seed" in overrides or "num_images" in overrides):
        index = 0  # a new seed (or batch) starts a new batch: the image asked for comes first
        fields["num_images"] = overrides.get("num_images", 1)
    return GenerationRequest.from_fields(fields), index


# -- files ---------------------------------------------------------------------------------


def encode_image(image: Image, suffix: str, parameters: str, document: dict[str, Any]) -> bytes:
    """The image as PNG/JPEG/WebP bytes, with both metadata texts embedded."""
    from PIL import PngImagePlugin

    image_format = FORMATS.get(suffix.lower())
    if image_format is None:
        raise InvalidRequest(
            f"invalid output suffix {suffix!r}: use .png, .jpg or .webp", field="output", value=suffix
        )
    document_text = json.dumps(document, ensure_ascii=False, sort_keys=True)
    buffer = io.BytesIO()
    if image_format == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text(PARAMETERS_KEY, parameters)
        info.add_text(EASEL_KEY, document_text)
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        from PIL import Image as PILImage

        exif = PILImage.Exif()
        exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = UNICODE_PREFIX + parameters.encode("utf-16-be")
        exif[EXIF_IMAGE_DESCRIPTION] = json.dumps(document, ensure_ascii=True, sort_keys=True)
        image.save(buffer, format=image_format, exif=exif, quality=95)
    return buffer.getvalue()


def read_metadata(path: str | Path | IO[bytes]) -> ImageMetadata:
    """What an image file (or an open binary stream) says about how it was made; InvalidRequest
    naming `image` if it is no image easel reads (storage.images.IMAGE_FORMATS)."""
    from easel.storage.images import opened_image

    shown = str(path) if isinstance(path, str | Path) else None  # a stream has no name to show
    with opened_image(path, field="image", value=shown) as image:
        image.load()
        text = dict(getattr(image, "text", {}) or {})
        exif = image.getexif()
    parameters = text.get(PARAMETERS_KEY)
    document_text = text.get(EASEL_KEY)
    if parameters is None:
        parameters = _user_comment(exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT))
    if document_text is None:
        description = exif.get(EXIF_IMAGE_DESCRIPTION)
        document_text = description if isinstance(description, str) and description.startswith("{") else None
    document = None
    if document_text:
        try:
            document = json.loads(document_text)
        except ValueError:
            document = None
    return ImageMetadata(parameters, document)


def _user_comment(raw: object) -> str | None:
    if isinstance(raw, str):
        return raw or None
    if not isinstance(raw, bytes) or not raw:
        return None
    if raw.startswith(UNICODE_PREFIX):
        body = raw[len(UNICODE_PREFIX) :]
        # A1111 writes UTF-16 big-endian via piexif; some tools write little-endian
        encoding = "utf-16-le" if body[1:2] == b"\x00" and body[:1] != b"\x00" else "utf-16-be"
        return body.decode(encoding, errors="replace")
    return raw[8:].decode("utf-8", errors="replace") if raw[:8].strip(b"\x00 ") in (b"ASCII", b"") else None


def _easel_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("easel")
    except PackageNotFoundError:
        return "0+unknown"

"""Upscaling over HTTP: A1111's extras routes and the native ones.

A1111 (/sdapi/v1):
GET  /upscalers              every upscaler (A1111's shape: name, model_name, model_path, ...)
GET  /realesrgan-models      the ESRGAN/RealESRGAN model upscalers (name, path, scale)
POST /extra-single-image     `image` upscaled: {html_info, image}
POST /extra-batch-images     `imageList` [{data, name}] upscaled: {html_info, images}

Native:
GET  /api/v1/upscalers       the names `upscaler` takes
POST /api/v1/upscale         {image, scale | width/height, upscaler} -> {image (PNG data URL), ...}

The extras fields are A1111's, each honoured or refused with a 422 naming it: resize_mode 0
scales by upscaling_resize, 1 fits upscaling_resize_w x upscaling_resize_h (the larger ratio,
then, with upscaling_crop, cropped to that box from the centre); upscaler_1 upscales ("None":
the picture comes back as sent, as in A1111), upscaler_2 is blended in at
extras_upscaler_2_visibility; sizes are A1111's (the scaled size rounded down to a multiple of
8). Face restoration (gfpgan_visibility, codeformer_visibility) is not built: above 0 they are
refused; codeformer_weight and upscale_first only matter with it, and show_extras_results only
for A1111's folder mode, so they are accepted as sent. The returned PNGs keep the source's text
chunks and add A1111's `postprocessing` text (easel.postprocess).

Upscaling runs in a worker thread (the event loop keeps answering) on the server's engine, so
model upscalers load once and stay cached; they do not wait in the generation queue.
"""

from __future__ import annotations

import asyncio
import base64
import html
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from easel.errors import InvalidRequest, UnsupportedFeature
from easel.server import openapi as api
from easel.server.openapi import A1111, NATIVE, documented
from easel.server.state import ServerState, state_of

if TYPE_CHECKING:
    from PIL.Image import Image

State = Annotated[ServerState, Depends(state_of)]
MAX_SCALE = 8  # A1111's upscaling_resize slider ends at 8


class ExtrasRequest(BaseModel):
    """A1111's extras fields (ExtrasBaseRequest), with A1111's defaults; anything else is
    refused by name (check_extras)."""

    model_config = ConfigDict(
        extra="allow", strict=True, allow_inf_nan=False, json_schema_extra={"additionalProperties": False}
    )

    resize_mode: int = Field(0, ge=0, le=1, description="0: scale by upscaling_resize; 1: to _w x _h")
    show_extras_results: bool = Field(True, description="A1111's folder mode only; the API always answers")
    gfpgan_visibility: float = Field(0, ge=0, le=1, description="Face restoration: not built (0 only)")
    codeformer_visibility: float = Field(0, ge=0, le=1, description="Face restoration: not built (0 only)")
    codeformer_weight: float = Field(0, ge=0, le=1, description="Used only with codeformer_visibility")
    upscaling_resize: float = Field(2, gt=0, le=MAX_SCALE)
    upscaling_resize_w: int = Field(512, ge=1, le=16384)
    upscaling_resize_h: int = Field(512, ge=1, le=16384)
    upscaling_crop: bool = Field(True, description="resize_mode 1: crop to upscaling_resize_w x _h")
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = Field(False, description="Order against face restoration (not built)")


class ExtrasSingleImageRequest(ExtrasRequest):
    image: str = Field("", description="base64 image (or a data URL)")


class FileData(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    data: str = Field(description="base64 image (or a data URL)")
    name: str


class ExtrasBatchImagesRequest(ExtrasRequest):
    imageList: list[FileData] = Field(description="The images to upscale")  # A1111's name


class UpscaleRequest(BaseModel):
    """A picture to upscale (the native API): by `scale`, or to `width` x `height`."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    image: str = Field(description="base64 image or a data URL")
    scale: float | None = Field(None, gt=0, le=MAX_SCALE)
    width: int | None = Field(None, ge=1, le=16384)
    height: int | None = Field(None, ge=1, le=16384)
    upscaler: str = Field("Lanczos", description="A name from GET /api/v1/upscalers")


def check_extras(body: ExtrasRequest) -> None:
    """Refuse what A1111 would use and easel does not build, and fields A1111 does not have."""
    for name, value in (body.model_extra or {}).items():
        raise InvalidRequest(
            f"unknown field {name!r}: AUTOMATIC1111's extras API has no such field, and easel refuses what "
            "it would otherwise ignore",
            field=name,
            value=value,
        )
    for name in ("gfpgan_visibility", "codeformer_visibility"):
        value = getattr(body, name)
        if value != 0:
            raise InvalidRequest(
                f"invalid {name}={value!r}: easel has no face restoration (GFPGAN, CodeFormer); send 0",
                field=name,
                value=value,
            )


def extras_size(size: tuple[int, int], body: ExtrasRequest) -> tuple[int, int]:
    """A1111's output size: the factor times the size, rounded down to a multiple of 8 (at
    least 8); resize_mode 1's factor is the larger of the two ratios."""
    if body.resize_mode == 1:
        by = max(body.upscaling_resize_w / size[0], body.upscaling_resize_h / size[1])
    else:
        by = body.upscaling_resize
    return max(8, int(size[0] * by // 8 * 8)), max(8, int(size[1] * by // 8 * 8))


def run_extras(state: ServerState, body: ExtrasRequest, data: bytes, *, field: str) -> tuple[bytes, str]:
    """One picture through A1111's extras upscale: (PNG bytes, the postprocessing info text)."""
    from PIL import Image as PILImage

    from easel.postprocess import postprocessing_info, read_source, upscaled_png

    image, text = read_source(data, field=field)
    upscalers = state.engine.upscalers
    names = upscalers.names()
    for name in ("upscaler_1", "upscaler_2"):
        value = getattr(body, name)
        if value not in names:
            raise InvalidRequest(
                f"invalid {name}={value!r}: unknown upscaler; known: {', '.join(names)} "
                "(GET /sdapi/v1/upscalers)",
                field=name,
                value=value,
            )
    if body.upscaler_1 == "None":  # A1111: no first upscaler, no upscaling at all
        return upscaled_png(image, text, None), ""
    width, height = extras_size(image.size, body)
    _check_pixels(
        state, width, height, field="upscaling_resize" if body.resize_mode == 0 else "upscaling_resize_w"
    )
    info: dict[str, object] = (
        {"Postprocess upscale by": body.upscaling_resize}
        if body.resize_mode == 0
        else {"Postprocess upscale to": f"{body.upscaling_resize_w}x{body.upscaling_resize_h}"}
    )
    result = upscalers.upscale(image, width, height, body.upscaler_1, field="upscaler_1")
    info["Postprocess upscaler"] = body.upscaler_1
    if body.upscaler_2 != "None" and body.extras_upscaler_2_visibility > 0:
        second = upscalers.upscale(image, width, height, body.upscaler_2, field="upscaler_2")
        result = PILImage.blend(result, second, body.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = body.upscaler_2
    if body.resize_mode == 1 and body.upscaling_crop:
        result = _centre_crop(result, body.upscaling_resize_w, body.upscaling_resize_h)
        info["Postprocess crop to"] = f"{result.width}x{result.height}"
    infotext = postprocessing_info(info)
    return upscaled_png(result, text, infotext), infotext


def _centre_crop(image: Image, width: int, height: int) -> Image:
    """A1111's crop: the picture pasted centred onto a black width x height canvas."""
    from PIL import Image as PILImage

    canvas = PILImage.new("RGB", (width, height))
    canvas.paste(image, box=(width // 2 - image.width // 2, height // 2 - image.height // 2))
    return canvas


def _check_pixels(state: ServerState, width: int, height: int, *, field: str) -> None:
    limit = state.settings.max_pixels
    if width * height > limit:
        raise InvalidRequest(
            f"invalid {field}: the output would be {width}x{height}, more than this server's limit of "
            f"{limit} pixels",
            field=field,
        )


def html_info(infotext: str) -> str:
    """A1111's plaintext_to_html: escaped lines joined by <br>, in one paragraph."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in infotext.split("\n")) + "</p>"


def _decode(state: ServerState, data: str, *, field: str) -> bytes:
    return base64.b64decode(state.policy.data_url(data, field=field).partition(",")[2])


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def a1111_upscalers(state: ServerState) -> list[dict[str, Any]]:
    """A1111's /upscalers list: built-ins (no model, A1111's scale 4), then model files with
    the scale read from their weights (None for a file that cannot be used here)."""
    upscalers = state.engine.upscalers
    entries: list[dict[str, Any]] = [
        {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
        for name in upscalers.names()
        if name not in upscalers.model_files()
    ]
    for name, path in sorted(upscalers.model_files().items()):
        try:
            scale: int | None = upscalers.info(name).scale
        except (InvalidRequest, UnsupportedFeature):  # a pickle not allowed, no spandrel
            scale = None
        entries.append(
            {"name": name, "model_name": name, "model_path": path.name, "model_url": None, "scale": scale}
        )
    return entries


def realesrgan_models(state: ServerState) -> list[dict[str, Any]]:
    """The model upscalers whose architecture is ESRGAN or RealESRGAN (compact)."""
    from easel.upscalers import REALESRGAN_ARCHITECTURES

    upscalers = state.engine.upscalers
    found = []
    for name, path in sorted(upscalers.model_files().items()):
        try:
            info = upscalers.info(name)
        except (InvalidRequest, UnsupportedFeature):  # a pickle not allowed, no spandrel
            continue
        if info.architecture in REALESRGAN_ARCHITECTURES:
            found.append({"name": name, "path": path.name, "scale": info.scale})
    return found


def add_a1111_routes(router: APIRouter) -> None:
    """A1111's upscaler and extras routes, on the /sdapi/v1 router."""

    @router.get("/upscalers", **documented(A1111, list[api.A1111Upscaler]))
    async def upscalers(state: State) -> list[dict[str, Any]]:
        return await asyncio.to_thread(a1111_upscalers, state)

    @router.get("/realesrgan-models", **documented(A1111, list[api.A1111RealesrganModel]))
    async def realesrgan(state: State) -> list[dict[str, Any]]:
        return await asyncio.to_thread(realesrgan_models, state)

    @router.post("/extra-single-image", **documented(A1111, api.A1111ExtrasSingle, *api.BODY))
    async def extra_single_image(body: ExtrasSingleImageRequest, state: State) -> dict[str, Any]:
        check_extras(body)
        data = _decode(state, body.image, field="image")
        png, infotext = await asyncio.to_thread(run_extras, state, body, data, field="image")
        return {"html_info": html_info(infotext), "image": _b64(png)}

    @router.post("/extra-batch-images", **documented(A1111, api.A1111ExtrasBatch, *api.BODY))
    async def extra_batch_images(body: ExtrasBatchImagesRequest, state: State) -> dict[str, Any]:
        check_extras(body)
        if len(body.imageList) > state.settings.max_images:
            raise InvalidRequest(
                f"invalid imageList: {len(body.imageList)} images, more than this server's limit of "
                f"{state.settings.max_images} per request",
                field="imageList",
            )
        sources = [
            _decode(state, item.data, field=f"imageList[{i}].data") for i, item in enumerate(body.imageList)
        ]

        def run_all() -> tuple[list[str], str]:
            done = [
                run_extras(state, body, data, field=f"imageList[{i}].data") for i, data in enumerate(sources)
            ]
            return [_b64(png) for png, _ in done], done[-1][1] if done else ""

        images, infotext = await asyncio.to_thread(run_all)
        return {"html_info": html_info(infotext), "images": images}


def add_native_routes(router: APIRouter) -> None:
    """GET /api/v1/upscalers and POST /api/v1/upscale."""

    @router.get("/api/v1/upscalers", tags=["native"], **documented(NATIVE, list[str]))
    async def upscaler_names(state: State) -> list[str]:
        """The names `upscaler` takes: None, Lanczos, Nearest, then the model files."""
        return await asyncio.to_thread(state.engine.upscalers.names)

    @router.post("/api/v1/upscale", tags=["native"], **documented(NATIVE, api.Upscaled, *api.BODY))
    async def upscale(body: UpscaleRequest, state: State) -> dict[str, Any]:
        """A picture upscaled now (not queued): the PNG keeps its text and adds A1111's
        postprocessing text."""
        data = _decode(state, body.image, field="image")

        def run() -> tuple[bytes, int, int, str]:
            from easel.limits import Limits
            from easel.postprocess import postprocessing_info, read_source, upscaled_png

            image, text = read_source(data, field="image")
            result = state.engine.upscale(
                image, scale=body.scale, width=body.width, height=body.height, upscaler=body.upscaler,
                limits=Limits(max_pixels=state.settings.max_pixels),
            )  # fmt: skip
            size = {"Postprocess upscale by": body.scale} if body.scale is not None else {
                "Postprocess upscale to": f"{result.width}x{result.height}"}  # fmt: skip
            info = postprocessing_info({**size, "Postprocess upscaler": body.upscaler})
            return upscaled_png(result, text, info), result.width, result.height, info

        png, width, height, info = await asyncio.to_thread(run)
        return {"image": "data:image/png;base64," + _b64(png), "width": width, "height": height,
                "postprocessing": info}  # fmt: skip

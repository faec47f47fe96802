"""OpenAI-compatible Images API, enough for the official `openai` client unchanged.

    POST /v1/images/generations   JSON: prompt, n, size "WxH" | "auto", response_format
    POST /v1/images/edits         multipart: image (or image[]), prompt, n, size, ...; with a
                                  mask (fully transparent pixels = edit there) it is inpainting,
                                  without one image-to-image

Fields OpenAI's API does not have but easel does are honoured when sent (the client's
extra_body puts them at the top level): seed, negative_prompt, steps, guidance_scale,
scheduler, strength (edits), prompt_syntax (default "plain": OpenAI prompts are natural
language, so "+", "-" and parentheses are text, not weights). `model` names an easel model;
OpenAI's own model names (dall-e-*, gpt-image-*, chatgpt-image-*) mean the server's current
model. Responses are {"created", "data": [{"b64_json"}]} (or "url", pointing at the native
image route).

Nothing is accepted and ignored: OpenAI's fields that cannot change an image (user,
safety_identifier, moderation: easel has no moderation) are accepted; the ones easel does not
build (NOT_BUILT: quality, style, background, output_format, ...) are accepted only at
a value that leaves the image as easel makes it, and refused (422 naming the field) otherwise;
fields neither OpenAI's API nor easel has are refused by name.

`stream: true` answers text/event-stream as OpenAI does: up to `partial_images` (0..3)
`image_generation.partial_image` events (edits: `image_edit.partial_image`), which are the
server's live previews of the first image (easel serve --preview-every; the ones nearest to
evenly spaced, so fewer when the run has fewer previews, as OpenAI allows), then one
`...completed` event per image.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from easel.errors import InvalidRequest
from easel.request import MAX_SEED, GenerationRequest
from easel.server import openapi as api
from easel.server.jobs import Job
from easel.server.native import gallery_entry, submit
from easel.server.openapi import OPENAI, documented
from easel.server.state import ServerState, state_of

State = Annotated[ServerState, Depends(state_of)]
OPENAI_MODELS = ("dall-e-", "gpt-image-", "chatgpt-image-")
OUR_FIELDS = {"guidance_scale", "negative_prompt", "seed", "steps", "scheduler", "strength", "prompt_syntax"}
# our fields -> the OpenAI fields behind them (reference_images[i] too: see _their_field)
THEIR_FIELD = {
    "num_images": "n",
    "width": "size",
    "height": "size",
    "init_image": "image",
    "reference_images": "image",
}
SIZE_PATTERN = r"^(auto|[0-9]+[xX][0-9]+)$"  # what _size reads (GenerationRequest checks the numbers)
RESPONSE_FORMATS = ("b64_json", "url")
# OpenAI's fields that cannot change an image here (easel has no moderation): accepted
HARMLESS = ("user", "safety_identifier", "moderation")
# OpenAI's fields easel does not build: the values that leave the image as easel makes it
# (None: not sent), and why any other is refused
NOT_BUILT: dict[str, tuple[tuple[Any, ...], str]] = {
    "quality": ((None, "auto", "standard"), "easel has no quality levels; steps set the effort"),
    "style": ((None,), "easel has no style presets; describe the style in the prompt"),
    "background": ((None, "auto", "opaque"), "easel makes opaque images only"),
    "output_format": ((None, "png"), "easel returns PNG images only"),
    "output_compression": ((None, 100), "easel returns lossless PNG images only (100)"),
    "complexity": ((None,), "easel has no planning effort setting; steps set the effort"),
    "frame_count": ((None,), "easel makes no GIFs"),
    "frame_duration_ms": ((None,), "easel makes no GIFs"),
    "svg": ((None,), "easel makes no SVGs"),
    "input_fidelity": ((None, "low"), "easel has no input fidelity setting; strength sets how far an "
                       "edit may move from the image"),
    "markup": ((None,), "easel does not read markup images; send a mask"),
}  # fmt: skip
EDIT_ONLY = {"input_fidelity", "markup"}
STREAM_FIELDS = ("stream", "partial_images")
MAX_PARTIAL_IMAGES = 3  # OpenAI's limit
GENERATION_ONLY = {"style", "moderation"}


def _same(value: Any, accepted: Any) -> bool:
    return (
        value is accepted
        if accepted is None or isinstance(accepted, bool)
        else (type(value) is type(accepted) and value == accepted)
    )


def _not_built(name: str, value: Any) -> InvalidRequest:
    accepted, why = NOT_BUILT[name]
    shown = ", ".join(repr(ok) for ok in accepted if ok is not None) or "leave it out"
    return InvalidRequest(f"invalid {name}={value!r}: {why} (accepted: {shown})", field=name, value=value)


def _unknown(name: str, value: Any, route: str) -> InvalidRequest:
    return InvalidRequest(
        f"unknown field {name!r}: neither OpenAI's Images API ({route}) nor easel's extras have it, and "
        "easel refuses what it would otherwise ignore",
        field=name,
        value=value,
    )


class GenerationsRequest(BaseModel):
    """OpenAI's fields plus easel's extras; fields neither has are refused by name (check_fields)."""

    # strict: JSON types as documented (guidance_scale=false is refused, not taken as 0);
    # extra="allow" so that unknown fields can be refused by name
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"additionalProperties": False})

    prompt: str
    n: int = Field(1, ge=1, le=64)
    size: str | None = Field(None, json_schema_extra={"pattern": SIZE_PATTERN}, description="WxH or auto")
    response_format: str = Field("b64_json", json_schema_extra={"enum": list(RESPONSE_FORMATS)})
    model: str | None = None
    seed: int | None = Field(None, ge=-1, le=MAX_SEED)
    negative_prompt: str = ""
    steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0, le=100)
    scheduler: str | None = None
    # OpenAI prompts are natural language: no weighting syntax
    prompt_syntax: Literal["compel", "a1111", "plain"] = "plain"
    # OpenAI's, accepted (HARMLESS) or accepted at the values that change nothing (NOT_BUILT)
    user: str | None = None
    safety_identifier: str | None = None
    moderation: Literal["low", "auto"] | None = None
    quality: str | None = None
    style: str | None = None
    background: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    stream: bool | None = None
    partial_images: int | None = Field(None, json_schema_extra={"minimum": 0, "maximum": MAX_PARTIAL_IMAGES})
    complexity: str | None = None
    frame_count: int | None = None
    frame_duration_ms: int | None = None
    svg: dict[str, Any] | None = None

    def check_fields(self) -> None:
        """Refuse (422 naming the field) what easel would otherwise accept and ignore."""
        for name, value in (self.model_extra or {}).items():
            raise _unknown(name, value, "/v1/images/generations")
        for name, (accepted, _) in NOT_BUILT.items():
            value = getattr(self, name, None)
            if name not in EDIT_ONLY and not any(_same(value, ok) for ok in accepted):
                raise _not_built(name, value)


def _size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size == "auto":
        return None, None
    if not re.fullmatch(SIZE_PATTERN, size):
        raise InvalidRequest(f"invalid size={size!r}: use WIDTHxHEIGHT, e.g. 512x512, or auto", field="size")
    width, _, height = size.lower().partition("x")
    return int(width), int(height)


def _request(state: ServerState, fields: dict[str, Any]) -> GenerationRequest:
    """OpenAI fields -> GenerationRequest; errors name the OpenAI field where one differs."""
    model = fields.pop("model", None)
    fields["model"] = (
        state.current_model
        if model is None or model.startswith(OPENAI_MODELS)
        else state.policy.model_reference(model, field="model")
    )
    fields["width"], fields["height"] = _size(fields.pop("size", None))
    fields["num_images"] = fields.pop("n", 1)
    try:
        return state.policy.check(GenerationRequest.from_fields(fields))
    except InvalidRequest as error:
        theirs = _their_field(error.field)
        if theirs is None:
            raise
        raise InvalidRequest(str(error), field=theirs, value=error.value) from None


async def _respond(state: ServerState, request: Request, job: Job, response_format: str) -> dict[str, Any]:
    job = await state.queue.wait(job)
    error = job.exception()
    theirs = _their_field(getattr(error, "field", None))
    if isinstance(error, InvalidRequest) and theirs is not None:  # name the field the client sent
        raise InvalidRequest(str(error), field=theirs, value=error.value)
    if error is not None:
        raise error
    data = []
    for image in job.images:
        if response_format == "url":
            data.append({"url": str(request.base_url).rstrip("/") + f"/api/v1/images/{image['id']}"})
        else:
            png = gallery_entry(state, image["id"]).path.read_bytes()
            data.append({"b64_json": base64.b64encode(png).decode("ascii")})
    summary = job.summary or {}
    size = f"{summary.get('request', {}).get('width')}x{summary.get('request', {}).get('height')}"
    return {"created": int(time.time()), "data": data, "output_format": "png", "size": size}


def _their_field(field: str | None) -> str | None:
    """The OpenAI field behind one of ours (reference_images[1] -> image), None where the same."""
    return THEIR_FIELD.get((field or "").split("[", 1)[0])


def _edit_family(state: ServerState, model: str | None) -> Any:
    """The family of the model an edits call names, when it edits with reference images (FLUX.1
    Kontext): then an edit without a mask is instruction editing, as OpenAI's own models read it.
    None otherwise, or when the model cannot be found (the job reports that, naming model)."""
    from easel.errors import EaselError
    from easel.models.cache import detect_family

    try:
        reference = (
            state.current_model
            if model is None or model.startswith(OPENAI_MODELS)
            else state.policy.model_reference(model, field="model")
        )
        family = detect_family(state.engine.resolve_model(reference))
    except EaselError:
        return None
    return family if "edit" in family.tasks else None


def _response_format(value: str | None) -> str:
    value = "b64_json" if value is None else value
    if value not in RESPONSE_FORMATS:
        raise InvalidRequest(
            f"invalid response_format={value!r}: use b64_json or url", field="response_format", value=value
        )
    return value


FORM_NUMBERS = {"n": int, "seed": int, "steps": int, "guidance_scale": float, "strength": float}
NUMBER_TEXT = {int: re.compile(r"[+-]?[0-9]+"),
               float: re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")}  # fmt: skip


def _form_value(name: str, text: str) -> Any:
    """A multipart text field as the type its JSON field has (numbers as JSON writes them)."""
    kind = FORM_NUMBERS.get(name)
    if kind is None:
        return text
    if not NUMBER_TEXT[kind].fullmatch(text):
        expected = "an integer" if kind is int else "a number"
        raise InvalidRequest(f"invalid {name}={text!r}: must be {expected}", field=name, value=text)
    return kind(text)


EDITS_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "The picture to change; without a mask on an edit-capable model "
                            "(FLUX.1 Kontext) it is the reference image of an instruction edit",
                        },
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG with alpha: its fully transparent pixels are edited",
                        },
                        "prompt": {"type": "string"},
                        "n": {"type": "integer", "minimum": 1, "maximum": 64},
                        "size": {"type": "string", "pattern": SIZE_PATTERN},
                        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)},
                        "model": {"type": "string"},
                        **{name: {"type": "string"} for name in sorted(OUR_FIELDS)},
                        "seed": {"type": "integer", "minimum": -1, "maximum": MAX_SEED},
                        "steps": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "guidance_scale": {"type": "number", "minimum": 0, "maximum": 100},
                        "strength": {"type": "number", "minimum": 0, "maximum": 1},
                        "prompt_syntax": {"type": "string", "enum": ["compel", "a1111", "plain"]},
                        "stream": {"type": "boolean"},
                        "partial_images": {"type": "integer", "minimum": 0, "maximum": MAX_PARTIAL_IMAGES},
                    },
                }
            }
        },
    }
}


EDIT_FIELDS = {"image", "image[]", "mask", "prompt", "n", "size", "response_format", "model",
               *OUR_FIELDS, *STREAM_FIELDS}  # fmt: skip


def _check_form(form: Any) -> None:
    """The edits form's fields as GenerationsRequest.check_fields checks JSON: unknown ones and
    NOT_BUILT ones at a value that would change the image are refused by name ("" = not sent)."""
    from starlette.datastructures import UploadFile

    for key, value in form.multi_items():
        name = "svg" if key.startswith("svg[") else key  # the client sends svg={...} as svg[model]...
        if name in NOT_BUILT and name not in GENERATION_ONLY:
            if isinstance(value, UploadFile):
                raise _not_built(name, f"<file {value.filename}>")
            accepted = NOT_BUILT[name][0]
            if value != "" and not any(str(ok).lower() == value.lower() for ok in accepted if ok is not None):
                raise _not_built(name, value)
        elif name not in EDIT_FIELDS and (name not in HARMLESS or name in GENERATION_ONLY):
            raise _unknown(key, value if isinstance(value, str) else "<file>", "/v1/images/edits")


def _transparent_mask(state: ServerState, data: bytes) -> str:
    """An OpenAI mask: a PNG whose fully transparent pixels mark where to edit. easel reads a
    mask with transparency by its alpha (opaque = repaint), so the door sends it with
    invert_mask; a mask with no transparent pixel would edit nothing and is refused."""
    from easel.storage.images import opened_image

    checked = state.policy.data_url(data, field="mask")
    with opened_image(data, field="mask") as image:
        alpha = image.getchannel("A") if "A" in image.getbands() else None
        if alpha is None or alpha.getextrema()[0] > 0:
            raise InvalidRequest(
                "invalid mask: it has no fully transparent pixels; as in OpenAI's API, the transparent "
                "part of the mask (a PNG with an alpha channel) is where the image is edited",
                field="mask",
            )
    return checked


def _streaming(stream: bool | None, partial_images: int | None, response_format: str) -> int | None:
    """How many partial images a streamed answer sends (None: not streamed); refused, naming
    the field, outside OpenAI's 0..3, without stream, or with response_format url."""
    if partial_images is not None and not 0 <= partial_images <= MAX_PARTIAL_IMAGES:
        raise InvalidRequest(
            f"invalid partial_images={partial_images!r}: use 0 to {MAX_PARTIAL_IMAGES}, as OpenAI's API",
            field="partial_images",
            value=partial_images,
        )
    if not stream:
        if partial_images:
            raise InvalidRequest(
                f"invalid partial_images={partial_images!r}: partial images are sent only in a stream; "
                "add stream: true (or leave partial_images out)",
                field="partial_images",
                value=partial_images,
            )
        return None
    if response_format != "b64_json":
        raise InvalidRequest(
            f"invalid response_format={response_format!r}: a stream sends its images as b64_json",
            field="response_format",
            value=response_format,
        )
    return partial_images or 0


def _form_flag(name: str, text: str | None) -> bool | None:
    if text is None or text == "":
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise InvalidRequest(f"invalid {name}={text!r}: must be true or false", field=name, value=text)


def _form_partials(text: dict[str, str]) -> int | None:
    value = text.get("partial_images")
    if value is None or value == "":
        return None
    if not NUMBER_TEXT[int].fullmatch(value):
        raise InvalidRequest(
            f"invalid partial_images={value!r}: must be an integer", field="partial_images", value=value
        )
    return int(value)


def _stream(state: ServerState, job: Job, partials: int, kind: str) -> Any:
    """OpenAI's image stream for `job`: `{kind}.partial_image` events from its live previews,
    then `{kind}.completed` per image (or an `error` event), as text/event-stream."""
    import asyncio
    import json

    from fastapi.responses import StreamingResponse

    request = job.request
    wanted = f"{request.width}x{request.height}" if request.width and request.height else "auto"
    common = {"background": "opaque", "quality": "auto", "output_format": "png"}

    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

    async def events() -> Any:
        sent, seen = 0, 0
        while True:
            finished = job.finished
            step = job.preview_step  # read before the image, which is written first
            preview = job.preview
            total = job.total
            if sent < partials and preview is not None and step != seen and total:
                seen = step
                if step >= total * (sent + 1) / (partials + 1):  # nearest to evenly spaced
                    picture = await asyncio.to_thread(_partial_png, preview, request.width, request.height)
                    yield event(f"{kind}.partial_image", {
                        "b64_json": base64.b64encode(picture).decode("ascii"), "partial_image_index": sent,
                        "created_at": int(time.time()), "size": wanted, **common,
                    })  # fmt: skip
                    sent += 1
            if finished:
                break
            await asyncio.sleep(0.02)
        error = job.exception()
        if error is not None:
            from easel.server.errors import RENDERERS, describe, public_message

            problem = describe(error)
            body = RENDERERS["openai"](problem)
            body["error"]["message"] = public_message(problem.message)
            field = body["error"].get("param")
            body["error"]["param"] = THEIR_FIELD.get(field or "", field)
            yield f"event: error\ndata: {json.dumps({'type': 'error', **body})}\n\n"
            return
        summary = job.summary or {}
        size = f"{summary.get('request', {}).get('width')}x{summary.get('request', {}).get('height')}"
        usage = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
                 "output_tokens": 0, "total_tokens": 0}  # fmt: skip
        for image in job.images:
            png = await asyncio.to_thread(gallery_entry(state, image["id"]).path.read_bytes)
            yield event(f"{kind}.completed", {
                "b64_json": base64.b64encode(png).decode("ascii"), "created_at": int(time.time()),
                "size": size, "usage": usage, **common,
            })  # fmt: skip

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _streamed(route: dict[str, Any]) -> dict[str, Any]:
    """Route arguments whose 200 also documents the text/event-stream answer of stream: true."""
    event = {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "description": "<kind>.partial_image, <kind>.completed or error"},
            "b64_json": {"type": "string"},
            "partial_image_index": {"type": "integer"},
        },
    }
    route["responses"][200]["content"] = {"text/event-stream": {"itemSchema": event}}
    return route


def _partial_png(preview: bytes, width: int | None, height: int | None) -> bytes:
    """A preview (PNG, at latent resolution for linear previews) at the requested size."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(preview)) as image:
        if width is None or height is None or image.size == (width, height):
            return preview
        buffer = io.BytesIO()
        image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR).save(buffer, format="PNG")
        return buffer.getvalue()


def build_router() -> APIRouter:
    """The routes of this API, built per app (create_app), so no router is shared module state."""
    router = APIRouter(prefix="/v1/images", tags=["OpenAI"])

    @router.post("/generations", **_streamed(documented(OPENAI, api.OpenAIImages, *api.GENERATION)))
    async def generations(body: GenerationsRequest, request: Request, state: State) -> Any:
        body.check_fields()
        response_format = _response_format(body.response_format)
        partials = _streaming(body.stream, body.partial_images, response_format)
        fields = body.model_dump(exclude={"response_format", *HARMLESS, *NOT_BUILT, *STREAM_FIELDS})
        generation = _request(state, fields)
        job = await submit(state, generation, "openai")
        if partials is not None:
            return _stream(state, job, partials, "image_generation")
        return await _respond(state, request, job, response_format)

    @router.post(
        "/edits",
        openapi_extra=EDITS_SCHEMA,
        **_streamed(documented(OPENAI, api.OpenAIImages, *api.GENERATION)),
    )
    async def edits(request: Request, state: State) -> Any:
        """Image-to-image from an uploaded image (multipart, as the openai client sends it); on an
        edit-capable model (FLUX.1 Kontext) without a mask, instruction editing with the image(s)
        as reference_images, up to what the model takes."""
        from starlette.datastructures import UploadFile

        limit = state.settings.max_upload_bytes
        try:
            form = await request.form(max_files=4, max_fields=64, max_part_size=limit)
        except Exception as error:  # malformed multipart, or a part over the limit
            if isinstance(error, InvalidRequest):
                raise
            raise InvalidRequest(
                f"invalid body: not a readable multipart form ({error})", field="body"
            ) from None
        try:
            uploads = [
                v for key in ("image", "image[]") for v in form.getlist(key) if isinstance(v, UploadFile)
            ]
            if not uploads:
                raise InvalidRequest("image is required (a multipart file field)", field="image")
            _check_form(form)
            mask = form.get("mask")
            text = {key: value for key, value in form.items() if isinstance(value, str)}
            editing = None if mask is not None else _edit_family(state, text.get("model"))
            most = 1 if editing is None else editing.max_reference_images
            if len(uploads) > most:
                why = (
                    "easel edits one image (send one)"
                    if editing is None
                    else f"{editing.title} takes {most} reference image(s) (send at most {most})"
                )
                raise InvalidRequest(f"invalid image: {len(uploads)} images sent; {why}", field="image")
            if mask is not None and not isinstance(mask, UploadFile):
                raise InvalidRequest("invalid mask: send a PNG file (a multipart file field)", field="mask")
            mask_data = None if mask is None else await mask.read(limit + 1)
            images = [await upload.read(limit + 1) for upload in uploads]
        finally:
            await form.close()
        fields: dict[str, Any] = {"prompt": text.get("prompt"), "prompt_syntax": "plain"}
        if fields["prompt"] is None:
            raise InvalidRequest("prompt is required", field="prompt")
        for name in ("size", "model"):
            if name in text:
                fields[name] = text[name]
        for name in ("n", *sorted(OUR_FIELDS)):
            if name in text and (text[name] != "" or name in FORM_NUMBERS):  # "": a blank text field
                fields[name] = _form_value(name, text[name])
        if editing is not None:  # instruction editing: the image(s) are what the prompt changes
            fields["reference_images"] = [state.policy.data_url(data, field="image") for data in images]
        else:
            fields["init_image"] = state.policy.data_url(images[0], field="image")
        if mask_data is not None:
            fields.update(mask_image=_transparent_mask(state, mask_data), invert_mask=True)
        response_format = _response_format(text.get("response_format"))
        partials = _streaming(_form_flag("stream", text.get("stream")), _form_partials(text), response_format)
        generation = _request(state, fields)
        job = await submit(state, generation, "openai")
        if partials is not None:
            return _stream(state, job, partials, "image_edit")
        return await _respond(state, request, job, response_format)

    return router

"""What the OpenAPI document says about responses: the error bodies and the success bodies.

Routers declare each route with `documented(flavour, body, *statuses)`, which lists the
statuses the route can really return, each with the body shape its flavour renders (see
errors.py), and replaces FastAPI's default 422 (HTTPValidationError, a `detail` array) that
no easel route ever sends. 401 (only when the server has an API key) and 500 (a failed
generation, or a bug: the body says nothing internal) are listed on every route but the open
/health. The success models below only document: routes keep returning plain dicts
(`response_model=None`), and the fuzz test (tests/test_openapi_fuzz.py) checks that the
responses match what is written here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from fastapi import FastAPI

    from easel.config import Settings

NATIVE, A1111, OPENAI = "native", "a1111", "openai"
ID_PATTERN = r"^[0-9a-f]{32}$"  # job ids (uuid4().hex) and gallery image ids alike


# -- error bodies (errors.py renders them) ------------------------------------------------------


class NativeErrorDetail(BaseModel):
    type: str = Field(description="InvalidRequest, ModelNotFound, UnsupportedFeature, GenerationFailed, ...")
    message: str
    field: str | None = Field(description="The request field at fault, when there is one")


class NativeError(BaseModel):
    """The native API's error body."""

    error: NativeErrorDetail


class A1111Error(BaseModel):
    """AUTOMATIC1111's error body: `detail` and `errors` are the message (strings, not arrays)."""

    error: str = Field(description="The kind of error (InvalidRequest, ...)")
    detail: str
    body: str
    errors: str
    field: str | None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, ...")
    param: str | None
    code: str | None = Field(description="easel's name for the error (InvalidRequest, ...)")


class OpenAIError(BaseModel):
    """The OpenAI API's error body."""

    error: OpenAIErrorDetail


ERROR_BODIES: dict[str, type[BaseModel]] = {NATIVE: NativeError, A1111: A1111Error, OPENAI: OpenAIError}

ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "The body could not be read (e.g. not UTF-8)"},
    401: {
        "description": "Missing or wrong API key (only when the server has one)",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    404: {"description": "No such job, image or model"},
    409: {"description": "The job was cancelled (or interrupted), or is already finished"},
    413: {"description": "The body or an uploaded image is larger than the server accepts"},
    422: {"description": "Invalid request: the message and `field` name the value at fault"},
    429: {
        "description": "The queue is full: retry after Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    },
    500: {"description": "The generation failed, or an unexpected error (the body says nothing internal)"},
}


BODY = (400, 413, 422)  # routes that read a body
GENERATION = (*BODY, 404, 409, 429)  # routes that wait for a generation: + model, cancelled, queue full


def documented(
    flavour: str,
    body: Any = None,
    *statuses: int,
    status: int = 200,
    media_type: str | None = None,
    public: bool = False,
    links: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Route decorator arguments: the success response (`body`, a model or type, or a JSON
    schema dict; under `media_type` when not JSON) and the error `statuses`, plus 401 and 500
    unless the route is `public`; `links` are OpenAPI links from the success response."""
    responses: dict[int | str, dict[str, Any]] = {}
    if media_type == "text/event-stream":  # `body` describes one event (OpenAPI 3.2 itemSchema)
        responses[status] = {"content": {media_type: {"itemSchema": body}}}
    elif media_type is not None:
        responses[status] = {"content": {media_type: {"schema": body}}}
    elif isinstance(body, dict):
        responses[status] = {"content": {"application/json": {"schema": body}}}
    elif body is not None:
        responses[status] = {"model": body}
    if links:  # what a client (or a stateful fuzzer) can do next with the ids in the body
        responses[status]["links"] = links
    for code in sorted({*statuses, *(() if public else (401, 500))}):
        responses[code] = {"model": ERROR_BODIES[flavour], **ERRORS[code]}
    return {"status_code": status, "response_model": None, "responses": responses}


LIMITED_BODIES = ("GenerationRequest", "Txt2ImgRequest", "Img2ImgRequest", "GenerationsRequest")


def with_limits(app: FastAPI, settings: Settings) -> None:
    """Make the app's document state this server's limits (max_steps, max_images, and for
    max_pixels the largest side it allows) on the fields they bound."""
    from easel.request import MAX_SIDE

    build = app.openapi
    side = min(MAX_SIDE, settings.max_pixels // 8 // 8 * 8)  # the other side is at least 8
    bounds = {"steps": settings.max_steps, "prior_steps": settings.max_steps, "width": side, "height": side,
              **dict.fromkeys(("num_images", "n", "batch_size", "n_iter"), settings.max_images)}  # fmt: skip

    def lower(node: Any, bound: int) -> None:
        if isinstance(node, dict):
            if "maximum" in node:
                node["maximum"] = min(node["maximum"], bound)
            for branch in node.get("anyOf", ()):
                lower(branch, bound)

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # FastAPI's, cached on the app: changed once, here
            components = schema.get("components", {}).get("schemas", {})
            bodies = [components[name] for name in LIMITED_BODIES if name in components]
            bodies += [  # multipart forms are written inline (OpenAI's edits)
                media["schema"] for path in schema.get("paths", {}).values() for operation in path.values()
                for kind, media in operation.get("requestBody", {}).get("content", {}).items()
                if kind == "multipart/form-data" and "schema" in media
            ]  # fmt: skip
            for body in bodies:
                for name, bound in bounds.items():
                    lower(body.get("properties", {}).get(name), bound)
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


NULL = {"type": "null"}  # routes that answer `null` (A1111's setters)
PNG = {"type": "string", "format": "binary"}
Open = ConfigDict(extra="allow")  # records that may gain fields: clients must ignore unknown ones


# -- native -------------------------------------------------------------------------------------


def _link(path: str, method: str, **parameters: str) -> dict[str, Any]:
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {"operationRef": f"#/paths/{pointer}/{method}", "parameters": parameters}


JOB_LINKS = {
    "GetJob": _link("/api/v1/jobs/{job_id}", "get", job_id="$response.body#/id"),
    "CancelJob": _link("/api/v1/jobs/{job_id}/cancel", "post", job_id="$response.body#/id"),
    "JobEvents": _link("/api/v1/jobs/{job_id}/events", "get", job_id="$response.body#/id"),
}
IMAGE_LINKS = {
    "GetImage": _link("/api/v1/images/{image_id}", "get", image_id="$response.body#/images/0/id"),
    "GetImageMetadata": _link(
        "/api/v1/images/{image_id}/metadata", "get", image_id="$response.body#/images/0/id"
    ),
    "DeleteImage": _link("/api/v1/images/{image_id}", "delete", image_id="$response.body#/images/0/id"),
}


def _event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    json_text = {"type": "string", "contentMediaType": "application/json", "contentSchema": data}
    return {"properties": {"event": {"const": name}, "data": json_text}}


PROGRESS_EVENT = {
    "type": "object",
    "required": ["status", "step", "total", "position"],
    "properties": {
        "status": {"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "step": {"type": "integer"},
        "total": {"type": "integer"},
        "position": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}],
                     "description": "1: runs next; null once running"},
        "preview": {"type": "string", "description": "data:image/png;base64 preview of the first image, "
                    "only when a new one was made since the last event (easel serve --preview-every)"},
        "preview_step": {"type": "integer", "description": "the step the preview shows"},
    },
}  # fmt: skip
# GET /api/v1/jobs/{id}/events: `progress` events on every change, then one `end` with the job
JOB_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "oneOf": [_event("progress", PROGRESS_EVENT), _event("end", {"$ref": "#/components/schemas/JobRecord"})],
}


class Health(BaseModel):
    status: Literal["ok"]


class JobProgress(BaseModel):
    step: int
    total: int


class JobImage(BaseModel):
    model_config = Open

    id: str = Field(pattern=ID_PATTERN)
    seed: int
    nsfw: bool
    parameters: str = Field(description="The A1111 parameters text embedded in the PNG")
    url: str
    b64_png: str | None = Field(None, description="The PNG as base64 (/api/v1/generate?include_images=true)")


class JobRecord(BaseModel):
    """A job: its request, state, progress, and once finished its images or its error."""

    model_config = Open

    id: str = Field(pattern=ID_PATTERN)
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    source: Literal["native", "a1111", "openai"]
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: JobProgress
    request: dict[str, Any] = Field(description="The GenerationRequest (an uploaded image summarised)")
    error: NativeErrorDetail | None
    images: list[JobImage]
    result: dict[str, Any] | None = Field(description="model, sampler, seeds, timings, warnings ...")


class ImageMetadata(BaseModel):
    id: str = Field(pattern=ID_PATTERN)
    parameters: str | None
    parsed: dict[str, Any] | None
    easel: dict[str, Any]


class ModelEntry(BaseModel):
    title: str
    name: str
    pipeline: str | None
    default: bool = Field(
        False, description="The server's current model (A1111's sd_model_checkpoint; else the bundled one)"
    )


class LoraEntry(BaseModel):
    """A LoRA in the server's LoRA folder (EASEL_LORA_DIR): send its `name` in `loras`."""

    name: str
    family: str | None = Field(description="sd15 | sdxl | sd2, from the file's layer widths; null: unknown")
    hash: str = Field(description="A1111's short hash (12 hex), as in `Lora hashes`")
    sha256: str


class EmbeddingEntry(BaseModel):
    """A textual-inversion embedding in the server's embeddings folder (EASEL_EMBEDDINGS_DIR):
    write its `name` as a word in a prompt or negative prompt to use it."""

    name: str
    vectors: int = Field(description="Tokens it takes in a prompt (one per vector)")
    width: int = Field(description="Text width of its vectors (SDXL: clip_l + clip_g, as A1111's shape)")
    family: str = Field(description="sd15 | sd2 | sdxl, from its vectors")
    sha256: str = Field(description="Of the file; A1111's `TI hashes` write its first 12 hex")


class GalleryItem(BaseModel):
    model_config = Open

    id: str = Field(pattern=ID_PATTERN)
    created_at: str
    kind: Literal["image", "grid"]
    model: str
    prompt: str
    negative_prompt: str
    seed: int | None
    width: int
    height: int
    image_index: int
    parent_id: str | None
    members: list[str]
    nsfw: bool
    request: dict[str, Any]
    url: str


class Deleted(BaseModel):
    deleted: str = Field(pattern=ID_PATTERN)


class FamilyDefaults(BaseModel):
    steps: int | None
    guidance_scale: float | None


class ModelInfo(BaseModel):
    model: str | None
    family: str
    tasks: list[str]
    options: list[str] = Field(description="The family-only request fields this model takes")
    controlnet: bool
    loras: bool = Field(description="Whether this model takes LoRAs")
    defaults: FamilyDefaults


class ControlOptions(BaseModel):
    models: list[str]
    preprocessors: list[str]
    modes: list[str] = Field(description="control types a union ControlNet's `mode` may name (FLUX.1 union)")


class ControlPreview(BaseModel):
    image: str = Field(description="PNG data URL")
    width: int
    height: int


class TokenCount(BaseModel):
    tokens: int
    chunks: int
    capacity: int
    text: str = Field(description='e.g. "83/150, 2 chunks"')


class PngInfo(BaseModel):
    parameters: str | None
    parsed: dict[str, Any] | None
    easel: dict[str, Any] | None
    request: dict[str, Any] = Field(description="The settings as GenerationRequest fields")


class Upscaled(BaseModel):
    image: str = Field(description="PNG data URL (the source's text chunks, plus `postprocessing`)")
    width: int
    height: int
    postprocessing: str = Field(description="A1111's postprocessing info text")


# -- AUTOMATIC1111 ------------------------------------------------------------------------------


class A1111Images(BaseModel):
    images: list[str] = Field(description="PNGs as base64")
    parameters: dict[str, Any]
    info: str = Field(description="JSON text, as A1111 answers")


class A1111Lora(BaseModel):
    name: str
    alias: str
    path: str = Field(description="The file name within the server's LoRA folder (never a server path)")
    metadata: dict[str, Any]


class A1111Embedding(BaseModel):
    step: int | None
    sd_checkpoint: str | None
    sd_checkpoint_name: str | None
    shape: int | None = Field(description="Text width of its vectors (SDXL: clip_l + clip_g)")
    vectors: int | None
    reason: str | None = Field(None, description="easel: why a skipped file cannot be used")


class A1111Embeddings(BaseModel):
    loaded: dict[str, A1111Embedding] = Field(description="Readable embedding files, by name")
    skipped: dict[str, A1111Embedding] = Field(description="Files that cannot be used, with the reason")


class A1111Model(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class A1111Options(BaseModel):
    model_config = Open

    sd_model_checkpoint: str
    sd_checkpoint_hash: str | None
    sd_vae: str
    samples_format: str
    CLIP_stop_at_last_layers: int = Field(description="Clip skip (1: none)")


class A1111Vae(BaseModel):
    model_name: str
    filename: str


class A1111Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class A1111Scheduler(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


class A1111LatentUpscaleMode(BaseModel):
    name: str


class A1111Scripts(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class A1111ProgressState(BaseModel):
    model_config = Open

    skipped: bool
    interrupted: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class A1111Progress(BaseModel):
    progress: float
    eta_relative: float
    state: A1111ProgressState
    current_image: str | None
    textinfo: str | None
    current_task: str | None


class A1111PngInfo(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class A1111OptionsStored(BaseModel):
    """POST /options: every key was stored; `applied` ones change what easel does."""

    applied: list[str] = Field(description="Keys easel applies (model, VAE, clip skip)")
    not_applied: list[str] = Field(description="Keys only stored: they change nothing in easel")


class A1111CmdFlags(BaseModel):
    """The A1111 command-line flags that describe this server; the rest at A1111's defaults."""

    model_config = Open

    api: bool
    listen: bool
    port: int | None
    nowebui: bool


class PromptStyle(BaseModel):
    """A prompt style (A1111 styles.csv row)."""

    name: str
    prompt: str | None
    negative_prompt: str | None


class A1111Memory(BaseModel):
    ram: dict[str, Any] = Field(description="free, used, total (bytes)")
    cuda: dict[str, Any] = Field(description='system {free, used, total} (bytes), or {"error": why}')


class A1111ScriptInfo(BaseModel):
    name: str
    is_alwayson: bool
    is_img2img: bool
    args: list[Any]


class A1111Upscaler(BaseModel):
    name: str
    model_name: str | None
    model_path: str | None = Field(description="The file name within the server's upscaler folder")
    model_url: str | None
    scale: float | None = Field(description="The model's own factor (None: a file easel cannot use)")


class A1111RealesrganModel(BaseModel):
    name: str
    path: str = Field(description="The file name within the server's upscaler folder")
    scale: int


class A1111ExtrasSingle(BaseModel):
    html_info: str = Field(description="The postprocessing info text as HTML")
    image: str = Field(description="PNG as base64 (the source's text chunks, plus `postprocessing`)")


class A1111ExtrasBatch(BaseModel):
    html_info: str = Field(description="The last image's postprocessing info text as HTML")
    images: list[str] = Field(description="PNGs as base64, in the order sent")


class ControlNetVersion(BaseModel):
    version: int


class ControlNetModules(BaseModel):
    module_list: list[str]


class ControlNetModels(BaseModel):
    model_list: list[str]


# -- OpenAI -------------------------------------------------------------------------------------


class OpenAIImage(BaseModel):
    b64_json: str | None = None
    url: str | None = None


class OpenAIImages(BaseModel):
    created: int
    data: list[OpenAIImage]
    output_format: Literal["png"]
    size: str

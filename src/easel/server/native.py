"""The native API: GenerationRequest JSON in, jobs out.

POST /api/v1/jobs                  submit (202, the job record with its id, at once)
GET  /api/v1/jobs                  recent jobs, newest first
GET  /api/v1/jobs/{id}             status, progress, result or error
GET  /api/v1/jobs/{id}/events      progress as server-sent events, ending with the record
POST /api/v1/jobs/{id}/cancel      cancel a queued or running job
POST /api/v1/generate              submit and wait (for simple scripts)
GET  /api/v1/images/{id}           an image file, metadata embedded (PNG)
GET  /api/v1/images/{id}/metadata  its A1111 parameters and easel recipe as JSON
GET  /api/v1/models                models the server can name
GET  /api/v1/loras                 LoRAs in the server's LoRA folder (names for `loras`)
GET  /api/v1/embeddings            textual-inversion embeddings (names to write in prompts)
GET  /api/v1/gallery               gallery entries (search, model, dates)
DELETE /api/v1/images/{id}         remove an image from the gallery
GET  /api/v1/models/info?model=    a model's family: its tasks, family-only fields, defaults
GET  /api/v1/schedulers            scheduler names the requests accept
GET  /api/v1/control               ControlNet models the server can name, and preprocessors
GET  /api/v1/vaes                  VAE overrides the server can name (AutoencoderKL repos cached)
POST /api/v1/control/preview       a control image after its preprocessor (none, canny)
POST /api/v1/tokens                CLIP tokens and 75-token chunks of a prompt ("83/150, 2 chunks")
POST /api/v1/png-info              the parameters any PNG carries, as request fields too
GET  /api/v1/upscalers             upscaler names (built-ins, then model files; server/upscaling.py)
POST /api/v1/upscale               a picture upscaled now (PNG data URL, its text kept)
GET  /health                       liveness (the one route open without the key)

The last seven serve forms (the web UI): each answers from files or pixels it is sent, never
from a loaded pipeline, so they need not wait in the job queue; model files are only read
(model_index.json, tokenizer files), and model references pass the same door policy as jobs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from easel.errors import InvalidRequest, UnsupportedFeature
from easel.prompts.checks import MAX_PROMPT_CHARS
from easel.request import GenerationRequest
from easel.server import openapi as api
from easel.server.errors import ImageNotFound
from easel.server.jobs import Job, public_request
from easel.server.openapi import NATIVE, documented
from easel.server.state import ServerState, public_embeddings, public_loras, public_models, state_of
from easel.storage.gallery import GalleryEntry

State = Annotated[ServerState, Depends(state_of)]
JobId = Annotated[str, Path(pattern=api.ID_PATTERN, description="32 hex characters")]
ImageId = Annotated[str, Path(pattern=api.ID_PATTERN, description="32 hex characters")]


class TokensRequest(BaseModel):
    """A prompt to count, as the form holds it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    prompt_syntax: str = Field("compel", json_schema_extra={"enum": ["compel", "a1111", "plain"]})


class ImageBody(BaseModel):
    """An uploaded image (base64 or a data URL)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: canny_low=true is refused

    image: str


class ControlPreviewRequest(ImageBody):
    """What a ControlUnit's preprocessor would make of an image (same names and limits)."""

    preprocessor: str = Field("none", json_schema_extra={"enum": ["none", "canny"]},
                              description="detectors load models: no preview")  # fmt: skip
    canny_low: int = Field(100, ge=0, le=255)
    canny_high: int = Field(200, ge=0, le=255)


# A1111 settings-line keys -> GenerationRequest fields (PNG-info of other tools' images)
A1111_FIELDS = {
    "Steps": ("steps", int), "CFG scale": ("guidance_scale", float), "Seed": ("seed", int),
    "Denoising strength": ("strength", float), "Clip skip": ("clip_skip", int),
    "Variation seed": ("variation_seed", int), "Variation seed strength": ("variation_strength", float),
    "Distilled CFG Scale": ("guidance_scale", float),  # Forge's FLUX.1-dev guidance ("CFG scale": real CFG)
}  # fmt: skip


def gallery_entry(state: ServerState, image_id: str) -> GalleryEntry:
    """The gallery entry, or 404 (the gallery says InvalidRequest for ids it does not have)."""
    try:
        return state.gallery.get(image_id)
    except InvalidRequest as error:
        if "no such image" in str(error):
            raise ImageNotFound(f"no image with id {image_id!r}") from None
        raise


async def submit(state: ServerState, request: GenerationRequest, source: str) -> Job:
    """Every door's way in: the policy checks, the prompts (parsed in a worker thread, so a
    long prompt never stalls the event loop; bounded, see easel.prompts.checks), the queue."""
    from starlette.concurrency import run_in_threadpool

    from easel.prompts.checks import check_prompts

    checked = state.policy.check(request)
    await run_in_threadpool(check_prompts, checked)
    return state.queue.submit(checked, source)


def build_router() -> APIRouter:
    """The routes of this API, built per app (create_app), so no router is shared module state."""
    router = APIRouter()

    @router.get("/health", tags=["native"], **documented(NATIVE, api.Health, public=True))
    async def health() -> dict[str, str]:
        """Liveness only: says nothing about the configuration (open without the key)."""
        return {"status": "ok"}

    @router.head("/health", include_in_schema=False)
    async def health_head() -> Response:
        """HEAD /health for load balancers and `curl -I`: 200, no body."""
        return Response(status_code=200)

    @router.post(
        "/api/v1/jobs",
        tags=["native"],
        **documented(NATIVE, api.JobRecord, *api.BODY, 429, status=202, links=api.JOB_LINKS),
    )
    async def create_job(request: GenerationRequest, state: State) -> dict[str, Any]:
        """Queue a generation; returns at once with the job id."""
        return (await submit(state, request, "native")).describe()

    @router.get("/api/v1/jobs", tags=["native"], **documented(NATIVE, list[api.JobRecord], 422))
    async def list_jobs(
        state: State, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> list[dict[str, Any]]:
        return [job.describe() for job in state.queue.recent(limit)]

    @router.get("/api/v1/jobs/{job_id}", tags=["native"], **documented(NATIVE, api.JobRecord, 404, 422))
    async def get_job(job_id: JobId, state: State) -> dict[str, Any]:
        return state.queue.get(job_id).describe()

    @router.post(
        "/api/v1/jobs/{job_id}/cancel", tags=["native"], **documented(NATIVE, api.JobRecord, 404, 409, 422)
    )
    async def cancel_job(job_id: JobId, state: State) -> dict[str, Any]:
        """Queued jobs are cancelled at once; a running job stops at its next denoising step."""
        return state.queue.cancel(job_id).describe()

    @router.get(
        "/api/v1/jobs/{job_id}/events",
        tags=["native"],
        response_class=StreamingResponse,
        **documented(NATIVE, api.JOB_EVENT, 404, 422, media_type="text/event-stream"),
    )
    async def job_events(job_id: JobId, state: State) -> StreamingResponse:
        """Server-sent events: `progress` ({status, step, total, position}: 1 = next to run,
        null once running) on every change, then `end` with the full job record. A progress
        event carries `preview` (a PNG data URL of the first image so far) and `preview_step`
        when a new preview was made since the last event (easel serve --preview-every)."""
        job = state.queue.get(job_id)

        async def events() -> AsyncIterator[str]:
            seen: tuple[int, int | None] | None = None
            sent_preview = 0  # the step of the last preview sent
            while True:
                version, finished = job.version, job.finished
                position = state.queue.position(job)  # changes while jobs ahead finish
                if (version, position) != seen:
                    seen = (version, position)
                    progress = {"status": job.status, "step": job.step, "total": job.total,
                                "position": position}  # fmt: skip
                    preview_step = job.preview_step  # read before the image, which is written first
                    preview = job.preview
                    if preview is not None and preview_step != sent_preview:
                        sent_preview = preview_step
                        progress["preview"] = "data:image/png;base64," + base64.b64encode(preview).decode()
                        progress["preview_step"] = preview_step
                    yield f"event: progress\ndata: {json.dumps(progress)}\n\n"
                if finished:
                    yield f"event: end\ndata: {json.dumps(job.describe(), ensure_ascii=False)}\n\n"
                    return
                await asyncio.sleep(0.05)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @router.post(
        "/api/v1/generate",
        tags=["native"],
        **documented(NATIVE, api.JobRecord, *api.GENERATION, links=api.IMAGE_LINKS),
    )
    async def generate(
        request: GenerationRequest,
        state: State,
        include_images: Annotated[bool, Query(description="Add each PNG as base64 (b64_png)")] = False,
    ) -> dict[str, Any]:
        """Submit and wait for the result; errors come back as they would from the job."""
        job = await state.queue.wait(await submit(state, request, "native"))
        error = job.exception()
        if error is not None:
            raise error
        record = job.describe()
        if include_images:
            for image in record["images"]:
                data = gallery_entry(state, image["id"]).path.read_bytes()
                image["b64_png"] = base64.b64encode(data).decode("ascii")
        return record

    @router.get(
        "/api/v1/images/{image_id}",
        tags=["native"],
        response_class=FileResponse,
        **documented(NATIVE, api.PNG, 404, 422, media_type="image/png"),
    )
    async def get_image(image_id: ImageId, state: State) -> FileResponse:
        """The image file as the gallery keeps it: PNG with the A1111 parameters and easel recipe."""
        entry = gallery_entry(state, image_id)
        return FileResponse(entry.path, media_type="image/png", filename=f"{entry.id}.png")

    @router.get(
        "/api/v1/images/{image_id}/metadata",
        tags=["native"],
        **documented(NATIVE, api.ImageMetadata, 404, 422),
    )
    async def get_image_metadata(image_id: ImageId, state: State) -> dict[str, Any]:
        from easel.storage.metadata import read_metadata

        entry = gallery_entry(state, image_id)
        metadata = read_metadata(entry.path)
        document = dict(metadata.document or {})
        if "request" in document:
            document["request"] = public_request(document["request"])
        return {
            "id": entry.id,
            "parameters": metadata.parameters,
            "parsed": metadata.parsed_parameters(),
            "easel": document,
        }

    @router.get("/api/v1/models", tags=["native"], **documented(NATIVE, list[api.ModelEntry]))
    async def list_models(state: State) -> list[dict[str, Any]]:
        return public_models(state)

    @router.get("/api/v1/loras", tags=["native"], **documented(NATIVE, list[api.LoraEntry]))
    async def list_loras(state: State) -> list[dict[str, Any]]:
        """The LoRAs a request may name in `loras` (read fresh: drop a file in and it is there)."""
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(public_loras, state)

    @router.get("/api/v1/embeddings", tags=["native"], **documented(NATIVE, list[api.EmbeddingEntry]))
    async def list_embeddings(state: State) -> list[dict[str, Any]]:
        """The textual-inversion embeddings a prompt may name (read fresh); unreadable files are
        left out (`GET /sdapi/v1/embeddings` lists them under `skipped`, with the reason)."""
        from starlette.concurrency import run_in_threadpool

        entries = await run_in_threadpool(public_embeddings, state)
        return [
            {key: e[key] for key in ("name", "vectors", "width", "family", "sha256")}
            for e in entries
            if not e["error"]
        ]

    @router.get("/api/v1/gallery", tags=["native"], **documented(NATIVE, list[api.GalleryItem], 422))
    async def gallery(
        state: State,
        search: str | None = None,
        model: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[dict[str, Any]]:
        """Newest first; each entry with the URL of its image (never its path on the server)."""
        entries = state.gallery.list(text=search, model=model, since=since, until=until, limit=limit)
        return [
            {
                **{k: v for k, v in entry.as_dict().items() if k != "path"},
                "request": public_request(entry.request),
                "url": f"/api/v1/images/{entry.id}",
            }
            for entry in entries
        ]

    @router.delete("/api/v1/images/{image_id}", tags=["native"], **documented(NATIVE, api.Deleted, 404, 422))
    async def delete_image(image_id: ImageId, state: State) -> dict[str, str]:
        """Remove the file and its gallery row (jobs that made it keep their records)."""
        state.gallery.delete(gallery_entry(state, image_id).id)
        return {"deleted": image_id}

    @router.get("/api/v1/models/info", tags=["native"], **documented(NATIVE, api.ModelInfo, 404, 422))
    async def model_info(state: State, model: str | None = None) -> dict[str, Any]:
        """What a form needs to know about a model: its family, tasks, the family-only fields
        it takes (refiner..., prior...), whether ControlNets steer it, and its defaults.
        Reads model_index.json only."""
        from easel.models.cache import detect_family

        reference = None if model is None else state.policy.model_reference(model, field="model")
        family = detect_family(await asyncio.to_thread(state.engine.resolve_model, reference))
        return {
            "model": model,
            "family": family.name,
            "tasks": list(family.tasks),
            "options": list(family.options),
            "controlnet": family.controlnet_text2img_class is not None,
            "loras": family.loras,
            "defaults": {"steps": family.default_steps, "guidance_scale": family.default_guidance},
        }

    @router.get("/api/v1/schedulers", tags=["native"], **documented(NATIVE, list[str]))
    async def schedulers() -> list[str]:
        from easel.schedulers import known_scheduler_names

        return known_scheduler_names()

    @router.get("/api/v1/styles", tags=["native"], **documented(NATIVE, list[api.PromptStyle], 422))
    async def styles(state: State) -> list[dict[str, Any]]:
        """The prompt styles `styles` may name (styles.csv in EASEL_HOME, or EASEL_STYLES_FILE)."""
        from easel.server.a1111_info import prompt_styles

        return await asyncio.to_thread(prompt_styles, state)

    @router.get("/api/v1/control", tags=["native"], **documented(NATIVE, api.ControlOptions))
    async def control_options() -> dict[str, list[str]]:
        """ControlNet models (`demo` and those in the HF cache), preprocessor names and the
        control types a union ControlNet's `mode` names."""
        from easel.control.preprocessors import PREPROCESSORS
        from easel.request import UNION_MODES
        from easel.server.policy import list_control_models

        models = list_control_models()
        return {"models": models, "preprocessors": list(PREPROCESSORS), "modes": list(UNION_MODES)}

    @router.get("/api/v1/vaes", tags=["native"], **documented(NATIVE, list[str]))
    async def vaes() -> list[str]:
        """VAE overrides for `vae`: the AutoencoderKL repos in the HF cache (any hub id is accepted too)."""
        from easel.server.policy import list_vaes

        return await asyncio.to_thread(list_vaes)

    @router.post(
        "/api/v1/control/preview", tags=["native"], **documented(NATIVE, api.ControlPreview, *api.BODY)
    )
    async def control_preview(body: ControlPreviewRequest, state: State) -> dict[str, Any]:
        """The control image a unit would use, for a form to show before generating. Only the
        model-free preprocessors (none, canny): a detector loads weights, which only jobs do."""
        from easel.control.preprocessors import PREPROCESSORS

        if body.preprocessor not in ("none", "canny"):
            known = body.preprocessor in PREPROCESSORS
            raise (UnsupportedFeature if known else InvalidRequest)(
                f"preprocessor={body.preprocessor!r}: "
                + ("its preview is not available (detectors load models; they run inside the job)"
                   if known else "unknown; known: " + ", ".join(PREPROCESSORS)),
                **({} if known else {"field": "preprocessor", "value": body.preprocessor}),
            )  # fmt: skip
        if body.canny_low > body.canny_high:
            raise InvalidRequest(
                f"invalid canny_low={body.canny_low}: must not exceed canny_high={body.canny_high}",
                field="canny_low",
                value=body.canny_low,
            )
        data = base64.b64decode(state.policy.data_url(body.image, field="image").partition(",")[2])
        png, width, height = await asyncio.to_thread(_preview_png, data, body)
        return {"image": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                "width": width, "height": height}  # fmt: skip

    @router.post("/api/v1/tokens", tags=["native"], **documented(NATIVE, api.TokenCount, 404, *api.BODY))
    async def tokens(body: TokensRequest, state: State) -> dict[str, Any]:
        """Token count of a prompt with the model's own tokenizer (files only, no weights)."""
        reference = None if body.model is None else state.policy.model_reference(body.model, field="model")
        count = await asyncio.to_thread(
            state.engine.count_tokens, body.prompt, model=reference, syntax=body.prompt_syntax
        )
        return {"tokens": count.tokens, "chunks": count.chunks, "capacity": count.capacity,
                "text": str(count)}  # fmt: skip

    @router.post("/api/v1/png-info", tags=["native"], **documented(NATIVE, api.PngInfo, *api.BODY))
    async def png_info(body: ImageBody, state: State) -> dict[str, Any]:
        """What an image says about how it was made (easel's recipe, or any tool's A1111
        parameters), plus `request`: those settings as GenerationRequest fields for a form."""
        import io

        from easel.storage.metadata import read_metadata

        data = base64.b64decode(state.policy.data_url(body.image, field="image").partition(",")[2])
        metadata = read_metadata(io.BytesIO(data))
        document = dict(metadata.document or {})
        if isinstance(document.get("request"), dict):
            document["request"] = public_request(document["request"])
            fields = dict(document["request"])
            fields["seed"] = document.get("seed", fields.get("seed"))
            fields["num_images"] = 1
        else:
            fields = _fields_from_parameters(metadata.parsed_parameters())
        return {"parameters": metadata.parameters, "parsed": metadata.parsed_parameters(),
                "easel": document or None, "request": fields}  # fmt: skip

    from easel.server import upscaling

    upscaling.add_native_routes(router)  # GET /api/v1/upscalers, POST /api/v1/upscale
    return router


def _preview_png(data: bytes, body: ControlPreviewRequest) -> tuple[bytes, int, int]:
    import io

    from PIL import ImageOps

    from easel.control.preprocessors import preprocess
    from easel.storage.images import opened_image

    with opened_image(data, field="image") as opened:  # truncated or corrupt data: a 422 naming it
        image = ImageOps.exif_transpose(opened).convert("RGB")
    processed = preprocess(image, body.preprocessor, canny_low=body.canny_low, canny_high=body.canny_high,
                           field="preprocessor")  # fmt: skip
    buffer = io.BytesIO()
    processed.save(buffer, format="PNG")
    return buffer.getvalue(), processed.width, processed.height


def _fields_from_parameters(parsed: dict[str, Any] | None) -> dict[str, Any]:
    """A1111 parameters (any tool's) -> the request fields they name; unknown items are left out."""
    if not parsed:
        return {}
    from easel.schedulers import scheduler_spec

    settings = parsed.get("settings", {})
    fields: dict[str, Any] = {
        "prompt": parsed.get("prompt", ""), "negative_prompt": parsed.get("negative_prompt", "")
    }  # fmt: skip
    for key, (name, kind) in A1111_FIELDS.items():
        if key in settings:
            with contextlib.suppress(ValueError):
                fields[name] = kind(settings[key])
    if "Distilled CFG Scale" in settings:  # Forge's FLUX.1: "CFG scale" is its real CFG, 1 when off
        with contextlib.suppress(ValueError):
            if float(settings.get("CFG scale", 1)) != 1:
                fields["true_cfg_scale"] = float(settings["CFG scale"])
    width, _, height = str(settings.get("Size", "")).partition("x")
    if width.isdigit() and height.isdigit():
        fields["width"], fields["height"] = int(width), int(height)
    width, _, height = str(settings.get("Seed resize from", "")).partition("x")
    if width.isdigit() and height.isdigit():
        fields["seed_resize_from"] = (int(width), int(height))
    if settings.get("Tiling") == "True":
        fields["tiling"] = True
    sampler = settings.get("Sampler")
    schedule = settings.get("Schedule type")
    if sampler and schedule and schedule != "Automatic" and not sampler.endswith(schedule):
        sampler = f"{sampler} {schedule}"  # A1111 >= 1.9 writes them apart; easel's label joins them
    spec = scheduler_spec(sampler) if sampler else None
    if spec is not None:
        fields["scheduler"] = sampler
        with contextlib.suppress(ValueError):
            if float(settings.get("Eta DDIM", 0)) and spec[0] == "DDIMScheduler":
                fields["eta"] = float(settings["Eta DDIM"])
    if settings.get("Model"):
        fields["model"] = settings["Model"]
    if settings.get("VAE"):  # only a VAE this server can name (A1111's are file names of its own folder)
        from easel.server.policy import list_vaes

        name = settings["VAE"]
        listed = next((repo for repo in list_vaes() if name in (repo, repo.rsplit("/", 1)[-1])), None)
        if listed is not None:
            fields["vae"] = listed
    fields["prompt_syntax"] = "a1111"  # A1111 parameters are written in A1111 weighting syntax
    return fields

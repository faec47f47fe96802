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
GET  /api/v1/gallery               gallery entries (search, model, dates)
GET  /health                       liveness (the one route open without the key)
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, StreamingResponse

from easel.errors import InvalidRequest
from easel.request import GenerationRequest
from easel.server.app import ServerState, public_models, state_of
from easel.server.errors import ImageNotFound
from easel.server.jobs import Job, public_request
from easel.storage.gallery import GalleryEntry

State = Annotated[ServerState, Depends(state_of)]


def gallery_entry(state: ServerState, image_id: str) -> GalleryEntry:
    """The gallery entry, or 404 (the gallery says InvalidRequest for ids it does not have)."""
    try:
        return state.gallery.get(image_id)
    except InvalidRequest as error:
        if "no such image" in str(error):
            raise ImageNotFound(f"no image with id {image_id!r}") from None
        raise


def submit(state: ServerState, request: GenerationRequest, source: str) -> Job:
    """Every door's way in: the policy checks, then the queue."""
    return state.queue.submit(state.policy.check(request), source)


def build_router() -> APIRouter:
    """The routes of this API, built per app (create_app), so no router is shared module state."""
    router = APIRouter()

    @router.get("/health", tags=["native"])
    async def health() -> dict[str, str]:
        """Liveness only: says nothing about the configuration (open without the key)."""
        return {"status": "ok"}

    @router.post("/api/v1/jobs", status_code=202, tags=["native"])
    async def create_job(request: GenerationRequest, state: State) -> dict[str, Any]:
        """Queue a generation; returns at once with the job id."""
        return submit(state, request, "native").describe()

    @router.get("/api/v1/jobs", tags=["native"])
    async def list_jobs(
        state: State, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> list[dict[str, Any]]:
        return [job.describe() for job in state.queue.recent(limit)]

    @router.get("/api/v1/jobs/{job_id}", tags=["native"])
    async def get_job(job_id: str, state: State) -> dict[str, Any]:
        return state.queue.get(job_id).describe()

    @router.post("/api/v1/jobs/{job_id}/cancel", tags=["native"])
    async def cancel_job(job_id: str, state: State) -> dict[str, Any]:
        """Queued jobs are cancelled at once; a running job stops at its next denoising step."""
        return state.queue.cancel(job_id).describe()

    @router.get("/api/v1/jobs/{job_id}/events", tags=["native"])
    async def job_events(job_id: str, state: State) -> StreamingResponse:
        """Server-sent events: `progress` ({status, step, total}) on every change, then `end`
        with the full job record."""
        job = state.queue.get(job_id)

        async def events() -> AsyncIterator[str]:
            seen = -1
            while True:
                version, finished = job.version, job.finished
                if version != seen:
                    seen = version
                    progress = {"status": job.status, "step": job.step, "total": job.total}
                    yield f"event: progress\ndata: {json.dumps(progress)}\n\n"
                if finished:
                    yield f"event: end\ndata: {json.dumps(job.describe(), ensure_ascii=False)}\n\n"
                    return
                await asyncio.sleep(0.05)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @router.post("/api/v1/generate", tags=["native"])
    async def generate(
        request: GenerationRequest,
        state: State,
        include_images: Annotated[bool, Query(description="Add each PNG as base64 (b64_png)")] = False,
    ) -> dict[str, Any]:
        """Submit and wait for the result; errors come back as they would from the job."""
        job = await state.queue.wait(submit(state, request, "native"))
        error = job.exception()
        if error is not None:
            raise error
        record = job.describe()
        if include_images:
            for image in record["images"]:
                data = gallery_entry(state, image["id"]).path.read_bytes()
                image["b64_png"] = base64.b64encode(data).decode("ascii")
        return record

    @router.get("/api/v1/images/{image_id}", tags=["native"], response_class=FileResponse)
    async def get_image(image_id: str, state: State) -> FileResponse:
        """The image file as the gallery keeps it: PNG with the A1111 parameters and easel recipe."""
        entry = gallery_entry(state, image_id)
        return FileResponse(entry.path, media_type="image/png", filename=f"{entry.id}.png")

    @router.get("/api/v1/images/{image_id}/metadata", tags=["native"])
    async def get_image_metadata(image_id: str, state: State) -> dict[str, Any]:
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

    @router.get("/api/v1/models", tags=["native"])
    async def list_models(state: State) -> list[dict[str, Any]]:
        return public_models(state)

    @router.get("/api/v1/gallery", tags=["native"])
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

    return router

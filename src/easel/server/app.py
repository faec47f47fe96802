"""create_app(settings): the HTTP door, built fresh for each call (no module globals).

The app holds one ServerState on app.state.easel: the settings, one Easel (the only path to
the models), the gallery, the job queue and the door policy. The three routers (native,
A1111, OpenAI) only translate their API's fields into GenerationRequests, submit them to the
queue and render results; errors are mapped in server/errors.py, one shape per flavour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request  # at runtime: FastAPI reads state_of's annotation

from easel.config import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from easel.engine import Easel
    from easel.server.jobs import JobQueue
    from easel.server.policy import DoorPolicy, ModelEntry
    from easel.storage.gallery import Gallery


@dataclass
class ServerState:
    """Everything the routes share, created by create_app and reachable from each request."""

    settings: Settings
    engine: Easel
    gallery: Gallery
    queue: JobQueue
    policy: DoorPolicy
    current_model: str | None = None  # A1111's sd_model_checkpoint (None: the bundled model)
    current_vae: str | None = None  # A1111's sd_vae (None: "Automatic", the model's own VAE)
    current_clip_skip: int | None = None  # A1111's CLIP_stop_at_last_layers (None: 1, no skip)
    bind: tuple[str, int] | None = None  # host and port `easel serve` listens on (A1111 cmd-flags)

    def models(self) -> list[ModelEntry]:
        from easel.server.policy import list_models

        return list_models()


def state_of(request: Request) -> ServerState:
    """FastAPI dependency: the state of the app serving this request."""
    return request.app.state.easel


def create_app(settings: Settings | None = None, *, engine: Easel | None = None) -> FastAPI:
    """A new server app. `engine` lets tests share one loaded Easel between apps."""
    from fastapi import FastAPI

    from easel import ui
    from easel.engine import Easel
    from easel.limits import Limits
    from easel.server import a1111, a1111_options, errors, native, openai, openapi
    from easel.server.access_log import AccessLogMiddleware
    from easel.server.jobs import JobQueue, JobStore
    from easel.server.policy import DoorPolicy
    from easel.server.security import ApiKeyMiddleware, BodyLimitMiddleware
    from easel.storage.gallery import Gallery

    settings = settings or Settings.from_env()
    engine = engine or Easel(settings)
    gallery = Gallery(settings.home)
    queue = JobQueue(
        engine,
        gallery,
        JobStore(gallery.database),
        size=settings.queue_size,
        workers=settings.server_workers,
        limits=Limits.of(settings),
    )
    state = ServerState(settings, engine, gallery, queue, DoorPolicy(settings))
    a1111_options.restore_options(state)  # the A1111 model/VAE/clip skip set before a restart

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import_libraries()  # before any worker or request thread can race for them
        queue.start()
        try:
            yield
        finally:
            queue.stop()

    app = FastAPI(
        title="easel",
        summary="Local image generation: native jobs API, AUTOMATIC1111- and OpenAI-compatible endpoints",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.easel = state
    errors.install(app)
    openapi.with_limits(app, settings)  # the document states this server's max_steps, ...
    app.include_router(native.build_router())
    app.include_router(a1111.build_router())
    app.include_router(openai.build_router())
    app.include_router(ui.build_router())  # the web UI: a page over the native API, same key
    # outermost first: a request without the key is refused before its body is read
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes * 4 // 3 + 1024 * 1024)
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(AccessLogMiddleware)  # outermost: refusals are logged too
    return app


def import_libraries() -> None:
    """Import the diffusers pipelines and transformers classes easel uses, in one thread.

    Why: transformers 5's lazy module imports are not thread-safe. A job loading a pipeline in a
    worker thread while a request thread loads a tokenizer (the web UI counts tokens as you
    type) failed about one time in two with "cannot import name 'CLIPImageProcessor' from
    'transformers'". Imported once here, at startup, both find them ready. Costs the import time
    once per process (a cold `import diffusers` pipeline is a few seconds), which the first job
    would have paid anyway."""
    import diffusers
    import transformers

    for name in ("CLIPTokenizer", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPImageProcessor",
                 "CLIPVisionModelWithProjection"):  # fmt: skip
        getattr(transformers, name)
    for name in ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "AutoPipelineForText2Image",
                 "AutoPipelineForImage2Image", "AutoPipelineForInpainting", "ControlNetModel"):  # fmt: skip
        getattr(diffusers, name)


def serve(settings: Settings, *, host: str, port: int, insecure: bool = False) -> None:
    """Run the app on uvicorn (blocking); refuses a non-loopback bind without a key."""
    import uvicorn

    from easel.server.access_log import log_to_stderr
    from easel.server.security import check_bind

    check_bind(host, api_key=settings.api_key, insecure=insecure)
    log_to_stderr()
    app = create_app(settings)
    app.state.easel.bind = (host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("easel")
    except PackageNotFoundError:
        return "0+unknown"


def public_models(state: ServerState) -> list[dict[str, Any]]:
    """The models, the server's current one (A1111's sd_model_checkpoint, else the bundled
    model) marked `default`: the web UI starts with it selected."""
    return [{**entry.public(), "default": entry.reference == state.current_model} for entry in state.models()]


def public_embeddings(state: ServerState) -> list[dict[str, Any]]:
    """The embeddings folder's files (read fresh), readable or not, without server paths:
    name, vectors, width, family, sha256 and `error` (None when readable)."""
    from easel.models.embeddings import list_embeddings

    settings = state.settings
    return [
        {key: entry[key] for key in ("name", "vectors", "width", "family", "sha256", "error")}
        for entry in list_embeddings(settings.embeddings_folder, settings.home / "hashes.json")
    ]


def public_loras(state: ServerState) -> list[dict[str, Any]]:
    """The LoRA folder's files as the native API lists them (no server paths)."""
    from easel.models.lora import list_loras

    settings = state.settings
    return [
        {key: entry[key] for key in ("name", "family", "hash", "sha256")}
        for entry in list_loras(settings.loras_folder, settings.home / "hashes.json")
    ]

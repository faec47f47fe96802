"""create_app(settings): the HTTP door, built fresh for each call (no module globals).

The app holds one ServerState (server/state.py) on app.state.easel: the settings, one Easel
(the only path to the models), the gallery, the job queue and the door policy. The three routers (native,
A1111, OpenAI) only translate their API's fields into GenerationRequests, submit them to the
queue and render results; errors are mapped in server/errors.py, one shape per flavour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from easel.config import Settings

# the shared state lives in server/state.py (the routers import it, never this module); its
# names stay importable from here
from easel.server.state import (  # noqa: F401
    ServerState,
    _version,
    public_embeddings,
    public_loras,
    public_models,
    state_of,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from easel.engine import Easel
    from easel.server.jobs import Runner


def create_app(
    settings: Settings | None = None, *, engine: Easel | None = None, runner: Runner | None = None
) -> FastAPI:
    """A new server app. `engine` lets tests share one loaded Easel between apps; `runner`
    runs the jobs elsewhere (Ray Serve workers, server/ray_serve.py) instead of in `engine`."""
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
        runner=runner,  # scale-out (server/ray_serve.py); None: this process's engine
        max_batch=settings.max_batch,  # easel serve --max-batch / --batch-window-ms (easel.batching)
        batch_window_ms=settings.batch_window_ms,
    )
    queue.preview_every = settings.preview_every  # easel serve --preview-every
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


def serve(
    settings: Settings, *, host: str, port: int, insecure: bool = False, runner: Runner | None = None
) -> None:
    """Run the app on uvicorn (blocking); refuses a non-loopback bind without a key. With a
    `runner` (scale-out: server/ray_serve.py), jobs run there; it is closed when the server stops."""
    import uvicorn

    from easel.server.access_log import log_to_stderr
    from easel.server.security import check_bind

    check_bind(host, api_key=settings.api_key, insecure=insecure)
    log_to_stderr()
    app = create_app(settings, runner=runner)
    app.state.easel.bind = (host, port)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    finally:
        close = getattr(runner, "close", None)
        if close is not None:  # scale-out: remove the workers this server deployed
            close()

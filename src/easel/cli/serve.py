"""`easel serve`: the HTTP server (and the web UI it serves)."""

from __future__ import annotations

from typing import Annotated

import typer

from easel.cli.app import (
    DebugOption,
    DeviceOption,
    DtypeOption,
    ThreadsOption,
    app,
    quiet_libraries,
    run_door,
)

SCALE = "Scale-out (Ray Serve)"


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback needs an API key or --insecure.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (7860, as AUTOMATIC1111).")] = 7860,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="Require this key on every route but /health (Bearer, or HTTP Basic password). "
            "Prefer env EASEL_API_KEY: command lines are visible to other users.",
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback bind without an API key.")
    ] = False,
    allow_url_images: Annotated[
        bool,
        typer.Option(
            "--allow-url-images", help="Accept init images by http(s) URL (off: the server fetches nothing)."
        ),
    ] = False,
    queue_size: Annotated[
        int | None, typer.Option(help="Jobs waiting at most; more get 429 (env EASEL_QUEUE_SIZE, 64).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Generation workers (env EASEL_SERVER_WORKERS, 1); with --ray, worker replicas."),
    ] = None,
    preview_every: Annotated[
        int | None,
        typer.Option(
            help="Live previews of running jobs every N steps, 0 = off (env EASEL_PREVIEW_EVERY, 5): "
            "native SSE, A1111 current_image, OpenAI partial images, the web UI.",
        ),
    ] = None,
    preview_method: Annotated[
        str | None,
        typer.Option(
            help="auto (TAESD when in the HF cache and made for the model's VAE, else linear) | linear "
            "| taesd | none (env EASEL_PREVIEW_METHOD, auto).",
        ),
    ] = None,
    max_batch: Annotated[
        int | None,
        typer.Option(
            help="Run up to N compatible queued jobs (same model, size, steps, scheduler, ...) as one "
            "pipeline call; 1 = off (env EASEL_MAX_BATCH, 1). Batched images may differ from their "
            "solo replay in the last bits (README). Not with --ray.",
        ),
    ] = None,
    batch_window_ms: Annotated[
        int | None,
        typer.Option(help="How long a job waits for others to batch with (env EASEL_BATCH_WINDOW_MS, 50)."),
    ] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run jobs on Ray Serve workers (pip install 'easel\\[ray]'); this process stays the "
            "server. Joins RAY_ADDRESS or a running Ray, else starts one here.",
            rich_help_panel=SCALE,
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join, e.g. 10.0.0.5:6379 or auto.", rich_help_panel=SCALE),
    ] = None,
    min_workers: Annotated[
        int | None,
        typer.Option(help="Autoscale from this many workers (with --max-workers).", rich_help_panel=SCALE),
    ] = None,
    max_workers: Annotated[
        int | None, typer.Option(help="Autoscale workers up to this many.", rich_help_panel=SCALE)
    ] = None,
    gpus_per_worker: Annotated[
        float | None,
        typer.Option(help="GPUs per worker, fractions allowed (default 1 on CUDA).", rich_help_panel=SCALE),
    ] = None,
    cpus_per_worker: Annotated[
        float, typer.Option(help="CPUs per worker, fractions allowed.", rich_help_panel=SCALE)
    ] = 1.0,
    memory_per_worker: Annotated[
        float | None,
        typer.Option(help="Memory per worker in GiB (Ray's memory resource).", rich_help_panel=SCALE),
    ] = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    threads: ThreadsOption = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            "--quantize",
            metavar="KIND",
            help="Quantise models for jobs that do not say (every door; native jobs may send their own "
            "`quantize`): none | int8 | nf4 | torchao-int8 | torchao-fp8 (env EASEL_QUANTIZE).",
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Run the HTTP server: native jobs API, AUTOMATIC1111- and OpenAI-compatible endpoints."""

    def run() -> None:
        quiet_libraries(debug)
        from easel.config import Settings
        from easel.server.app import serve as serve_app

        settings = Settings.from_env(
            api_key=api_key, allow_url_images=allow_url_images or None, queue_size=queue_size,
            server_workers=workers, device=device, dtype=dtype, threads=threads, quantize=quantize,
            preview_every=preview_every, preview_method=preview_method,
            max_batch=max_batch, batch_window_ms=batch_window_ms,
        )  # fmt: skip
        runner = None
        scaled = {"--ray-address": ray_address, "--min-workers": min_workers, "--max-workers": max_workers,
                  "--gpus-per-worker": gpus_per_worker, "--memory-per-worker": memory_per_worker,
                  "--cpus-per-worker": None if cpus_per_worker == 1.0 else cpus_per_worker}  # fmt: skip
        if ray:
            from dataclasses import replace

            from easel.server.ray_serve import ScaleOut, connect, require_ray
            from easel.server.security import check_bind

            if settings.max_batch > 1:  # batching joins jobs in this process's engine (easel.batching)
                from easel.errors import InvalidRequest

                raise InvalidRequest("--max-batch > 1 cannot go with --ray: batching is local only",
                                     field="max_batch", value=settings.max_batch)  # fmt: skip
            require_ray()
            scale = ScaleOut(
                address=ray_address, workers=settings.server_workers, min_workers=min_workers,
                max_workers=max_workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                memory_per_worker_gb=memory_per_worker,
            )  # fmt: skip
            check_bind(host, api_key=settings.api_key, insecure=insecure)  # before starting Ray
            runner = connect(settings, scale)
            settings = replace(settings, server_workers=scale.most_workers)  # one job per replica
        elif given := [flag for flag, value in scaled.items() if value is not None]:
            from easel.errors import InvalidRequest

            raise InvalidRequest(f"{given[0]} needs --ray (it sets up scale-out workers)", field=given[0])
        serve_app(settings, host=host, port=port, insecure=insecure, runner=runner)

    run_door(run, debug=debug)

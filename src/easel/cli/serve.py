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
        int | None, typer.Option(help="Generation workers (env EASEL_SERVER_WORKERS, 1 per device).")
    ] = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    threads: ThreadsOption = None,
    debug: DebugOption = False,
) -> None:
    """Run the HTTP server: native jobs API, AUTOMATIC1111- and OpenAI-compatible endpoints."""

    def run() -> None:
        quiet_libraries(debug)
        from easel.config import Settings
        from easel.server.app import serve as serve_app

        settings = Settings.from_env(
            api_key=api_key, allow_url_images=allow_url_images or None, queue_size=queue_size,
            server_workers=workers, device=device, dtype=dtype, threads=threads,
        )  # fmt: skip
        serve_app(settings, host=host, port=port, insecure=insecure)

    run_door(run, debug=debug)

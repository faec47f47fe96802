"""`easel upscale` and `easel upscalers`: make a picture bigger, and list what can."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from easel.cli.app import DebugOption, DeviceOption, JsonOption, app, quiet_libraries, run_door
from easel.errors import EaselError, InvalidRequest

# Easel.upscale's fields -> the flags that set them (errors name the flag)
FLAGS = {"scale": "--scale", "width": "--width", "height": "--height", "upscaler": "--upscaler",
         "image": "IMAGE", "output": "--output"}  # fmt: skip


@app.command()
def upscale(
    image: Annotated[Path, typer.Argument(help="The picture to upscale (PNG, JPEG or WebP).")],
    scale: Annotated[float | None, typer.Option("--scale", "-s", help="Times bigger (e.g. 2).")] = None,
    width: Annotated[int | None, typer.Option(help="Output width (instead of --scale).")] = None,
    height: Annotated[int | None, typer.Option(help="Output height (instead of --scale).")] = None,
    upscaler: Annotated[
        str, typer.Option("--upscaler", "-u", help="None, Lanczos, Nearest or a model (easel upscalers).")
    ] = "Lanczos",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="PNG to write (default: IMAGE-upscaled.png).")
    ] = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow .pth/.pt/.ckpt/.bin upscalers (they can run code).")
    ] = False,
    device: DeviceOption = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Upscale a picture with a resampler or a model upscaler (ESRGAN, RealESRGAN, SwinIR, ...).

    The PNG keeps the source's recipe and A1111 parameters, plus A1111's postprocessing text."""
    target = output if output is not None else Path(f"{image.stem}-upscaled.png")

    def run() -> dict[str, Any]:
        if target.suffix.lower() != ".png":
            raise InvalidRequest(
                f"invalid --output={str(target)!r}: use a .png file name (it keeps the picture's text)",
                field="output",
                value=str(target),
            )
        if scale is None and width is None and height is None:
            raise InvalidRequest("missing --scale: give --scale, or --width and/or --height", field="scale")
        quiet_libraries(debug)
        from easel.config import Settings
        from easel.engine import Easel
        from easel.postprocess import postprocessing_info, read_source_file, upscaled_png

        source, text = read_source_file(image, field="image")
        engine = Easel(Settings.from_env(allow_pickle=allow_pickle or None, device=device))
        result = engine.upscale(source, scale=scale, width=width, height=height, upscaler=upscaler)
        size = {"Postprocess upscale by": scale} if scale is not None else {
            "Postprocess upscale to": f"{result.width}x{result.height}"}  # fmt: skip
        info = postprocessing_info({**size, "Postprocess upscaler": upscaler})
        target.write_bytes(upscaled_png(result, text, info))
        return {"path": str(target), "width": result.width, "height": result.height, "postprocessing": info}

    done = run_door(lambda: naming_flags(run), debug=debug)
    if as_json:
        typer.echo(json.dumps(done))
    else:
        typer.echo(f"{done['path']}  {done['width']}x{done['height']}")


@app.command()
def upscalers(as_json: JsonOption = False) -> None:
    """List the upscalers --upscaler takes: built-ins, then model files in EASEL_UPSCALER_DIR."""

    def run() -> tuple[Path, list[str]]:
        from easel.config import Settings
        from easel.upscalers import Upscalers

        settings = Settings.from_env()
        folder = settings.upscalers_folder
        return folder, Upscalers(folder, allow_pickle=settings.allow_pickle).names()

    folder, names = run_door(run, debug=False)
    if as_json:
        typer.echo(json.dumps({"folder": str(folder), "upscalers": names}))
        return
    for name in names:
        typer.echo(name)


def naming_flags(action: Any) -> Any:
    """Run `action`; an error about a field names its flag (`invalid scale=0` -> `invalid --scale=0`)."""
    try:
        return action()
    except EaselError as error:
        field = getattr(error, "field", None)
        flag = FLAGS.get(field or "")
        message = str(error)
        if flag is None or message.startswith(f"invalid {flag}") or message.startswith(f"missing {flag}"):
            raise
        for prefix in ("invalid ", "missing "):
            if message.startswith(f"{prefix}{field}"):
                message = f"{prefix}{flag}{message[len(prefix) + len(field or '') :]}"
                break
        else:
            message = f"{flag}: {message}"
        renamed = type(error)(message, field=field, value=getattr(error, "value", None)) if isinstance(
            error, InvalidRequest) else type(error)(message)  # fmt: skip
        raise renamed from None

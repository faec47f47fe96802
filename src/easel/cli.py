"""The `easel` command: a thin door over Easel.generate.

Every option maps to one GenerationRequest field or Settings field; the CLI adds only
presentation (progress bar, file names, --json) and the mapping of the error tree to exit
codes: 2 for bad input (one line naming the field and value), 1 for failures while
running (a short message; the traceback with --debug).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from easel.errors import EaselError, InvalidRequest, ModelNotFound, UnsupportedFeature

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Generate images locally with Hugging Face diffusers.",
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
INPUT_ERRORS = (InvalidRequest, ModelNotFound, UnsupportedFeature)


def exit_code_for(error: BaseException) -> int:
    """The one mapping of the error tree to exit codes."""
    return 2 if isinstance(error, INPUT_ERRORS) else 1


def _run_door(action: Callable[[], T], *, debug: bool) -> T:
    """Run `action`; turn every failure into one line on stderr and the right exit code."""
    try:
        return action()
    except EaselError as error:
        if debug:
            import traceback

            traceback.print_exc()
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(exit_code_for(error)) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as error:  # an easel bug or an environment problem: short, honest
        if debug:
            raise
        typer.echo(
            f"error: unexpected {type(error).__name__}: {error} (rerun with --debug for details)", err=True
        )
        raise typer.Exit(1) from None


def _quiet_libraries(debug: bool) -> None:
    """Hub/diffusers/transformers chatter is for debugging, not for every run."""
    if debug:
        return
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()


def output_paths(output: Path, count: int) -> list[Path]:
    """out.png for one image; out-0.png, out-1.png, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Image file to write (default easel-SEED.png); several images get -0, -1, ... suffixes.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Hub repo id, local diffusers folder or .safetensors file (default: bundled demo model).",
        ),
    ] = None,
    negative: Annotated[str, typer.Option("--negative", "-n", help="Negative prompt.")] = "",
    width: Annotated[
        int | None,
        typer.Option(help="Width, a multiple of 8 (default: the model's native size, or the init image's)."),
    ] = None,
    height: Annotated[int | None, typer.Option(help="Height, a multiple of 8.")] = None,
    steps: Annotated[
        int | None, typer.Option(help="Denoising steps (default from the model family, 50 for SD 1.5).")
    ] = None,
    guidance: Annotated[
        float | None, typer.Option("--guidance", "-g", help="Guidance scale (default 7.5 for SD 1.5).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the first image; image i uses seed+i. Random if omitted.")
    ] = None,
    num_images: Annotated[int, typer.Option("--num-images", "-N", help="Number of images.")] = 1,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Scheduler: A1111 name ('Euler a', 'DPM++ 2M Karras') or diffusers class name."),
    ] = None,
    image: Annotated[
        str | None, typer.Option("--image", "-i", help="Init image (path or URL): image-to-image.")
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(
            help="Image-to-image strength in [0, 1] (default 0.8); steps run = int(steps x strength)."
        ),
    ] = None,
    grid: Annotated[
        bool, typer.Option("--grid", help="Also write one grid image of all outputs (init image first).")
    ] = False,
    no_safety_checker: Annotated[
        bool, typer.Option("--no-safety-checker", help="Do not run the model's safety checker.")
    ] = False,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle", help="Allow .ckpt/.bin/.pt checkpoints (they can run code when loaded)."
        ),
    ] = False,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda | cuda:N | mps (env EASEL_DEVICE).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="auto | float32 | float16 | bfloat16 (env EASEL_DTYPE).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (env EASEL_THREADS).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of progress and paths.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show library logs and tracebacks.")] = False,
) -> None:
    """Text-to-image, or image-to-image with --image."""
    from easel.request import GenerationRequest

    def run() -> dict[str, Any]:
        request = GenerationRequest(
            model=model,
            prompt=prompt,
            negative_prompt=negative,
            width=width,
            height=height,
            steps=steps,
            guidance_scale=guidance,
            seed=seed,
            num_images=num_images,
            scheduler=scheduler,
            init_image=image,
            strength=strength,
            safety_checker=not no_safety_checker,
        )
        if output is not None and output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
            raise InvalidRequest(
                f"invalid output={str(output)!r}: use a .png, .jpg or .webp file name", field="output"
            )
        _quiet_libraries(debug)
        from easel.config import Settings
        from easel.engine import Easel

        settings = Settings.from_env(
            allow_pickle=allow_pickle or None, device=device, dtype=dtype, threads=threads
        )
        engine = Easel(settings)
        with _progress_display(enabled=not as_json and sys.stderr.isatty()) as on_progress:
            result = engine.generate(request, on_progress=on_progress)
        target = output or Path(f"easel-{result.seeds[0]}.png")
        paths = output_paths(target, len(result.images))
        for path, picture in zip(paths, result.images, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            picture.save(path)
        grid_path = None
        if grid:
            grid_path = target.with_name(f"{target.stem}-grid{target.suffix}")
            result.grid().save(grid_path)
        summary = result.summary()
        summary["images"] = [
            {"path": str(p), "seed": s, "nsfw": flagged}
            for p, s, flagged in zip(paths, result.seeds, result.nsfw, strict=True)
        ]
        summary["grid"] = None if grid_path is None else str(grid_path)
        return summary

    summary = _run_door(run, debug=debug)
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
        return
    for item in summary["images"]:
        flag = "  [flagged by the safety checker: blacked out]" if item["nsfw"] else ""
        typer.echo(f"{item['path']}  seed {item['seed']}{flag}")
    if summary["grid"]:
        typer.echo(f"{summary['grid']}  grid")
    typer.echo(
        f"{summary['effective_steps']} steps run, "
        f"{summary['request']['width']}x{summary['request']['height']}, "
        f"{summary['timings']['total_s']:.1f} s",
        err=True,
    )


class _progress_display:
    """A rich progress bar on an interactive terminal; a no-op callback otherwise."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> Callable[[Any], None] | None:
        if not self._enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress(
            "denoising", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        self._bar.start()
        task = self._bar.add_task("denoising", total=None)

        def on_progress(progress: Any) -> None:
            self._bar.update(task, completed=progress.step, total=progress.total)

        return on_progress

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


@app.command()
def schedulers() -> None:
    """List the scheduler names --scheduler accepts."""
    from easel.schedulers import known_scheduler_names

    for name in known_scheduler_names():
        typer.echo(name)


def main() -> None:
    """Console-script entry point."""
    app()

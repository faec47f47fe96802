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
    """Hub/diffusers/transformers chatter is for debugging, not for every run.

    Set through the libraries' environment variables (read when they are first imported), so
    a run that fails before any model loads never pays for importing torch."""
    if debug:
        return
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    for variable in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY"):
        os.environ.setdefault(variable, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Also write the image here (.png/.jpg/.webp); several images get -0, -1, ... suffixes. "
            "Images are always kept in the gallery unless --no-gallery.",
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
    syntax: Annotated[
        str,
        typer.Option(
            "--syntax", help="Prompt weighting syntax: compel (default), a1111 or plain (prompt_syntax)."
        ),
    ] = "compel",
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
    refiner: Annotated[
        str | None,
        typer.Option(
            help="SDXL: refiner model that finishes the base's denoising in latent space "
            "(e.g. stabilityai/stable-diffusion-xl-refiner-1.0)."
        ),
    ] = None,
    refiner_at: Annotated[
        float | None,
        typer.Option(help="SDXL + --refiner: share of the denoising the base does, in (0, 1) (default 0.8)."),
    ] = None,
    aesthetic_score: Annotated[
        float | None, typer.Option(help="SDXL refiner: aesthetic score conditioning (default 6.0).")
    ] = None,
    negative_aesthetic_score: Annotated[
        float | None, typer.Option(help="SDXL refiner: negative aesthetic score (default 2.5).")
    ] = None,
    original_size: Annotated[
        tuple[int, int] | None,
        typer.Option(metavar="HEIGHT WIDTH", help="SDXL micro-conditioning: size of the 'original' image."),
    ] = None,
    target_size: Annotated[
        tuple[int, int] | None,
        typer.Option(metavar="HEIGHT WIDTH", help="SDXL micro-conditioning: target size."),
    ] = None,
    crops_coords_top_left: Annotated[
        tuple[int, int] | None,
        typer.Option(metavar="TOP LEFT", help="SDXL micro-conditioning: crop coordinates (0 0: centred)."),
    ] = None,
    prior: Annotated[
        str | None,
        typer.Option(help="Kandinsky 2.2: prior model (default: the one the decoder's model card names)."),
    ] = None,
    prior_steps: Annotated[int | None, typer.Option(help="Kandinsky 2.2: prior steps (default 25).")] = None,
    prior_guidance: Annotated[
        float | None, typer.Option(help="Kandinsky 2.2: prior guidance scale (default 4.0).")
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(
            "--control",
            metavar="MODEL=IMAGE",
            help="ControlNet unit: control model (repo id, folder, .safetensors, or 'demo') = control "
            "image (path or URL). Repeat for several units (MultiControlNet). The k-th "
            "--control-scale/--control-start/--control-end/--preprocess/--canny-low/--canny-high "
            "applies to the k-th --control.",
        ),
    ] = None,
    control_scale: Annotated[
        list[float] | None,
        typer.Option("--control-scale", help="Per unit, in order: conditioning scale in [0, 2] (default 1)."),
    ] = None,
    control_start: Annotated[
        list[float] | None,
        typer.Option("--control-start", help="Per unit: fraction of the steps where it starts (default 0)."),
    ] = None,
    control_end: Annotated[
        list[float] | None,
        typer.Option("--control-end", help="Per unit: fraction of the steps where it stops (default 1)."),
    ] = None,
    preprocess: Annotated[
        list[str] | None,
        typer.Option(
            "--preprocess",
            help="Per unit: none (the image already is the map) | canny | openpose | depth | hed | "
            "lineart | mlsd | normalbae (detectors need: pip install 'easel[detectors]').",
        ),
    ] = None,
    canny_low: Annotated[
        list[int] | None, typer.Option("--canny-low", help="Per unit: canny lower threshold (default 100).")
    ] = None,
    canny_high: Annotated[
        list[int] | None, typer.Option("--canny-high", help="Per unit: canny upper threshold (default 200).")
    ] = None,
    save_control: Annotated[
        bool,
        typer.Option(
            "--save-control",
            help="Also write each processed control image (NAME-control-K.png beside the output).",
        ),
    ] = False,
    grid: Annotated[
        bool, typer.Option("--grid", help="Also write one grid image of all outputs (init image first).")
    ] = False,
    no_gallery: Annotated[
        bool, typer.Option("--no-gallery", help="Do not keep the images in the gallery (EASEL_HOME).")
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
    attention: Annotated[
        str | None, typer.Option(help="sdpa | xformers | slicing | default (env EASEL_ATTENTION).")
    ] = None,
    compile_unet: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="torch.compile the UNet (env EASEL_COMPILE)."),
    ] = None,
    offload: Annotated[
        str | None,
        typer.Option(help="CPU offload: none | model | sequential (needs a GPU; env EASEL_OFFLOAD)."),
    ] = None,
    vae_slicing: Annotated[
        bool | None,
        typer.Option("--vae-slicing/--no-vae-slicing", help="Decode a batch one image at a time."),
    ] = None,
    vae_tiling: Annotated[
        bool | None, typer.Option("--vae-tiling/--no-vae-tiling", help="Decode large images in tiles.")
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option("--channels-last/--no-channels-last", help="channels_last UNet memory format."),
    ] = None,
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
            prompt_syntax=syntax,
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
            refiner=refiner,
            refiner_at=refiner_at,
            aesthetic_score=aesthetic_score,
            negative_aesthetic_score=negative_aesthetic_score,
            original_size=original_size,
            target_size=target_size,
            crops_coords_top_left=crops_coords_top_left,
            prior=prior,
            prior_steps=prior_steps,
            prior_guidance_scale=prior_guidance,
            controls=control_units(
                control or [],
                {
                    "conditioning_scale": ("--control-scale", control_scale),
                    "guidance_start": ("--control-start", control_start),
                    "guidance_end": ("--control-end", control_end),
                    "preprocessor": ("--preprocess", preprocess),
                    "canny_low": ("--canny-low", canny_low),
                    "canny_high": ("--canny-high", canny_high),
                },
            ),
        )
        if output is not None and output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
            raise InvalidRequest(
                f"invalid output={str(output)!r}: use a .png, .jpg or .webp file name", field="output"
            )
        _quiet_libraries(debug)
        from easel.config import Settings
        from easel.engine import Easel

        settings = Settings.from_env(
            allow_pickle=allow_pickle or None,
            device=device,
            dtype=dtype,
            threads=threads,
            attention=attention,
            compile=compile_unet,
            offload=offload,
            vae_slicing=vae_slicing,
            vae_tiling=vae_tiling,
            channels_last=channels_last,
        )
        engine = Easel(settings)
        with _progress_display(enabled=not as_json and sys.stderr.isatty()) as on_progress:
            result = engine.generate(request, on_progress=on_progress)
        from easel.storage.gallery import Gallery
        from easel.storage.outputs import save_result

        gallery = None if no_gallery else Gallery(settings.home)
        images, grid_item = save_result(result, gallery=gallery, output=output, grid=grid)
        summary = result.summary()
        summary["images"] = [
            {"path": str(item.path), "seed": item.seed, "nsfw": item.nsfw, "id": item.gallery_id}
            for item in images
        ]
        summary["grid"] = None if grid_item is None else str(grid_item.path)
        summary["control_images"] = []
        if save_control and result.control_images:
            from easel.storage.files import write_atomically

            stem = output or images[0].path
            for index, control_image in enumerate(result.control_images):
                path = stem.with_name(f"{stem.stem}-control-{index}.png")
                write_atomically(path, _png(control_image))
                summary["control_images"].append(str(path))
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
    for index, path in enumerate(summary["control_images"]):
        typer.echo(f"{path}  control image {index}")
    for warning in summary.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(
        f"{summary['effective_steps']} steps run, "
        f"{summary['request']['width']}x{summary['request']['height']}, "
        f"{summary['timings']['total_s']:.1f} s",
        err=True,
    )


def control_units(
    pairs: list[str], per_unit: dict[str, tuple[str, list[Any] | None]]
) -> list[dict[str, Any]]:
    """--control MODEL=IMAGE values and the per-unit options -> ControlUnit fields.

    Why "the k-th value goes to the k-th unit": click gathers each repeated option into its
    own list, so that is the order both keep; fewer values leave the later units at their
    defaults, more values than units is an error (a typo would otherwise be ignored)."""
    units: list[dict[str, Any]] = []
    for index, pair in enumerate(pairs):
        model, separator, image = pair.partition("=")
        if not separator or not model.strip() or not image.strip():
            raise InvalidRequest(
                f"invalid --control {pair!r} (unit {index}): use MODEL=IMAGE, e.g. "
                "lllyasviel/control_v11p_sd15_openpose=pose.png",
                field=f"controls[{index}]",
                value=pair,
            )
        units.append({"model": model.strip(), "image": image.strip()})
    for field, (flag, values) in per_unit.items():
        values = values or []
        if len(values) > len(units):
            raise InvalidRequest(
                f"invalid {flag}: given {len(values)} times but there are {len(units)} --control units "
                f"(the k-th {flag} applies to the k-th --control)",
                field=field,
                value=values,
            )
        for unit, value in zip(units, values, strict=False):
            unit[field] = value
    return units


def _png(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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
def tokens(
    prompt: Annotated[str, typer.Argument(help="The prompt to count.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model whose tokenizer counts.")] = None,
    syntax: Annotated[str, typer.Option("--syntax", help="compel | a1111 | plain.")] = "compel",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Count a prompt's CLIP tokens and chunks ("83/150, 2 chunks"): past 75 easel chunks, never truncates."""

    def run() -> Any:
        from easel.config import Settings
        from easel.engine import Easel

        return Easel(Settings.from_env()).count_tokens(prompt, model=model, syntax=syntax)

    count = _run_door(run, debug=False)
    if as_json:
        typer.echo(json.dumps({"tokens": count.tokens, "chunks": count.chunks, "capacity": count.capacity}))
    else:
        typer.echo(str(count))


@app.command()
def schedulers() -> None:
    """List the scheduler names --scheduler accepts."""
    from easel.schedulers import known_scheduler_names

    for name in known_scheduler_names():
        typer.echo(name)


@app.command()
def bench(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model to measure (default: bundled demo).")
    ] = None,
    prompt: Annotated[str, typer.Option(help="Prompt to generate.")] = "a red circle on a blue background",
    steps: Annotated[int, typer.Option(help="Denoising steps per image.")] = 20,
    width: Annotated[int | None, typer.Option(help="Width (default: the model's native size).")] = None,
    height: Annotated[int | None, typer.Option(help="Height.")] = None,
    rounds: Annotated[int, typer.Option(help="Timed rounds (each runs easel then diffusers).")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed rounds first.")] = 1,
    extras: Annotated[
        bool, typer.Option("--extras/--no-extras", help="Also measure task switching and cold start.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show library logs and tracebacks.")] = False,
) -> None:
    """Time easel against a plain diffusers call (alternating rounds, medians, memory, equality)."""

    def run() -> dict[str, Any]:
        _quiet_libraries(debug)
        from easel.bench import measure_cold_start, measure_task_switching, run_benchmark
        from easel.config import Settings

        settings = Settings.from_env()
        report = run_benchmark(
            model=model, prompt=prompt, steps=steps, width=width, height=height, rounds=rounds,
            warmup=warmup, settings=settings,
        ).as_dict()  # fmt: skip
        if extras:
            report["task_switching"] = measure_task_switching(model, settings)
            report["cold_start"] = measure_cold_start(prompt) if model is None else None
        return report

    report = _run_door(run, debug=debug)
    if as_json:
        typer.echo(json.dumps(report))
        return
    for key, value in report.items():
        typer.echo(f"{key}: {value}")


gallery_app = typer.Typer(help="Browse, search and delete the images easel has made.", no_args_is_help=True)
app.add_typer(gallery_app, name="gallery")


def _gallery() -> Any:
    from easel.config import Settings
    from easel.storage.gallery import Gallery

    return Gallery(Settings.from_env().home)


@app.command()
def info(
    image: Annotated[Path, typer.Argument(help="An image made by easel or another A1111-style tool.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show what an image carries: A1111 parameters and easel's full recipe."""
    from easel.storage.metadata import read_metadata

    metadata = _run_door(lambda: read_metadata(image), debug=False)
    if metadata.parameters is None and metadata.document is None:
        typer.echo(f"error: {image} carries no generation parameters", err=True)
        raise typer.Exit(1)
    if as_json:
        payload = {
            "parameters": metadata.parameters,
            "parsed": metadata.parsed_parameters(),
            "easel": metadata.document,
        }
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
        return
    if metadata.parameters is not None:
        parsed = metadata.parsed_parameters() or {}
        typer.echo(f"Prompt: {parsed.get('prompt', '')}")
        if parsed.get("negative_prompt"):
            typer.echo(f"Negative prompt: {parsed['negative_prompt']}")
        for key, value in (parsed.get("settings") or {}).items():
            typer.echo(f"{key}: {value}")
    if metadata.document is not None:
        hashes = (metadata.document.get("model") or {}).get("hashes") or {}
        for component, digest in hashes.items():
            typer.echo(f"{component} sha256: {digest}")
        typer.echo("Replayable: yes (easel replay " + str(image) + ")")


@app.command()
def replay(
    image: Annotated[Path, typer.Argument(help="An image made by easel.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the image here.")] = None,
    seed: Annotated[int | None, typer.Option(help="New seed (same image, new seed).")] = None,
    steps: Annotated[int | None, typer.Option(help="Override the steps.")] = None,
    guidance: Annotated[
        float | None, typer.Option("--guidance", "-g", help="Override the guidance scale.")
    ] = None,
    scheduler: Annotated[str | None, typer.Option(help="Override the scheduler.")] = None,
    strength: Annotated[float | None, typer.Option(help="Override the image-to-image strength.")] = None,
    negative: Annotated[
        str | None, typer.Option("--negative", "-n", help="Override the negative prompt.")
    ] = None,
    no_gallery: Annotated[
        bool, typer.Option("--no-gallery", help="Do not keep the result in the gallery.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show library logs and tracebacks.")] = False,
) -> None:
    """Make an image again from the recipe it carries (byte-identical on the same machine)."""
    overrides = {
        key: value
        for key, value in {
            "seed": seed, "steps": steps, "guidance_scale": guidance, "scheduler": scheduler,
            "strength": strength, "negative_prompt": negative,
        }.items()
        if value is not None
    }  # fmt: skip

    def run() -> dict[str, Any]:
        _quiet_libraries(debug)
        from easel.config import Settings
        from easel.engine import Easel
        from easel.storage.gallery import Gallery
        from easel.storage.outputs import copy_image

        settings = Settings.from_env()
        gallery = None if no_gallery else Gallery(settings.home)
        parent = None if gallery is None else gallery.find_by_path(image)
        with _progress_display(enabled=not as_json and sys.stderr.isatty()) as on_progress:
            result, index = Easel(settings).replay(image, overrides, on_progress=on_progress)
        if gallery is not None:
            parent_id = None if parent is None else parent.id
            entry = gallery.add_result(result, parent_id=parent_id, indices=[index])[0]
            path, image_id = entry.path, entry.id
            if output is not None:
                path = copy_image(entry.path, output)
        else:
            path, image_id = result.save(output or Path(f"easel-{result.seeds[index]}.png"), index), None
        return {
            "path": str(path),
            "id": image_id,
            "seed": result.seeds[index],
            "request": result.request.model_dump(mode="json"),
        }

    summary = _run_door(run, debug=debug)
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
    else:
        typer.echo(f"{summary['path']}  seed {summary['seed']}")


def _print_entries(entries: list[Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([entry.as_dict() for entry in entries], ensure_ascii=False, indent=2))
        return
    for entry in entries:
        prompt = entry.prompt if len(entry.prompt) <= 60 else entry.prompt[:57] + "..."
        typer.echo(
            f"{entry.id}  {entry.created_at[:19]}  {entry.model}  seed {entry.seed}  {entry.kind}  {prompt}"
        )


@gallery_app.command("list")
def gallery_list(
    text: Annotated[
        str | None, typer.Option("--search", "-s", help="Text in the prompt or negative prompt.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name as shown in the list.")] = None,
    since: Annotated[str | None, typer.Option(help="From this date (YYYY-MM-DD or ISO time).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this date.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List images, newest first."""
    entries = _run_door(
        lambda: _gallery().list(text=text, model=model, since=since, until=until, limit=limit), debug=False
    )
    _print_entries(entries, as_json)


@gallery_app.command("search")
def gallery_search(
    text: Annotated[str, typer.Argument(help="Text in the prompt or negative prompt.")],
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Find images by prompt text."""
    _print_entries(_run_door(lambda: _gallery().list(text=text, limit=limit), debug=False), as_json)


@gallery_app.command("show")
def gallery_show(
    image_id: Annotated[str, typer.Argument(help="Gallery id (from gallery list).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show one image's record."""
    entry = _run_door(lambda: _gallery().get(image_id), debug=False)
    if as_json:
        typer.echo(json.dumps(entry.as_dict(), ensure_ascii=False, indent=2))
        return
    for key, value in entry.as_dict().items():
        typer.echo(f"{key}: {value}")


@gallery_app.command("delete")
def gallery_delete(image_id: Annotated[str, typer.Argument(help="Gallery id.")]) -> None:
    """Delete an image file and its record."""
    _run_door(lambda: _gallery().delete(image_id), debug=False)
    typer.echo(f"deleted {image_id}")


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
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda | cuda:N | mps (env EASEL_DEVICE).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="auto | float32 | float16 | bfloat16 (env EASEL_DTYPE).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (env EASEL_THREADS).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show library logs and tracebacks.")] = False,
) -> None:
    """Run the HTTP server: native jobs API, AUTOMATIC1111- and OpenAI-compatible endpoints."""

    def run() -> None:
        _quiet_libraries(debug)
        from easel.config import Settings
        from easel.server.app import serve as serve_app

        settings = Settings.from_env(
            api_key=api_key, allow_url_images=allow_url_images or None, queue_size=queue_size,
            server_workers=workers, device=device, dtype=dtype, threads=threads,
        )  # fmt: skip
        serve_app(settings, host=host, port=port, insecure=insecure)

    _run_door(run, debug=debug)


def main() -> None:
    """Console-script entry point."""
    app()

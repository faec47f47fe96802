"""Small commands: token counts, scheduler names, the benchmark."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from easel.cli.app import (
    DebugOption,
    JsonOption,
    app,
    quiet_libraries,
    run_door,
)


@app.command()
def tokens(
    prompt: Annotated[str, typer.Argument(help="The prompt to count.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model whose tokenizer counts.")] = None,
    syntax: Annotated[str, typer.Option("--syntax", help="compel | a1111 | plain.")] = "compel",
    base: Annotated[
        str | None, typer.Option("--base", help="A transformer file's base (default: from its tensors).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Count a prompt's CLIP tokens and chunks ("83/150, 2 chunks"): past 75 easel chunks, never truncates."""

    def run() -> Any:
        from easel.config import Settings
        from easel.engine import Easel

        return Easel(Settings.from_env()).count_tokens(prompt, model=model, syntax=syntax, base_model=base)

    count = run_door(run, debug=False)
    if as_json:
        fields = ("tokens", "chunks", "capacity", "counted_with", "vocabulary")
        typer.echo(json.dumps({name: getattr(count, name) for name in fields}))
        return
    typer.echo(str(count))
    note = f"counted with {count.counted_with}'s tokenizer ({count.vocabulary:,} tokens)"
    if count.vocabulary < CLIP_VOCABULARY and count.window == 75:  # the demo model's small vocabulary
        note += (f"; SD 1.5 and SDXL count with CLIP's ({CLIP_VOCABULARY:,} tokens), usually fewer: "
                 "--model NAME counts with a model's own")  # fmt: skip
    typer.echo(note, err=True)


CLIP_VOCABULARY = 49408  # the CLIP ViT-L/14 tokenizer of SD 1.5 and SDXL


@app.command()
def loras(as_json: JsonOption = False) -> None:
    """List the LoRAs in the LoRA folder (EASEL_LORA_DIR): name, family, A1111 hash."""

    def run() -> tuple[Any, list[dict[str, Any]]]:
        from easel.config import Settings
        from easel.models.lora import list_loras

        settings = Settings.from_env()
        return settings.loras_folder, list_loras(settings.loras_folder, settings.home / "hashes.json")

    folder, entries = run_door(run, debug=False)
    if as_json:
        typer.echo(json.dumps({"folder": str(folder), "loras": entries}))
        return
    if not entries:
        typer.echo(f"no LoRAs in {folder} (put .safetensors files there, or set EASEL_LORA_DIR)")
        return
    width = max(len(entry["name"]) for entry in entries)
    typer.echo(f"{'NAME':<{width}}  {'FAMILY':<18}  HASH")
    for entry in entries:
        family = entry["family"] or "unknown"
        pickle = "  (pickle)" if entry["pickle"] else ""
        typer.echo(f"{entry['name']:<{width}}  {family:<18}  {entry['hash']}{pickle}")


@app.command()
def embeddings(as_json: JsonOption = False) -> None:
    """List the textual-inversion embeddings in the embeddings folder (EASEL_EMBEDDINGS_DIR).

    Each with its name, vectors, family and A1111 hash, or why the file cannot be used."""

    def run() -> tuple[Any, list[dict[str, Any]]]:
        from easel.config import Settings
        from easel.models.embeddings import list_embeddings

        settings = Settings.from_env()
        folder = settings.embeddings_folder
        return folder, list_embeddings(folder, settings.home / "hashes.json")

    folder, entries = run_door(run, debug=False)
    if as_json:
        typer.echo(json.dumps({"folder": str(folder), "embeddings": entries}))
        return
    if not entries:
        typer.echo(
            f"no embeddings in {folder} (put .safetensors/.pt files there, or set EASEL_EMBEDDINGS_DIR)"
        )
        return
    width = max(len(entry["name"]) for entry in entries)
    typer.echo(f"{'NAME':<{width}}  {'VECTORS':<7}  {'FAMILY':<18}  HASH")
    for entry in entries:
        if entry["error"] is not None:
            typer.echo(f"{entry['name']:<{width}}  {'-':<7}  {'-':<18}  unusable: {entry['error']}")
            continue
        a1111_hash = entry["sha256"][:12]
        typer.echo(f"{entry['name']:<{width}}  {entry['vectors']:<7}  {entry['family']:<18}  {a1111_hash}")


@app.command()
def schedulers() -> None:
    """List the scheduler names --scheduler accepts."""
    from easel.schedulers import known_scheduler_names

    for name in known_scheduler_names():
        typer.echo(name)


@app.command()
def styles(as_json: JsonOption = False) -> None:
    """List the prompt styles --style takes (styles.csv in EASEL_HOME, or EASEL_STYLES_FILE)."""

    def run() -> tuple[Any, list[Any]]:
        from easel.config import Settings
        from easel.styles import load_styles

        path = Settings.from_env().styles_path
        return path, list(load_styles(path).values())

    path, entries = run_door(run, debug=False)
    if as_json:
        listed = [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in entries]
        typer.echo(json.dumps({"file": str(path), "styles": listed}))
        return
    if not entries:
        typer.echo(f"no styles in {path} (an A1111 styles.csv: name,prompt,negative_prompt)")
        return
    width = max(len(style.name) for style in entries)
    for style in entries:
        negative = f"  (negative: {style.negative_prompt})" if style.negative_prompt else ""
        typer.echo(f"{style.name:<{width}}  {style.prompt}{negative}")


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
        bool,
        typer.Option(
            "--extras/--no-extras",
            help="Also measure task switching and cold start (not with --architecture).",
        ),
    ] = True,
    architecture: Annotated[
        str | None,
        typer.Option(
            help="sd15 | sdxl | flux-dev | sd35-medium | qwen-image: a published full-size architecture "
            "(with random weights; the last three in bfloat16 on a GPU)."
        ),
    ] = None,
    random_weights: Annotated[
        bool, typer.Option("--random-weights", help="Random weights for --architecture (no downloads).")
    ] = False,
    batch: Annotated[int, typer.Option(help="Images per call (1-64).")] = 1,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda | cuda:N | mps (EASEL_DEVICE).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="auto | float32 | float16 | bfloat16 (EASEL_DTYPE).")
    ] = None,
    compile_unet: Annotated[
        bool, typer.Option("--compile", help="torch.compile the UNet, on both sides (EASEL_COMPILE).")
    ] = False,
    channels_last: Annotated[
        bool, typer.Option("--channels-last", help="UNet in channels_last, on both sides.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    debug: DebugOption = False,
) -> None:
    """Time easel against a plain diffusers call (alternating rounds, medians, memory, equality).

    With --architecture sd15|sdxl|flux-dev|sd35-medium|qwen-image --random-weights: the full-size
    architectures, no downloads."""
    run_door(lambda: _check_bench_flags(architecture, random_weights, model, batch), debug=debug)

    def run() -> dict[str, Any]:
        quiet_libraries(debug)
        from easel.bench import measure_cold_start, measure_task_switching, run_benchmark
        from easel.config import Settings

        settings = Settings.from_env(
            device=device, dtype=dtype, compile=compile_unet or None, channels_last=channels_last or None
        )  # a flag not given leaves EASEL_COMPILE / EASEL_CHANNELS_LAST in charge
        options = {"prompt": prompt, "steps": steps, "width": width, "height": height, "rounds": rounds,
                   "warmup": warmup, "settings": settings, "num_images": batch}  # fmt: skip
        if architecture is not None:
            return _bench_architecture(architecture, settings, options)
        report = run_benchmark(model=model, **options).as_dict()
        if extras:
            report["task_switching"] = measure_task_switching(model, settings)
            report["cold_start"] = measure_cold_start(prompt) if model is None else None
        return report

    report = run_door(run, debug=debug)
    if as_json:
        typer.echo(json.dumps(report))
        return
    from easel.bench import render_report

    typer.echo(render_report(report))


def _check_bench_flags(architecture: str | None, random_weights: bool, model: str | None, batch: int) -> None:
    """--architecture needs --random-weights and the reverse (no trained weights can be had here)."""
    from easel.bench_architectures import ARCHITECTURES
    from easel.errors import InvalidRequest

    if not 1 <= batch <= 64:
        raise InvalidRequest(f"invalid --batch={batch}: use 1 to 64 images per call")

    if architecture is not None and architecture not in ARCHITECTURES:
        raise InvalidRequest(
            f"invalid --architecture={architecture!r}: use one of {', '.join(ARCHITECTURES)}"
        )
    if architecture is not None and not random_weights:
        raise InvalidRequest(
            f"invalid --architecture={architecture!r} without --random-weights: an architecture alone has "
            "no weights; add --random-weights (a random UNet costs what a trained one does per step)"
        )
    if random_weights and architecture is None:
        raise InvalidRequest(
            f"invalid --random-weights without --architecture: add --architecture {'|'.join(ARCHITECTURES)}"
        )
    if architecture is not None and model is not None:
        raise InvalidRequest(f"invalid --architecture={architecture!r} with --model: give one of them")


def _bench_architecture(name: str, settings: Any, options: dict[str, Any]) -> dict[str, Any]:
    """`easel bench --architecture NAME --random-weights`: refuse what cannot fit, then SD 1.5 / SDXL:
    build, save to a temporary folder, measure both sides loading it, delete it; the transformer
    architectures: build in memory, hand to easel's cache, plain diffusers around the same modules."""
    from easel.bench import run_benchmark
    from easel.bench_architectures import (
        PUBLISHED_PARAMETERS,
        TRANSFORMER_ARCHITECTURES,
        architecture,
        check_memory,
        in_memory_model,
        random_weights_model,
    )
    from easel.devices import resolve_device, resolve_dtype

    device = resolve_device(settings.device)
    if name in TRANSFORMER_ARCHITECTURES:  # dtype auto on a GPU: their families' bfloat16
        dtype = resolve_dtype(settings.dtype, device, "bfloat16")
        check_memory(name, device, dtype)
        config = architecture(name)
        with in_memory_model(config, name) as model:
            reference = config.get("reference_call")
            report = run_benchmark(
                model=str(model.folder), build=model.build, reference_call=reference, **options
            ).as_dict()
        counts = model.counts
    else:
        dtype = resolve_dtype(settings.dtype, device)
        check_memory(name, device, dtype)
        with random_weights_model(name, device, dtype) as (folder, counts):
            report = run_benchmark(model=str(folder), **options).as_dict()
    report["architecture"] = name
    report["parameters"] = counts
    report["published_parameters"] = {key: int(value) for key, value in PUBLISHED_PARAMETERS[name].items()}
    report["channels_last"] = settings.channels_last
    report["compile"] = settings.compile
    return report

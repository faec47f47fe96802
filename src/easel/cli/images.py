"""Commands about images already made: info, replay and the gallery."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from easel.cli.app import (
    DebugOption,
    EaselGroup,
    EaselTyper,
    JsonOption,
    ProgressDisplay,
    app,
    quiet_libraries,
    run_door,
)

gallery_app = EaselTyper(
    cls=EaselGroup, help="Browse, search and delete the images easel has made.", no_args_is_help=True
)
app.add_typer(gallery_app, name="gallery")


def _gallery() -> Any:
    from easel.config import Settings
    from easel.storage.gallery import Gallery

    return Gallery(Settings.from_env().home)


@app.command()
def info(
    image: Annotated[Path, typer.Argument(help="An image made by easel or another A1111-style tool.")],
    as_json: JsonOption = False,
) -> None:
    """Show what an image carries: A1111 parameters and easel's full recipe."""
    from easel.storage.metadata import read_metadata

    metadata = run_door(lambda: read_metadata(image), debug=False)
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
    as_json: JsonOption = False,
    debug: DebugOption = False,
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
        quiet_libraries(debug)
        from easel.config import Settings
        from easel.engine import Easel
        from easel.storage.gallery import Gallery
        from easel.storage.outputs import copy_image

        settings = Settings.from_env()
        gallery = None if no_gallery else Gallery(settings.home)
        parent = None if gallery is None else gallery.find_by_path(image)
        with ProgressDisplay(enabled=not as_json and sys.stderr.isatty()) as on_progress:
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

    summary = run_door(run, debug=debug)
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
    else:
        typer.echo(f"{summary['path']}  seed {summary['seed']}")


def _print_entries(entries: list[Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([entry.as_dict() for entry in entries], ensure_ascii=False, indent=2))
        return
    model_width = max([len("MODEL"), *(len(entry.model) for entry in entries)])
    seed_width = max([len("SEED"), *(len(str(entry.seed)) for entry in entries)])
    typer.echo(
        f"{'ID':<32}  {'CREATED (UTC)':<19}  {'MODEL':<{model_width}}  {'SEED':>{seed_width}}  KIND   PROMPT"
    )
    for entry in entries:
        prompt = entry.prompt if len(entry.prompt) <= 60 else entry.prompt[:57] + "..."
        typer.echo(
            f"{entry.id}  {entry.created_at[:19].replace('T', ' '):<19}  {entry.model:<{model_width}}  "
            f"{entry.seed!s:>{seed_width}}  {entry.kind:<5}  {prompt}"
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
    as_json: JsonOption = False,
) -> None:
    """List images, newest first."""
    entries = run_door(
        lambda: _gallery().list(text=text, model=model, since=since, until=until, limit=limit), debug=False
    )
    _print_entries(entries, as_json)


@gallery_app.command("search")
def gallery_search(
    text: Annotated[str, typer.Argument(help="Text in the prompt or negative prompt.")],
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Find images by prompt text."""
    _print_entries(run_door(lambda: _gallery().list(text=text, limit=limit), debug=False), as_json)


@gallery_app.command("show")
def gallery_show(
    image_id: Annotated[
        str, typer.Argument(help="Gallery id (from gallery list), or a unique start of one.")
    ],
    as_json: JsonOption = False,
) -> None:
    """Show one image's record."""
    entry = run_door(lambda: _gallery().resolve(image_id), debug=False)
    if as_json:
        typer.echo(json.dumps(entry.as_dict(), ensure_ascii=False, indent=2))
        return
    record = entry.as_dict()
    request = record.pop("request")
    for key, value in record.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        elif value is None:
            value = "-"
        typer.echo(f"{key}: {value}")
    typer.echo("request: " + json.dumps(request, ensure_ascii=False, indent=2))


@gallery_app.command("delete")
def gallery_delete(image_id: Annotated[str, typer.Argument(help="Gallery id.")]) -> None:
    """Delete an image file and its record."""
    run_door(lambda: _gallery().delete(image_id), debug=False)
    typer.echo(f"deleted {image_id}")

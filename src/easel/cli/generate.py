"""`easel generate`: text-to-image, image-to-image and ControlNet from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from easel.cli.app import (
    DebugOption,
    DeviceOption,
    DtypeOption,
    ProgressDisplay,
    ThreadsOption,
    app,
    quiet_libraries,
    run_door,
)
from easel.errors import EaselError, InvalidRequest


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
    vae: Annotated[
        str | None,
        typer.Option(
            "--vae",
            metavar="REF",
            help="VAE override: hub repo id (e.g. madebyollin/sdxl-vae-fp16-fix), folder or .safetensors "
            "file (default: the model's own VAE).",
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
    clip_skip: Annotated[
        int | None,
        typer.Option(
            "--clip-skip",
            help="Clip skip as A1111 counts it: 1 = the model's own text encoder layer, 2 = one before.",
        ),
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
    mask: Annotated[
        str | None,
        typer.Option(
            "--mask",
            help="Inpainting mask (path or URL) for --image: white = repaint, black = keep, grey = soft "
            "(a transparent PNG: its painted, opaque part is repainted).",
        ),
    ] = None,
    mask_blur: Annotated[
        int | None,
        typer.Option("--mask-blur", help="Inpainting: blur of the mask edge in pixels (default 4)."),
    ] = None,
    invert_mask: Annotated[
        bool, typer.Option("--invert-mask", help="Inpainting: repaint the black part of the mask instead.")
    ] = False,
    inpaint_area: Annotated[
        str | None,
        typer.Option(
            "--inpaint-area",
            help="Inpainting: whole (default, the whole picture) | masked (a box around the mask, worked at "
            "the model's native size and pasted back).",
        ),
    ] = None,
    inpaint_padding: Annotated[
        int | None,
        typer.Option("--inpaint-padding", help="--inpaint-area masked: pixels around the mask (default 32)."),
    ] = None,
    masked_content: Annotated[
        str | None,
        typer.Option(
            "--masked-content",
            help="Inpainting: what the masked area starts from: original (default) | fill | latent_noise | "
            "latent_nothing.",
        ),
    ] = None,
    outpaint: Annotated[
        str | None,
        typer.Option(
            "--outpaint",
            metavar="L,T,R,B",
            help="Outpainting: pixels to add on the left, top, right and bottom of --image (multiples of 8), "
            "e.g. 0,0,128,0.",
        ),
    ] = None,
    no_paste_back: Annotated[
        bool,
        typer.Option(
            "--no-paste-back",
            help="Inpainting: return the generated picture as is, instead of keeping the original pixels "
            "outside the (blurred) mask.",
        ),
    ] = False,
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
    lora: Annotated[
        list[str] | None,
        typer.Option(
            "--lora",
            metavar="NAME[:WEIGHT]",
            help="LoRA on the base model: a name in the LoRA folder (EASEL_LORA_DIR), a .safetensors path "
            "or a hub file org/repo/file.safetensors, with a weight in [-2, 2] (default 1). Repeatable.",
        ),
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
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    threads: ThreadsOption = None,
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
    debug: DebugOption = False,
) -> None:
    """Text-to-image, image-to-image with --image, inpainting with --image and --mask (or --outpaint)."""
    from easel.request import GenerationRequest

    def run() -> dict[str, Any]:
        inpainting = {
            "mask_image": mask,
            "mask_blur": mask_blur,
            "invert_mask": invert_mask or None,
            "inpaint_area": inpaint_area,
            "inpaint_padding": inpaint_padding,
            "masked_content": masked_content,
            "outpaint": None if outpaint is None else outpaint_sides(outpaint),
            "paste_back": False if no_paste_back else None,
        }
        request = GenerationRequest(
            **{name: value for name, value in inpainting.items() if value is not None},
            model=model,
            vae=vae,
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
            clip_skip=clip_skip,
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
            loras=lora_specs(lora or []),
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
        quiet_libraries(debug)
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
        with ProgressDisplay(enabled=not as_json and sys.stderr.isatty()) as on_progress:
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

    summary = run_door(lambda: naming_flags(run), debug=debug)
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


# inpainting fields -> the flags that set them (their errors name the flag)
INPAINT_FLAGS = {
    "mask_image": "--mask",
    "mask_blur": "--mask-blur",
    "invert_mask": "--invert-mask",
    "inpaint_area": "--inpaint-area",
    "inpaint_padding": "--inpaint-padding",
    "masked_content": "--masked-content",
    "outpaint": "--outpaint",
    "paste_back": "--no-paste-back",
}


# other fields whose errors name their flag (a missing --vae file is a ModelNotFound naming `vae`)
NAMED_FLAGS = {**INPAINT_FLAGS, "vae": "--vae", "clip_skip": "--clip-skip"}


def naming_flags(action: Any) -> Any:
    """Run `action`; an error about an inpainting field (or the VAE) names its flag first."""
    try:
        return action()
    except EaselError as error:
        field = getattr(error, "field", None)
        flag = NAMED_FLAGS.get(field or "") or ("--lora" if (field or "").startswith("loras[") else None)
        if flag is None or str(error).startswith(f"invalid {flag}"):
            raise
        if isinstance(error, InvalidRequest):
            raise InvalidRequest(f"{flag}: {error}", field=field, value=error.value) from None
        renamed = type(error)(f"{flag}: {error}")
        renamed.field = field  # type: ignore[attr-defined]
        raise renamed from None


def lora_specs(values: list[str]) -> list[dict[str, Any]]:
    """--lora NAME[:WEIGHT] values -> LoraSpec fields (a last `:number` is the weight, so
    paths with colons still work)."""
    specs: list[dict[str, Any]] = []
    for index, value in enumerate(values):
        name, separator, weight = value.rpartition(":")
        try:
            specs.append({"name": name, "weight": float(weight)} if separator and name else {"name": value})
        except ValueError:
            specs.append({"name": value})
        if not specs[-1]["name"].strip():
            raise InvalidRequest(
                f"invalid --lora {value!r}: use NAME or NAME:WEIGHT, e.g. my-style:0.8",
                field=f"loras[{index}].name",
                value=value,
            )
    return specs


def outpaint_sides(value: str) -> tuple[int, ...]:
    """--outpaint L,T,R,B -> (left, top, right, bottom)."""
    parts = [part.strip() for part in value.split(",")]
    if len(parts) != 4 or not all(part.isdigit() for part in parts):
        raise InvalidRequest(
            f"invalid --outpaint {value!r}: use LEFT,TOP,RIGHT,BOTTOM in pixels (multiples of 8), "
            "e.g. 0,0,128,0",
            field="outpaint",
            value=value,
        )
    return tuple(int(part) for part in parts)


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

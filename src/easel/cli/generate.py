"""`easel generate`: text-to-image, image-to-image and ControlNet from the command line."""

from __future__ import annotations

import json
import re
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

# Help panels: each is its own table, so the option column fits 80 columns.
PROMPT_PANEL = "Prompt"
MODEL_PANEL = "Model, VAE and LoRA"
SIZE_PANEL = "Size and sampling"
VARIATION_PANEL = "Variation and tiling"
HIRES_PANEL = "Hires fix"
IMG2IMG_PANEL = "Image to image and inpainting"
CONTROL_PANEL = "ControlNet (per unit: the k-th value applies to the k-th --control)"
SDXL_PANEL = "SDXL and Kandinsky"
OUTPUT_PANEL = "Output"
PERFORMANCE_PANEL = "Performance"


def _writing_previews(path: Path | None, display: Any) -> Any:
    """`display` (the progress callback), also writing each live preview to `path`."""
    if path is None:
        return display

    def on_progress(progress: Any) -> None:
        if progress.preview is not None:
            import io

            from easel.storage.files import write_atomically

            buffer = io.BytesIO()
            progress.preview.save(buffer, format="PNG")
            write_atomically(path, buffer.getvalue())
        if display is not None:
            display(progress)

    return on_progress


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Hub repo id, diffusers folder, .safetensors file, or FLUX.1 / SD 3.5 transformer file "
            "(.gguf or .safetensors, with --base) "
            "(default: bundled demo model).",
            rich_help_panel=MODEL_PANEL,
        ),
    ] = None,
    vae: Annotated[
        str | None,
        typer.Option(
            "--vae",
            metavar="REF",
            help="VAE override: hub repo id, folder or .safetensors file (default: the model's own).",
            rich_help_panel=MODEL_PANEL,
        ),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            metavar="REF",
            help="With a transformer file as --model (.gguf, or a FLUX.1 / SD 3.5 transformer .safetensors): "
            "the diffusers repo id or folder the rest of the pipeline comes from (default: inferred from "
            "the file, e.g. black-forest-labs/FLUX.1-dev).",
            rich_help_panel=MODEL_PANEL,
        ),
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            "--quantize",
            metavar="KIND",
            help="Load the denoiser and big text encoders quantised: none | int8 | nf4 (bitsandbytes, "
            "CUDA) | torchao-int8 | torchao-fp8 (env EASEL_QUANTIZE; recorded for replay).",
            rich_help_panel=PERFORMANCE_PANEL,
        ),
    ] = None,
    negative: Annotated[
        str, typer.Option("--negative", "-n", help="Negative prompt.", rich_help_panel=PROMPT_PANEL)
    ] = "",
    style: Annotated[
        list[str] | None,
        typer.Option(
            "--style",
            metavar="NAME",
            help="Style from styles.csv (list: easel styles), merged into the prompts; repeatable.",
            rich_help_panel=PROMPT_PANEL,
        ),
    ] = None,
    syntax: Annotated[
        str,
        typer.Option(
            "--syntax", help="Prompt weighting syntax: compel, a1111 or plain.", rich_help_panel=PROMPT_PANEL
        ),
    ] = "compel",
    width: Annotated[
        int | None,
        typer.Option(
            help="A multiple of 8 (default: the model's native size, or the init image's).",
            rich_help_panel=SIZE_PANEL,
        ),
    ] = None,
    height: Annotated[int | None, typer.Option(help="A multiple of 8.", rich_help_panel=SIZE_PANEL)] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            help="Denoising steps (default: per model family, 50 for SD 1.5).", rich_help_panel=SIZE_PANEL
        ),
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            "--guidance", "-g", help="Guidance scale (default 7.5 for SD 1.5).", rich_help_panel=SIZE_PANEL
        ),
    ] = None,
    true_cfg: Annotated[
        float | None,
        typer.Option(
            "--true-cfg",
            help="FLUX.1 only: real classifier-free guidance against --negative (above 1; two transformer "
            "passes a step); --guidance stays FLUX.1-dev's distilled guidance.",
            rich_help_panel=SIZE_PANEL,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the first image; image i uses seed+i (default: random).", rich_help_panel=SIZE_PANEL
        ),
    ] = None,
    num_images: Annotated[
        int, typer.Option("--num-images", "-N", help="Number of images.", rich_help_panel=SIZE_PANEL)
    ] = 1,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="A1111 sampler, optionally with a schedule type ('DPM++ 2M Karras'), or a diffusers "
            "class name (list: easel schedulers).",
            rich_help_panel=SIZE_PANEL,
        ),
    ] = None,
    eta: Annotated[
        float | None,
        typer.Option(
            "--eta", help="DDIM's eta, 0 (default) to 1; needs --scheduler DDIM.", rich_help_panel=SIZE_PANEL
        ),
    ] = None,
    clip_skip: Annotated[
        int | None,
        typer.Option(
            "--clip-skip",
            help="As A1111 counts it: 1 = the model's own text encoder layer, 2 = one before.",
            rich_help_panel=SIZE_PANEL,
        ),
    ] = None,
    variation_seed: Annotated[
        int | None,
        typer.Option(
            "--variation-seed",
            help="Seed whose noise is blended in (A1111's subseed); image i uses it+i. -1 or omitted "
            "with --variation-strength: random.",
            rich_help_panel=VARIATION_PANEL,
        ),
    ] = None,
    variation_strength: Annotated[
        float | None,
        typer.Option(
            "--variation-strength",
            help="How much of the variation seed's noise: 0 (default) to 1.",
            rich_help_panel=VARIATION_PANEL,
        ),
    ] = None,
    seed_resize_from: Annotated[
        str | None,
        typer.Option(
            "--seed-resize-from",
            metavar="WxH",
            help="Draw the seed's noise at this size, keeping the composition it gives there (e.g. 512x512).",
            rich_help_panel=VARIATION_PANEL,
        ),
    ] = None,
    tiling: Annotated[
        bool,
        typer.Option(
            "--tiling",
            help="Seamless tiling: the image's edges continue each other.",
            rich_help_panel=VARIATION_PANEL,
        ),
    ] = False,
    hires: Annotated[
        float | None,
        typer.Option(
            "--hires",
            metavar="SCALE",
            help="Upscale the first pass by SCALE (e.g. 2) and denoise it again.",
            rich_help_panel=HIRES_PANEL,
        ),
    ] = None,
    hires_size: Annotated[
        str | None,
        typer.Option(
            "--hires-size",
            metavar="WxH",
            help="Upscale to this size instead (a side 0: it follows the aspect ratio).",
            rich_help_panel=HIRES_PANEL,
        ),
    ] = None,
    hires_steps: Annotated[
        int | None,
        typer.Option(
            "--hires-steps", help="Second-pass steps (default: --steps).", rich_help_panel=HIRES_PANEL
        ),
    ] = None,
    hires_strength: Annotated[
        float | None,
        typer.Option(
            "--hires-strength",
            help="Second-pass denoising strength (default 0.7).",
            rich_help_panel=HIRES_PANEL,
        ),
    ] = None,
    upscaler: Annotated[
        str | None,
        typer.Option(
            "--upscaler",
            help="Latent (default), 'Latent (bicubic)', ..., None, Lanczos, Nearest, or a model file "
            "(list: easel upscalers).",
            rich_help_panel=HIRES_PANEL,
        ),
    ] = None,
    hires_prompt: Annotated[
        str | None,
        typer.Option(
            "--hires-prompt", help="Second-pass prompt (default: PROMPT).", rich_help_panel=HIRES_PANEL
        ),
    ] = None,
    hires_negative_prompt: Annotated[
        str | None,
        typer.Option(
            "--hires-negative-prompt", help="Second-pass negative prompt.", rich_help_panel=HIRES_PANEL
        ),
    ] = None,
    hires_scheduler: Annotated[
        str | None,
        typer.Option("--hires-scheduler", help="Second-pass scheduler.", rich_help_panel=HIRES_PANEL),
    ] = None,
    hires_guidance: Annotated[
        float | None,
        typer.Option("--hires-guidance", help="Second-pass guidance scale.", rich_help_panel=HIRES_PANEL),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image", "-i", help="Init image (path or URL): image-to-image.", rich_help_panel=IMG2IMG_PANEL
        ),
    ] = None,
    edit: Annotated[
        list[str] | None,
        typer.Option(
            "--edit",
            metavar="IMAGE",
            help="Reference image (path or URL) to change as the prompt says: instruction editing "
            "(FLUX.1 Kontext, FLUX.2 [klein], Qwen-Image-Edit); repeatable where the model takes several "
            "(klein: up to 4, Qwen-Image-Edit-2509: up to 3).",
            rich_help_panel=IMG2IMG_PANEL,
        ),
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(
            help="How much of --image to change, 0 to 1 (default 0.8); steps run = steps x strength.",
            rich_help_panel=IMG2IMG_PANEL,
        ),
    ] = None,
    mask: Annotated[
        str | None,
        typer.Option(
            "--mask",
            help="Inpainting mask for --image (path or URL): white = repaint, black = keep, grey = "
            "soft; of a transparent PNG, the opaque part is repainted.",
            rich_help_panel=IMG2IMG_PANEL,
        ),
    ] = None,
    mask_blur: Annotated[
        int | None,
        typer.Option(
            "--mask-blur", help="Blur of the mask edge in pixels (default 4).", rich_help_panel=IMG2IMG_PANEL
        ),
    ] = None,
    invert_mask: Annotated[
        bool,
        typer.Option(
            "--invert-mask", help="Repaint the black part of the mask instead.", rich_help_panel=IMG2IMG_PANEL
        ),
    ] = False,
    inpaint_area: Annotated[
        str | None,
        typer.Option(
            "--inpaint-area",
            help="whole (default) | masked: a box around the mask, worked at the model's native size "
            "and pasted back.",
            rich_help_panel=IMG2IMG_PANEL,
        ),
    ] = None,
    inpaint_padding: Annotated[
        int | None,
        typer.Option(
            "--inpaint-padding",
            help="Pixels around the mask for --inpaint-area masked (default 32).",
            rich_help_panel=IMG2IMG_PANEL,
        ),
    ] = None,
    masked_content: Annotated[
        str | None,
        typer.Option(
            "--masked-content",
            help="What the masked area starts from: original (default) | fill | latent_noise | "
            "latent_nothing.",
            rich_help_panel=IMG2IMG_PANEL,
        ),
    ] = None,
    outpaint: Annotated[
        str | None,
        typer.Option(
            "--outpaint",
            metavar="L,T,R,B",
            help="Pixels to add left, top, right and bottom of --image (multiples of 8), e.g. 0,0,128,0.",
            rich_help_panel=IMG2IMG_PANEL,
        ),
    ] = None,
    no_paste_back: Annotated[
        bool,
        typer.Option(
            "--no-paste-back",
            help="Return the picture as generated, instead of keeping the original pixels outside the "
            "(blurred) mask.",
            rich_help_panel=IMG2IMG_PANEL,
        ),
    ] = False,
    refiner: Annotated[
        str | None,
        typer.Option(
            help="SDXL refiner model that finishes the base's denoising in latent space.",
            rich_help_panel=SDXL_PANEL,
        ),
    ] = None,
    refiner_at: Annotated[
        float | None,
        typer.Option(
            help="Share of the denoising the SDXL base does, in (0, 1) (default 0.8).",
            rich_help_panel=SDXL_PANEL,
        ),
    ] = None,
    aesthetic_score: Annotated[
        float | None,
        typer.Option(help="SDXL refiner: aesthetic score (default 6.0).", rich_help_panel=SDXL_PANEL),
    ] = None,
    negative_aesthetic_score: Annotated[
        float | None,
        typer.Option(
            help="SDXL refiner: negative aesthetic score (default 2.5).", rich_help_panel=SDXL_PANEL
        ),
    ] = None,
    original_size: Annotated[
        tuple[int, int] | None,
        typer.Option(
            metavar="HEIGHT WIDTH",
            help="SDXL micro-conditioning: size of the 'original' image.",
            rich_help_panel=SDXL_PANEL,
        ),
    ] = None,
    target_size: Annotated[
        tuple[int, int] | None,
        typer.Option(
            metavar="HEIGHT WIDTH", help="SDXL micro-conditioning: target size.", rich_help_panel=SDXL_PANEL
        ),
    ] = None,
    crops_coords_top_left: Annotated[
        tuple[int, int] | None,
        typer.Option(
            metavar="TOP LEFT",
            help="SDXL micro-conditioning: crop corner (0 0: centred).",
            rich_help_panel=SDXL_PANEL,
        ),
    ] = None,
    prior: Annotated[
        str | None,
        typer.Option(
            help="Kandinsky 2.2 prior model (default: the one the model card names).",
            rich_help_panel=SDXL_PANEL,
        ),
    ] = None,
    prior_steps: Annotated[
        int | None, typer.Option(help="Kandinsky 2.2 prior steps (default 25).", rich_help_panel=SDXL_PANEL)
    ] = None,
    prior_guidance: Annotated[
        float | None,
        typer.Option(help="Kandinsky 2.2 prior guidance scale (default 4.0).", rich_help_panel=SDXL_PANEL),
    ] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            "--lora",
            metavar="NAME[:WEIGHT]",
            help="LoRA: a name in EASEL_LORA_DIR, a .safetensors path or org/repo/file.safetensors, "
            "weight in [-2, 2] (default 1). Repeatable.",
            rich_help_panel=MODEL_PANEL,
        ),
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(
            "--control",
            metavar="MODEL=IMAGE",
            help="ControlNet unit: model (repo id, folder, .safetensors or 'demo') = image (path or "
            "URL); repeatable.",
            rich_help_panel=CONTROL_PANEL,
        ),
    ] = None,
    control_scale: Annotated[
        list[float] | None,
        typer.Option(
            "--control-scale",
            metavar="SCALE",
            help="Conditioning scale in [0, 2] (default 1).",
            rich_help_panel=CONTROL_PANEL,
        ),
    ] = None,
    control_start: Annotated[
        list[float] | None,
        typer.Option(
            "--control-start",
            metavar="FRACTION",
            help="Fraction of the steps where the unit starts (default 0).",
            rich_help_panel=CONTROL_PANEL,
        ),
    ] = None,
    control_end: Annotated[
        list[float] | None,
        typer.Option(
            "--control-end",
            metavar="FRACTION",
            help="Fraction of the steps where the unit stops (default 1).",
            rich_help_panel=CONTROL_PANEL,
        ),
    ] = None,
    preprocess: Annotated[
        list[str] | None,
        typer.Option(
            "--preprocess",
            metavar="NAME",
            help="none (the image already is the map) | canny | openpose | depth | hed | lineart | mlsd "
            "| normalbae (detectors need: pip install 'easel\\[detectors]').",
            rich_help_panel=CONTROL_PANEL,
        ),
    ] = None,
    canny_low: Annotated[
        list[int] | None,
        typer.Option(
            "--canny-low",
            metavar="N",
            help="Canny lower threshold (default 100).",
            rich_help_panel=CONTROL_PANEL,
        ),
    ] = None,
    canny_high: Annotated[
        list[int] | None,
        typer.Option(
            "--canny-high",
            metavar="N",
            help="Canny upper threshold (default 200).",
            rich_help_panel=CONTROL_PANEL,
        ),
    ] = None,
    control_mode: Annotated[
        list[str] | None,
        typer.Option(
            "--control-mode",
            metavar="TYPE",
            help="Union ControlNets (FLUX.1 union) only: the control type, a name (canny, tile, depth, "
            "blur, pose, gray, lq) or an index.",
            rich_help_panel=CONTROL_PANEL,
        ),
    ] = None,
    save_control: Annotated[
        bool,
        typer.Option(
            "--save-control",
            help="Also write each processed control image (NAME-control-K.png).",
            rich_help_panel=CONTROL_PANEL,
        ),
    ] = False,
    grid: Annotated[
        bool,
        typer.Option(
            "--grid",
            help="Also write one grid image of all outputs (init image first).",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ] = False,
    no_gallery: Annotated[
        bool,
        typer.Option(
            "--no-gallery",
            help="Do not keep the images in the gallery (EASEL_HOME).",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ] = False,
    no_safety_checker: Annotated[
        bool,
        typer.Option(
            "--no-safety-checker", help="Do not run the model's safety checker.", rich_help_panel=OUTPUT_PANEL
        ),
    ] = False,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Allow .ckpt/.bin/.pt checkpoints (they can run code when loaded).",
            rich_help_panel=MODEL_PANEL,
        ),
    ] = False,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    threads: ThreadsOption = None,
    attention: Annotated[
        str | None,
        typer.Option(
            help="sdpa | xformers | slicing | default (env EASEL_ATTENTION).",
            rich_help_panel=PERFORMANCE_PANEL,
        ),
    ] = None,
    compile_unet: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the UNet (env EASEL_COMPILE).",
            rich_help_panel=PERFORMANCE_PANEL,
        ),
    ] = None,
    offload: Annotated[
        str | None,
        typer.Option(
            help="CPU offload: none | model | sequential (needs a GPU; env EASEL_OFFLOAD).",
            rich_help_panel=PERFORMANCE_PANEL,
        ),
    ] = None,
    vae_slicing: Annotated[
        bool | None,
        typer.Option(
            "--vae-slicing/--no-vae-slicing",
            help="Decode a batch one image at a time.",
            rich_help_panel=PERFORMANCE_PANEL,
        ),
    ] = None,
    vae_tiling: Annotated[
        bool | None,
        typer.Option(
            "--vae-tiling/--no-vae-tiling",
            help="Decode large images in tiles.",
            rich_help_panel=PERFORMANCE_PANEL,
        ),
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last/--no-channels-last",
            help="channels_last UNet memory format.",
            rich_help_panel=PERFORMANCE_PANEL,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Also write the image here (.png/.jpg/.webp); several images get -0, -1, ... suffixes.",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object instead of progress and paths.",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ] = False,
    preview_file: Annotated[
        Path | None,
        typer.Option(
            "--preview-file",
            help="While it runs, keep a live preview of the first image here (PNG, replaced atomically).",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ] = None,
    preview_every: Annotated[
        int | None,
        typer.Option(
            "--preview-every",
            help="With --preview-file: a preview every N steps (env EASEL_PREVIEW_EVERY, 5).",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Text-to-image, image-to-image with --image, inpainting with --image and --mask (or --outpaint)."""
    from easel.request import GenerationRequest

    def run() -> dict[str, Any]:
        if strength is not None and image is None:
            raise InvalidRequest(
                f"invalid --strength={strength!r}: it is for image-to-image; give --image too",
                field="strength",
                value=strength,
            )
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
            base_model=base,
            quantize=quantize,
            prompt=prompt,
            negative_prompt=negative,
            prompt_syntax=syntax,
            width=width,
            height=height,
            steps=steps,
            guidance_scale=guidance,
            true_cfg_scale=true_cfg,
            seed=seed,
            num_images=num_images,
            scheduler=scheduler,
            eta=eta,
            styles=list(style or []),
            clip_skip=clip_skip,
            variation_seed=variation_seed,
            variation_strength=0.0 if variation_strength is None else variation_strength,
            seed_resize_from=None if seed_resize_from is None else size_pair(seed_resize_from),
            tiling=tiling,
            hires=hires_fields(
                hires,
                hires_size,
                {
                    "steps": ("--hires-steps", hires_steps),
                    "strength": ("--hires-strength", hires_strength),
                    "upscaler": ("--upscaler", upscaler),
                    "prompt": ("--hires-prompt", hires_prompt),
                    "negative_prompt": ("--hires-negative-prompt", hires_negative_prompt),
                    "scheduler": ("--hires-scheduler", hires_scheduler),
                    "guidance_scale": ("--hires-guidance", hires_guidance),
                },
            ),
            init_image=image,
            reference_images=list(edit or []),
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
                    "mode": ("--control-mode", [int(v) if v.isdigit() else v for v in control_mode or []]),
                },
            ),
        )
        if output is not None and output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
            raise InvalidRequest(
                f"invalid --output={str(output)!r}: use a .png, .jpg or .webp file name", field="output"
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
        if preview_every is not None and preview_file is None:
            raise InvalidRequest("--preview-every needs --preview-file (where to write the previews)",
                                 field="preview_every")  # fmt: skip
        previews = None if preview_file is None else (preview_every if preview_every is not None
                                                      else settings.preview_every)  # fmt: skip
        with ProgressDisplay(enabled=not as_json and sys.stderr.isatty()) as on_progress:
            result = engine.generate(
                request, on_progress=_writing_previews(preview_file, on_progress), previews=previews
            )
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

    typed = {
        "--lora": lora, "--style": style, "--control": control, "--control-scale": control_scale,
        "--control-start": control_start, "--control-end": control_end, "--preprocess": preprocess,
        "--canny-low": canny_low, "--canny-high": canny_high, "--control-mode": control_mode,
    }  # fmt: skip
    summary = run_door(lambda: naming_flags(run, {k: v or [] for k, v in typed.items()}), debug=debug)
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
    size = f"{summary['request']['width']}x{summary['request']['height']}"
    if summary["request"].get("hires"):  # the hires fix: first pass -> the size it made
        from easel.request import HiresFix

        target = HiresFix(**summary["request"]["hires"]).target_size(
            summary["request"]["width"], summary["request"]["height"]
        )
        size += f" -> {target[0]}x{target[1]} (hires fix)"
    typer.echo(
        f"{summary['effective_steps']} steps run, "
        f"{size}, "
        f"{summary['timings']['total_s']:.1f} s (loading {summary['timings']['load_s']:.1f} s, "
        f"generating {summary['timings']['generate_s']:.1f} s)",
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
NAMED_FLAGS = {**INPAINT_FLAGS, "vae": "--vae", "clip_skip": "--clip-skip", "eta": "--eta"}
NAMED_FLAGS.update({"base_model": "--base", "quantize": "--quantize"})  # models/quantize.py
NAMED_FLAGS.update({
    "variation_seed": "--variation-seed", "variation_strength": "--variation-strength",
    "seed_resize_from": "--seed-resize-from", "tiling": "--tiling",
})  # fmt: skip
# every other GenerationRequest field that a flag sets (tests/test_cli_help.py checks the list)
NAMED_FLAGS.update({
    "model": "--model", "prompt": "PROMPT", "negative_prompt": "--negative", "styles": "--style",
    "prompt_syntax": "--syntax", "width": "--width", "height": "--height", "steps": "--steps",
    "guidance_scale": "--guidance", "true_cfg_scale": "--true-cfg", "seed": "--seed",
    "num_images": "--num-images",
    "scheduler": "--scheduler", "init_image": "--image", "strength": "--strength",
    "reference_images": "--edit",
    "safety_checker": "--no-safety-checker", "controls": "--control", "loras": "--lora",
    "refiner": "--refiner", "refiner_at": "--refiner-at", "aesthetic_score": "--aesthetic-score",
    "negative_aesthetic_score": "--negative-aesthetic-score", "original_size": "--original-size",
    "target_size": "--target-size", "crops_coords_top_left": "--crops-coords-top-left",
    "prior": "--prior", "prior_steps": "--prior-steps", "prior_guidance_scale": "--prior-guidance",
})  # fmt: skip
# a ControlNet unit's fields -> the per-unit flags; a LoRA's name and weight are one --lora
CONTROL_FLAGS = {
    "model": "--control", "image": "--control", "conditioning_scale": "--control-scale",
    "guidance_start": "--control-start", "guidance_end": "--control-end", "preprocessor": "--preprocess",
    "canny_low": "--canny-low", "canny_high": "--canny-high", "mode": "--control-mode",
}  # fmt: skip


HIRES_FLAGS = {
    "hires": "--hires", "hires.scale": "--hires", "hires.width": "--hires-size",
    "hires.height": "--hires-size",
    "hires.steps": "--hires-steps", "hires.strength": "--hires-strength", "hires.upscaler": "--upscaler",
    "hires.prompt": "--hires-prompt", "hires.negative_prompt": "--hires-negative-prompt",
    "hires.scheduler": "--hires-scheduler", "hires.guidance_scale": "--hires-guidance",
}  # fmt: skip
NAMED_FLAGS.update(HIRES_FLAGS)


def hires_fields(
    scale: float | None, size: str | None, options: dict[str, tuple[str, Any]]
) -> dict[str, Any] | None:
    """--hires SCALE or --hires-size WxH, with the other --hires-* options, -> the request's
    `hires`; a --hires-* option without either is refused naming it (it would do nothing)."""
    given = {name: value for name, (_, value) in options.items() if value is not None}
    if scale is None and size is None:
        for name, (flag, value) in options.items():
            if value is not None:
                raise InvalidRequest(
                    f"invalid {flag}={value!r}: it sets the hires fix; give --hires SCALE (or --hires-size)",
                    field=f"hires.{name}",
                    value=value,
                )
        return None
    if size is None:
        return {"scale": scale, **given}
    width, separator, height = size.strip().lower().partition("x")
    if not separator or not width.strip().isdigit() or not height.strip().isdigit() or width == height == "0":
        raise InvalidRequest(
            f"invalid --hires-size={size!r}: expected WIDTHxHEIGHT, e.g. 1024x768 (0 for one side: it "
            "follows the aspect ratio)",
            field="hires.width",
            value=size,
        )
    if scale is not None:
        raise InvalidRequest(
            f"invalid --hires-size={size!r}: give either --hires SCALE or --hires-size, not both",
            field="hires.width",
            value=size,
        )
    return {"width": int(width) or None, "height": int(height) or None, **given}


def size_pair(text: str) -> tuple[int, int]:
    """--seed-resize-from WxH -> (width, height); anything else is refused naming the flag (the
    request checks the sides)."""
    width, separator, height = text.strip().lower().partition("x")
    if not separator or not width.strip().isdigit() or not height.strip().isdigit():
        raise InvalidRequest(
            f"invalid --seed-resize-from={text!r}: expected WIDTHxHEIGHT, e.g. 512x512",
            field="seed_resize_from",
            value=text,
        )
    return int(width), int(height)


def naming_flags(action: Any, typed: dict[str, list[Any]] | None = None) -> Any:
    """Run `action`; an error about a request field is told in the flags the user typed:
    `invalid guidance_scale=-1.0: ...` becomes `invalid --guidance=-1.0: ...`.

    `typed` holds the repeatable flags' values as given (--lora 'peft:3'), so an error about
    `loras[0].weight` shows 'peft:3' rather than 3.0; a field without a flag stays as is."""
    try:
        return action()
    except EaselError as error:
        field = getattr(error, "field", None) or ""
        message = str(error)
        flag, value, where = flag_for(field, typed or {})
        if flag is None:
            if field == "request" and isinstance(error, InvalidRequest):  # a check across fields
                from easel.request import shown_value

                prefix = f"invalid request={shown_value(error.value)}: "
                if message.startswith(prefix):
                    raise InvalidRequest(flag_words(message[len(prefix) :]), field=field) from None
            raise
        if message.startswith(f"invalid {flag}"):
            raise
        reason = None
        if message.startswith(f"invalid {field}="):
            from easel.request import shown_value

            shown, given = message[len(f"invalid {field}=") :], getattr(error, "value", None)
            for candidate in (shown_value(given), repr(given)):
                if shown.startswith(f"{candidate}: "):
                    reason = shown[len(candidate) + 2 :]
                    break
            else:
                reason = shown.partition(": ")[2] or None
        if reason is None:  # told otherwise ("vae: no such file ..."): name the flag first
            text = f"{flag}: {flag_words(message.removeprefix(f'{field}: '))}"
        else:
            if value is None:
                value = getattr(error, "value", None)
            from easel.request import shown_value

            text = f"invalid {flag}={shown_value(value)}{where}: {flag_words(reason)}"
        if isinstance(error, InvalidRequest):
            raise InvalidRequest(text, field=field or None, value=getattr(error, "value", None)) from None
        renamed = type(error)(text)
        renamed.field = field or None  # type: ignore[attr-defined]
        raise renamed from None


def flag_for(field: str, typed: dict[str, list[Any]]) -> tuple[str | None, Any, str]:
    """A request field -> (the flag that sets it, the value as typed or None, where: " (unit
    0)" for a ControlNet unit, " (weight)" for part of a --lora value)."""
    if field in NAMED_FLAGS:
        return NAMED_FLAGS[field], None, ""
    match = re.fullmatch(r"(controls|loras|styles|reference_images)\[(\d+)\](?:\.(\w+))?", field)
    if match is None:
        return None, None, ""
    kind, index, part = match.group(1), int(match.group(2)), match.group(3)
    if kind == "controls":
        flag = CONTROL_FLAGS.get(part or "model", "--control")
        where = f" (unit {index})"
    else:
        flag = {"loras": "--lora", "styles": "--style", "reference_images": "--edit"}[kind]
        where = f" ({part})" if part and part != "name" else ""
    given = typed.get(flag) or []
    return flag, given[index] if index < len(given) else None, where


def flag_words(text: str) -> str:
    """Field names with an underscore in an error's reason -> their flags ("give init_image
    too" -> "give --image too"); plain words (steps, model) are left alone."""
    for name, flag in {**NAMED_FLAGS, **CONTROL_FLAGS}.items():
        if "_" in name and "." not in name:
            text = re.sub(rf"(?<![\w.\[-]){name}(?![\w\]])", flag, text)
    return text


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

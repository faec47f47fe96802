"""Measure what the demo model does: `python -m easel.demo.evaluate [--model DIR]`.

Why plain diffusers pipelines (StableDiffusionPipeline.from_pretrained, .from_pipe for img2img
and ControlNet) with CPU torch.Generator seeds: the figures must describe exactly what easel
runs, not a private sampling loop. Images are read back with easel.demo.shapes.read_scene:
background = dominant palette colour of the image, shape = dominant other colour inside.

The (prompt, seed) pairs are drawn from seeds that training never uses (training draws its
data from its own seed streams and probes with seed 12345), so they are held out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from easel.demo import demo_controlnet_path, demo_model_path, quality, shapes

EVAL_SEED = 20_261_125
STEPS = 25
INPAINT_CASES = 48
LORA_CASES = 48
EMPHASIS_CASES = 48
DEMO_LORA = "easel-demo-outline"


def load_pipeline(model: Path | None = None) -> Any:
    """The text-to-image pipeline exactly as a user would load the folder."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model or demo_model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def held_out_scenes(count: int, seed: int = EVAL_SEED) -> list[shapes.Scene]:
    """`count` scenes (colours, shape, geometry) drawn from a seed training never uses."""
    rng = np.random.default_rng(seed)
    return [shapes.random_scene(rng) for _ in range(count)]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pipeline output_type="np" floats in [0, 1] -> uint8."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def generate(pipe: Any, prompts: list[str], seeds: list[int], chunk: int = 16, **kwargs: Any) -> np.ndarray:
    """Run `pipe` on prompts with one CPU generator per image; returns uint8 (N,H,W,3)."""
    import torch

    kwargs.setdefault("num_inference_steps", STEPS)
    out = []
    for start in range(0, len(prompts), chunk):
        part = slice(start, start + chunk)
        generators = [torch.Generator().manual_seed(s) for s in seeds[part]]
        extra = dict(kwargs)
        for key in ("negative_prompt", "image", "control_image"):
            if isinstance(extra.get(key), list):
                extra[key] = extra[key][part]
        with torch.no_grad():
            images = pipe(prompts[part], generator=generators, output_type="np", **extra).images
        out.append(to_uint8(images))
    return np.concatenate(out)


def adherence(
    pipe: Any,
    scenes: list[shapes.Scene],
    seeds: list[int],
    guidance: float,
    template: str | None = shapes.TEMPLATES[0],
    **kwargs: Any,
) -> dict[str, float]:
    """Fractions of images whose shape colour / background colour / shape kind match the prompt.

    template None: each pair gets a phrasing from shapes.TEMPLATES (chosen by its seed).
    """
    prompts = [
        s.caption(template if template else shapes.TEMPLATES[seed % len(shapes.TEMPLATES)])
        for s, seed in zip(scenes, seeds, strict=True)
    ]
    images = generate(pipe, prompts, seeds, guidance_scale=guidance, **kwargs)
    read = [shapes.read_scene(image) for image in images]
    pairs = list(zip(read, scenes, strict=True))
    shape_ok = np.array([r["shape_color"] == s.color for r, s in pairs])
    background_ok = np.array([r["background"] == s.background for r, s in pairs])
    return {
        "shape_color": float(shape_ok.mean()),
        "background": float(background_ok.mean()),
        "both": float((shape_ok & background_ok).mean()),
        "shape_kind": float(np.mean([r["shape"] == s.shape for r, s in pairs])),
    }


def red_fraction(images: np.ndarray) -> float:
    """Mean fraction of pixels whose nearest palette colour is red."""
    red = list(shapes.COLORS).index("red")
    return float(np.mean([(shapes.nearest_color_labels(im) == red).mean() for im in images]))


def negative_prompt_effect(pipe: Any, count: int, guidance: float = 7.5) -> dict[str, float]:
    """Red coverage with and without negative prompt "red", on prompts that leave red possible.

    Prompts name the shape and a non-red background but not the shape's colour, so the model
    is free to draw a red shape; the negative prompt should make that rarer.
    """
    rng = np.random.default_rng(EVAL_SEED + 1)
    backgrounds = [c for c in shapes.COLORS if c != "red"]
    prompts = [
        f"a {shapes.SHAPES[int(rng.integers(3))]} on a "
        f"{backgrounds[int(rng.integers(len(backgrounds)))]} background"
        for _ in range(count)
    ]
    seeds = [EVAL_SEED + 1000 + i for i in range(count)]
    plain = generate(pipe, prompts, seeds, guidance_scale=guidance)
    negative = generate(pipe, prompts, seeds, guidance_scale=guidance, negative_prompt=["red"] * count)
    red_prompt = ["a red circle on a blue background"] * count
    plain_red = generate(pipe, red_prompt, seeds, guidance_scale=guidance)
    negative_red = generate(pipe, red_prompt, seeds, guidance_scale=guidance, negative_prompt=["red"] * count)
    return {
        "red_without_negative": red_fraction(plain),
        "red_with_negative": red_fraction(negative),
        "red_prompt_without_negative": red_fraction(plain_red),
        "red_prompt_with_negative": red_fraction(negative_red),
    }


def img2img_distances(
    pipe: Any, count: int, strengths: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 0.9), guidance: float = 7.5
) -> dict[str, float]:
    """Mean absolute pixel distance (0..1) between init image and result, per strength.

    The init image is a drawn scene; the prompt asks for other colours, so a stronger
    img2img must move further from the init image.
    """
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    inits = held_out_scenes(count, EVAL_SEED + 2)
    targets = held_out_scenes(count, EVAL_SEED + 3)
    init_images = [shapes.draw_scene(s) for s in inits]
    init_array = np.stack([np.asarray(im) for im in init_images]).astype(np.float32)
    prompts = [t.caption() for t in targets]
    seeds = [EVAL_SEED + 2000 + i for i in range(count)]
    result = {}
    for strength in strengths:
        images = generate(
            img2img, prompts, seeds, guidance_scale=guidance, image=list(init_images), strength=strength
        )
        result[f"{strength:g}"] = float(np.abs(images.astype(np.float32) - init_array).mean() / 255)
    return result


def image_quality(
    pipe: Any, scenes: list[shapes.Scene], seeds: list[int], guidance: float = 7.5
) -> dict[str, Any]:
    """Specks, stray shapes and palette error (easel.demo.quality) of generated images, beside
    the same measures of the VAE's reconstructions of the clean renders (the decoder alone) and
    the mean background error per background colour (where "white came out pink" shows)."""
    import torch

    images = generate(pipe, [s.caption() for s in scenes], seeds, guidance_scale=guidance)
    clean = np.stack([np.asarray(shapes.draw_scene(s)) for s in scenes])
    with torch.no_grad():
        latents = pipe.vae.encode(torch.from_numpy(clean).permute(0, 3, 1, 2).float() / 127.5 - 1)
        decoded = pipe.vae.decode(latents.latent_dist.mean).sample
    reconstructions = to_uint8((decoded.permute(0, 2, 3, 1).numpy() + 1) / 2)
    by_colour = {}
    for colour in shapes.COLORS:
        chosen = [i for i, s in enumerate(scenes) if s.background == colour]
        if chosen:
            errors = [quality.measure(images[i]).background_error for i in chosen]
            by_colour[colour] = round(float(np.mean(errors)), 2)
    return {
        "generated": quality.summarize(images),
        "vae_reconstruction": quality.summarize(reconstructions),
        "background_error_by_colour": by_colour,
    }


def emphasis(model: str | None, count: int, guidance: float = 7.5) -> dict[str, float]:
    """Compel weighting through easel (`Easel.generate`, prompt_syntax "compel"): prompts name two
    colours for the shape (`a red blue circle on a white background`); `red++` (1.21) or `blue++`
    should decide which one is drawn. Shares of images whose shape colour is the weighted word,
    for `++` and A1111's `(word:1.5)`; and, weighting down, shares drawing the colour that was NOT
    weighted down, for Compel's `--` (0.81) and A1111's `(word:0.5)` (Compel weights below 1 blend
    in the prompt encoded with the word masked, so they reach the later tokens that a causal text
    encoder mixes each word into; weights above 1 scale the word's own vectors only);
    `plain_first` / `plain_second`: the unweighted prompt's shares drawing the first- / second-named
    colour; `pixels_changed`: mean share of pixels whose palette colour a `++` changes against the
    plain prompt (same seed)."""
    from easel import Easel, GenerationRequest

    engine = Easel()
    rng = np.random.default_rng(EVAL_SEED + 8)
    names = list(shapes.COLORS)

    def shape_colour(prompt: str, seed: int, syntax: str) -> tuple[str | None, np.ndarray]:
        result = engine.generate(
            GenerationRequest(
                model=model, prompt=prompt, prompt_syntax=syntax, steps=STEPS, guidance_scale=guidance,
                seed=seed,
            )
        )  # fmt: skip
        image = np.asarray(result.images[0].convert("RGB"))
        return shapes.read_scene(image)["shape_color"], image  # type: ignore[return-value]

    keys = ("plus_plus", "a1111_1.5", "minus_minus", "a1111_0.5", "plain_first", "plain_second")
    hits: dict[str, list[bool]] = {key: [] for key in keys}
    changed = []
    for index in range(count):
        first, second, background = (str(c) for c in rng.choice(names, 3, replace=False))
        shape = shapes.SHAPES[index % len(shapes.SHAPES)]
        seed = EVAL_SEED + 6000 + index
        plain, plain_image = shape_colour(
            f"a {first} {second} {shape} on a {background} background", seed, "compel"
        )
        hits["plain_first"].append(plain == first)
        hits["plain_second"].append(plain == second)
        for weighted, other in ((first, second), (second, first)):
            variants = (  # (measure, syntax, the weighted word as written, the colour that should win)
                ("plus_plus", "compel", f"{weighted}++", weighted),
                ("a1111_1.5", "a1111", f"({weighted}:1.5)", weighted),
                ("minus_minus", "compel", f"{weighted}--", other),
                ("a1111_0.5", "a1111", f"({weighted}:0.5)", other),
            )
            for key, syntax, written, wanted in variants:
                words = {weighted: written, other: other}
                colour, image = shape_colour(
                    f"a {words[first]} {words[second]} {shape} on a {background} background", seed, syntax
                )
                hits[key].append(colour == wanted)
                if key == "plus_plus":
                    labels = shapes.nearest_color_labels(image)
                    changed.append(float((labels != shapes.nearest_color_labels(plain_image)).mean()))
    result = {key: round(float(np.mean(value)), 4) for key, value in hits.items()}
    result["pixels_changed"] = round(float(np.mean(changed)), 4)
    result["colour_follows"] = colour_reading(load_pipeline(Path(model) if model else None), count // 2)
    return result


def colour_reading(pipe: Any, count: int, guidance: float = 7.5) -> dict[str, float]:
    """Where the UNet reads the shape's colour from: prompts A (`a red circle on a white background`)
    and B (the same with another one-token colour) are encoded, and A's embedding is given either
    B's colour-word vectors or B's vectors at every later position (which the causal CLIP encoder
    mixes the colour into). Shares of images whose shape takes B's colour in each case: a model that
    reads the word itself follows `word`, one that reads the later tokens follows `later`. Why it
    matters: Compel and A1111 weights above 1 scale the word's own vectors only."""
    import torch

    rng = np.random.default_rng(EVAL_SEED + 9)
    tokenizer = pipe.tokenizer
    one_token = [c for c in shapes.COLORS if len(tokenizer(c, add_special_tokens=False).input_ids) == 1]

    def encode(prompt: str) -> Any:
        length = tokenizer.model_max_length
        ids = tokenizer(prompt, padding="max_length", max_length=length, return_tensors="pt")
        with torch.no_grad():
            return pipe.text_encoder(ids.input_ids)[0]

    empty = encode("")
    follows: dict[str, list[bool]] = {"word": [], "later": []}
    for index in range(count):
        a, b = (str(c) for c in rng.choice(one_token, 2, replace=False))
        background = str(rng.choice([c for c in shapes.COLORS if c not in (a, b)]))
        shape = shapes.SHAPES[index % len(shapes.SHAPES)]
        first, second = (encode(f"a {c} {shape} on a {background} background") for c in (a, b))
        for key, positions in (("word", slice(2, 3)), ("later", slice(3, None))):  # <bos> a COLOUR ...
            mixed = first.clone()
            mixed[:, positions] = second[:, positions]
            generator = torch.Generator().manual_seed(EVAL_SEED + 7000 + index)
            with torch.no_grad():
                images = pipe(
                    prompt_embeds=mixed, negative_prompt_embeds=empty, guidance_scale=guidance,
                    num_inference_steps=STEPS, generator=generator, output_type="np",
                ).images  # fmt: skip
            follows[key].append(shapes.read_scene(to_uint8(images)[0])["shape_color"] == b)
    return {key: round(float(np.mean(value)), 4) for key, value in follows.items()}


def load_controlnet_pipeline(pipe: Any, controlnet: Path | None = None) -> Any:
    """StableDiffusionControlNetPipeline sharing `pipe`'s components."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    model = ControlNetModel.from_pretrained(controlnet or demo_controlnet_path())
    control = StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=model)
    control.set_progress_bar_config(disable=True)
    return control


def mask_iou(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """IoU between each control mask and the generated image's non-background region."""
    ious = []
    for image, mask in zip(images, masks, strict=True):
        labels = shapes.nearest_color_labels(image)
        drawn = labels != np.bincount(labels.ravel()).argmax()
        ious.append((drawn & mask).sum() / max(1, (drawn | mask).sum()))
    return np.array(ious)


def controlnet_iou(pipe: Any, control: Any, count: int, guidance: float = 7.5) -> dict[str, float]:
    """Mean mask IoU with the ControlNet, and without it (same prompts and seeds) as baseline."""
    from PIL import Image

    scenes = held_out_scenes(count, EVAL_SEED + 4)
    masks = np.stack([np.asarray(shapes.draw_mask(s)) > 127 for s in scenes])
    control_images = [Image.fromarray(m.astype(np.uint8) * 255).convert("RGB") for m in masks]
    prompts = [s.caption() for s in scenes]
    seeds = [EVAL_SEED + 3000 + i for i in range(count)]
    with_control = generate(control, prompts, seeds, guidance_scale=guidance, image=control_images)
    without = generate(pipe, prompts, seeds, guidance_scale=guidance)
    read = [shapes.read_scene(im) for im in with_control]
    return {
        "quality_with_controlnet": quality.summarize(with_control),
        "iou_with_controlnet": float(mask_iou(with_control, masks).mean()),
        "iou_without_controlnet": float(mask_iou(without, masks).mean()),
        "shape_color_with_controlnet": float(
            np.mean([r["shape_color"] == s.color for r, s in zip(read, scenes, strict=True)])
        ),
        "background_with_controlnet": float(
            np.mean([r["background"] == s.background for r, s in zip(read, scenes, strict=True)])
        ),
    }


def _inpaint_case(scene: shapes.Scene, task: str, rng: np.random.Generator) -> tuple[Any, Any, str, Any]:
    """(init image, mask or None, prompt, outpaint or None) for one inpainting case, and the
    pixels to read: `repaint` the shape (grown 4 px) in another colour, `remove` it (prompt
    only the background), `outpaint` 16 px on the left and right."""
    from PIL import ImageFilter

    init = shapes.draw_scene(scene)
    grown = shapes.draw_mask(scene).filter(ImageFilter.MaxFilter(9))
    if task == "repaint":
        color = [c for c in shapes.COLORS if c not in (scene.color, scene.background)][int(rng.integers(6))]
        return init, grown, f"a {color} {scene.shape} on a {scene.background} background", color
    if task == "remove":
        return init, grown, f"a {scene.background} background", scene.background
    return init, None, scene.caption(), (16, 0, 16, 0)


def inpainting(model: str | None, count: int, guidance: float = 7.5) -> dict[str, float]:
    """Inpainting through easel itself (Easel.generate: mask blur 4, paste-back), strength 1.

    repaint: share of the shape's pixels drawn in the asked colour (repaint_images: share of
    images whose main colour inside the mask, besides the background, is the asked one);
    remove: share of the shape's pixels now the background colour (remove_images: images
    with under 10% of the mask in another colour); outpaint: share of the 2x16x64 new pixels in
    the scene's background colour. `unchanged`: share of pixels outside the blurred mask
    (paste-back overlay 0) equal to the input, over all cases (paste-back promises 1.0).
    """
    import tempfile

    from PIL import Image

    from easel import Easel, GenerationRequest
    from easel.inpaint import blur_mask

    engine = Easel()
    scenes = held_out_scenes(count, EVAL_SEED + 5)
    colors = list(shapes.COLORS)
    results: dict[str, float] = {}
    kept, outside = 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        init_path, mask_path = Path(tmp) / "init.png", Path(tmp) / "mask.png"
        for task in ("repaint", "remove", "outpaint"):
            rng = np.random.default_rng(EVAL_SEED + 6)
            shares, hits = [], []
            for index, scene in enumerate(scenes):
                init, mask, prompt, target = _inpaint_case(scene, task, rng)
                init.save(init_path)
                fields: dict[str, Any] = {"mask_image": None, "outpaint": None}
                if mask is not None:
                    mask.save(mask_path)
                    fields["mask_image"] = str(mask_path)
                    full = mask
                else:
                    fields["outpaint"] = target
                    full = Image.new("L", (shapes.IMAGE_SIZE + 32, shapes.IMAGE_SIZE), 255)
                    full.paste(0, (16, 0, 16 + shapes.IMAGE_SIZE, shapes.IMAGE_SIZE))
                result = engine.generate(
                    GenerationRequest(
                        model=model, prompt=prompt, init_image=str(init_path), strength=1.0, steps=STEPS,
                        guidance_scale=guidance, seed=EVAL_SEED + 4000 + index, **fields,
                    )
                )  # fmt: skip
                out = np.asarray(result.images[0].convert("RGB"))
                labels = shapes.nearest_color_labels(out)
                keep = np.asarray(blur_mask(full, 4)) == 0  # where paste-back keeps the input
                original = np.asarray(init)
                if task == "outpaint":
                    new = np.ones(labels.shape, bool)
                    new[:, 16 : 16 + shapes.IMAGE_SIZE] = False
                    shares.append((labels[new] == colors.index(scene.background)).mean())
                    out, keep = out[:, 16 : 16 + shapes.IMAGE_SIZE], keep[:, 16 : 16 + shapes.IMAGE_SIZE]
                else:
                    shape = np.asarray(shapes.draw_mask(scene)) > 127
                    shares.append((labels[shape] == colors.index(target)).mean())
                    # per image: the most common colour drawn inside the mask, other than the
                    # background, is the asked one (repaint) / no other colour is left (remove)
                    inside = labels[np.asarray(mask) > 127]
                    drawn = inside[inside != colors.index(scene.background)]
                    if task == "repaint":
                        hits.append(drawn.size > 0 and np.bincount(drawn).argmax() == colors.index(target))
                    else:
                        hits.append(drawn.size < 0.1 * inside.size)
                kept += int((out[keep] == original[keep]).all(axis=-1).sum())
                outside += int(keep.sum())
            results[task] = float(np.mean(shares))
            if hits:
                results[f"{task}_images"] = float(np.mean(hits))
    results["unchanged_outside_mask"] = kept / max(1, outside)
    return results


def lora_effect(
    model: Path | None, lora: str, count: int, weights: tuple[float, ...] = (0.0, 0.5, 1.0)
) -> dict[str, Any]:
    """The outline LoRA through easel (Easel.generate with loras=[...]) at each weight, on the
    held-out scenes: mean hollowness (share of a shape's inside drawn in the background
    colour: ~0 filled, ~1 outline), share of images that read as hollow (> 0.5), and the
    shape colour adherence (read from the drawn pixels, so an outline still counts)."""
    from easel import Easel, GenerationRequest
    from easel.demo.train_lora import hollowness

    engine = Easel()
    scenes = held_out_scenes(count, EVAL_SEED + 7)
    colors = list(shapes.COLORS)
    results: dict[str, Any] = {}
    for weight in weights:
        hollow, colour_ok = [], []
        for index, scene in enumerate(scenes):
            result = engine.generate(
                GenerationRequest(
                    model=str(model) if model else None, prompt=scene.caption(), steps=STEPS,
                    guidance_scale=7.5, seed=EVAL_SEED + 5000 + index,
                    loras=[{"name": lora, "weight": weight}],
                )
            )  # fmt: skip
            image = np.asarray(result.images[0].convert("RGB"))
            value = hollowness(image)
            hollow.append(0.0 if value is None else value)
            labels = shapes.nearest_color_labels(image)
            background = np.bincount(labels.ravel()).argmax()
            drawn = labels[labels != background]
            colour_ok.append(drawn.size > 0 and colors[np.bincount(drawn).argmax()] == scene.color)
        results[f"{weight:g}"] = {
            "hollowness": round(float(np.mean(hollow)), 3),
            "hollow_images": round(float(np.mean([h > 0.5 for h in hollow])), 3),
            "shape_colour": round(float(np.mean(colour_ok)), 3),
        }
    return results


def inpainting_figures(model: Path | None, inpaint_model: Path | None, count: int) -> dict[str, Any]:
    """inpainting() for the base model (4-channel route) and the inpainting model (9-channel)."""
    from easel.models.reference import DEMO_INPAINT

    return {
        "4-channel (base model)": inpainting(str(model) if model else None, count),
        "9-channel (inpainting model)": inpainting(
            str(inpaint_model) if inpaint_model else DEMO_INPAINT, count
        ),
    }


def evaluate(
    model: Path | None,
    controlnet: Path | None,
    pairs: int,
    inpaint_model: Path | None = None,
    lora: str = DEMO_LORA,
) -> dict[str, Any]:
    """All measurements of the model card, as one JSON-able dict."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        PNDMScheduler,
    )

    pipe = load_pipeline(model)
    scenes = held_out_scenes(pairs)
    seeds = [EVAL_SEED + i for i in range(pairs)]
    results: dict[str, Any] = {"pairs": pairs, "steps": STEPS, "scheduler": type(pipe.scheduler).__name__}
    began = time.time()
    results["adherence_by_guidance"] = {
        f"{g:g}": adherence(pipe, scenes, seeds, g) for g in (1.0, 3.0, 5.0, 7.5)
    }
    results["adherence_varied_phrasing_7.5"] = adherence(pipe, scenes, seeds, 7.5, template=None)
    classes = {
        "Euler a": EulerAncestralDiscreteScheduler,
        "DPM++ 2M": DPMSolverMultistepScheduler,
        "DDIM": DDIMScheduler,
        "PNDM (SD 1.5's default)": PNDMScheduler,
    }
    results["adherence_by_scheduler_7.5"] = {}
    for name, cls in classes.items():
        other = type(pipe).from_pipe(pipe, scheduler=cls.from_config(pipe.scheduler.config))
        other.set_progress_bar_config(disable=True)
        results["adherence_by_scheduler_7.5"][name] = adherence(other, scenes, seeds, 7.5)
    results["image_quality_7.5"] = image_quality(pipe, scenes, seeds)
    results["emphasis"] = emphasis(str(model) if model else None, EMPHASIS_CASES)
    results["negative_prompt"] = negative_prompt_effect(pipe, 48)
    results["img2img_distance_by_strength"] = img2img_distances(pipe, 32)
    distances = list(results["img2img_distance_by_strength"].values())
    results["img2img_monotone"] = all(a < b for a, b in itertools.pairwise(distances))
    results["controlnet"] = controlnet_iou(pipe, load_controlnet_pipeline(pipe, controlnet), 64)
    results["inpainting"] = inpainting_figures(model, inpaint_model, INPAINT_CASES)
    results["outline_lora"] = lora_effect(model, lora, LORA_CASES)
    results["seconds"] = round(time.time() - began, 1)
    return results


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="diffusers folder (default: shipped)")
    parser.add_argument(
        "--controlnet", type=Path, default=None, help="ControlNetModel folder (default: shipped)"
    )
    parser.add_argument(
        "--inpaint-model", type=Path, default=None, help="inpainting diffusers folder (default: shipped)"
    )
    parser.add_argument("--lora", default=DEMO_LORA, help="LoRA (name, path or hub file; default: shipped)")
    parser.add_argument(
        "--only", choices=["inpainting", "lora", "quality", "emphasis"], default=None, help="run one section"
    )
    parser.add_argument("--pairs", type=int, default=120, help="held-out (prompt, seed) pairs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.only == "inpainting":
        results = {"inpainting": inpainting_figures(args.model, args.inpaint_model, INPAINT_CASES)}
    elif args.only == "lora":
        results = {"outline_lora": lora_effect(args.model, args.lora, LORA_CASES)}
    elif args.only == "quality":
        scenes = held_out_scenes(args.pairs)
        seeds = [EVAL_SEED + i for i in range(args.pairs)]
        results = {"image_quality_7.5": image_quality(load_pipeline(args.model), scenes, seeds)}
    elif args.only == "emphasis":
        results = {"emphasis": emphasis(str(args.model) if args.model else None, EMPHASIS_CASES)}
    else:
        results = evaluate(args.model, args.controlnet, args.pairs, args.inpaint_model, args.lora)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Behaviour of the shipped demo model, and a smoke run of its training script.

Why: the demo model is trained to do things a random model cannot (draw the colours it is
asked for, follow a control mask), so these tests catch a change in easel or diffusers that
silently breaks real pipeline behaviour, not only crashes. Fixed seeds, CPU generators and one
torch thread make every figure deterministic; thresholds leave a margin below what the
shipped weights measure (see src/easel/demo/model/README.md) but far above what a random or
broken pipeline scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from easel.demo import demo_controlnet_path, demo_model_path, shapes
from easel.demo.evaluate import generate, load_controlnet_pipeline, load_pipeline, mask_iou

SEEDS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def pipe() -> Any:
    import torch

    torch.set_num_threads(1)
    return load_pipeline()


def test_shipped_folders_are_small_safetensors() -> None:
    files = [
        p for root in (demo_model_path(), demo_controlnet_path()) for p in root.rglob("*") if p.is_file()
    ]
    assert sum(p.stat().st_size for p in files) <= 20_000_000
    weights = [p.name for p in files if p.suffix in {".safetensors", ".bin", ".ckpt", ".pt"}]
    assert weights and all(name.endswith(".safetensors") for name in weights)
    assert (demo_model_path() / "README.md").is_file()
    from easel.demo import demo_inpaint_model_path, demo_lora_path

    inpaint = [p for p in demo_inpaint_model_path().rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in inpaint) <= 15_000_000
    (lora,) = demo_lora_path().glob("*.safetensors")
    assert lora.stat().st_size <= 2_000_000  # the bound for the demo LoRA


def test_default_size_is_64(pipe: Any) -> None:
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64


def test_red_circle_on_blue_background(pipe: Any) -> None:
    images = generate(
        pipe,
        ["a red circle on a blue background"] * len(SEEDS),
        SEEDS,
        guidance_scale=7.5,
        num_inference_steps=20,
    )
    read = [shapes.read_scene(image) for image in images]
    assert [r["background"] for r in read].count("blue") >= 3
    assert [r["shape_color"] for r in read].count("red") >= 3
    blue = list(shapes.COLORS).index("blue")
    assert np.mean([(shapes.nearest_color_labels(im) == blue).mean() for im in images]) > 0.4


def test_words_bind_to_their_roles(pipe: Any) -> None:
    """Swapping the two colour words swaps the colours in the image."""
    prompts = ["a yellow square on a black background", "a black square on a yellow background"]
    images = generate(pipe, prompts, [7, 7], guidance_scale=7.5, num_inference_steps=20)
    first, second = (shapes.read_scene(image) for image in images)
    assert (first["shape_color"], first["background"]) == ("yellow", "black")
    assert (second["shape_color"], second["background"]) == ("black", "yellow")


def test_same_seed_same_image(pipe: Any) -> None:
    first = generate(pipe, ["a green triangle on a white background"], [5], num_inference_steps=10)
    again = generate(pipe, ["a green triangle on a white background"], [5], num_inference_steps=10)
    other = generate(pipe, ["a green triangle on a white background"], [6], num_inference_steps=10)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_negative_prompt_lowers_the_colour_it_names(pipe: Any) -> None:
    """The prompt leaves the shape's colour open; on these seeds the model picks yellow, and a
    negative `yellow` takes it away while the background stays as asked.

    (Seeds 5, 7, 9, 12 are those of 0-15 where it does, at guidance 7.5 and 20 steps; the
    model retrained with the caption mix of issue 19 almost never picks red here: 1 seed in 96.)
    """
    seeds = [5, 7, 9, 12]
    prompts = ["a circle on a blue background"] * len(seeds)
    plain = generate(pipe, prompts, seeds, guidance_scale=7.5, num_inference_steps=20)
    negative = generate(
        pipe,
        prompts,
        seeds,
        guidance_scale=7.5,
        num_inference_steps=20,
        negative_prompt=["yellow"] * len(seeds),
    )
    yellow = list(shapes.COLORS).index("yellow")

    def coverage(images: np.ndarray) -> float:
        return float(np.mean([(shapes.nearest_color_labels(im) == yellow).mean() for im in images]))

    assert coverage(plain) > 0.05
    assert coverage(negative) < 0.5 * coverage(plain)
    assert all(shapes.read_scene(im)["background"] == "blue" for im in negative)


def test_img2img_distance_grows_with_strength(pipe: Any) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    init = shapes.draw_scene(shapes.Scene("circle", "red", "blue", 32, 32, 30, 0))
    prompt = ["a yellow square on a green background"] * 2
    distances, backgrounds = [], []
    for strength in (0.2, 0.5, 0.9):
        images = generate(
            img2img,
            prompt,
            [0, 1],
            guidance_scale=7.5,
            num_inference_steps=20,
            image=[init, init],
            strength=strength,
        )
        distances.append(np.abs(images.astype(np.float32) - np.asarray(init)).mean())
        backgrounds.append({shapes.read_scene(image)["background"] for image in images})
    assert backgrounds[0] == {"blue"}  # kept from the init image
    assert backgrounds[-1] == {"green"}  # taken from the prompt
    assert distances[0] < distances[1] < distances[2]
    assert distances[0] < 80  # low strength keeps much of the init image (measured: 58)


def test_controlnet_puts_the_shape_on_the_mask(pipe: Any) -> None:
    from PIL import Image

    control = load_controlnet_pipeline(pipe)
    scenes = [
        shapes.Scene("square", "red", "white", 20, 22, 24, 0),
        shapes.Scene("circle", "blue", "yellow", 42, 40, 30, 0),
    ]
    masks = np.stack([np.asarray(shapes.draw_mask(s)) > 127 for s in scenes])
    control_images = [Image.fromarray(m.astype(np.uint8) * 255).convert("RGB") for m in masks]
    images = generate(
        control,
        [s.caption() for s in scenes],
        [0, 1],
        guidance_scale=7.5,
        num_inference_steps=20,
        image=control_images,
    )
    assert mask_iou(images, masks).mean() > 0.6


@pytest.mark.slow
def test_training_script_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A few steps of every stage on tiny settings; an interrupted run resumes to the same weights."""
    from dataclasses import replace

    from diffusers import ControlNetModel, StableDiffusionPipeline

    from easel.demo.train import Settings, main, train

    main(["--out", str(tmp_path / "a"), "--smoke"])
    trained = StableDiffusionPipeline.from_pretrained(tmp_path / "a" / "model")
    trained.set_progress_bar_config(disable=True)
    image = trained("a red circle on a blue background", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    ControlNetModel.from_pretrained(tmp_path / "a" / "controlnet")
    shipped = load_pipeline().unet.config
    for key in ("block_out_channels", "sample_size", "cross_attention_dim", "addition_embed_type"):
        assert trained.unet.config[key] == shipped[key]

    # Stop after 2 UNet steps (as if killed), then rerun the command: it must resume.
    train(tmp_path / "b", replace(Settings.smoke(), unet_steps=2, controlnet_steps=0))
    for name in ("unet_done.pt", "controlnet_done.pt"):
        (tmp_path / "b" / "checkpoints" / name).unlink()
    capsys.readouterr()
    main(["--out", str(tmp_path / "b"), "--smoke"])
    log = capsys.readouterr().out
    assert "vae: loaded finished stage" in log and "unet: resumed at step 2" in log
    weights = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.safetensors"))
    assert len(weights) == 4
    for path in weights:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes(), path


@pytest.mark.slow  # eight 20-step generations
def test_outline_lora_hollows_the_shapes_by_weight() -> None:
    """The bundled LoRA (easel-demo-outline) through easel: weight 0 draws filled shapes, 1
    outlines (the model card's figures come from `python -m easel.demo.evaluate --only lora`)."""
    from easel import Easel, GenerationRequest
    from easel.demo.train_lora import hollowness

    engine = Easel()
    scenes = [shapes.Scene(**fields) for fields in _scenes(4)]

    def mean_hollowness(weight: float) -> float:
        values = []
        for seed, scene in enumerate(scenes):
            result = engine.generate(
                GenerationRequest(
                    prompt=scene.caption(), seed=seed, steps=20,
                    loras=[{"name": "easel-demo-outline", "weight": weight}],
                )
            )  # fmt: skip
            values.append(hollowness(np.asarray(result.images[0])) or 0.0)
        return float(np.mean(values))

    assert mean_hollowness(0.0) < 0.02  # the base never draws outlines
    assert mean_hollowness(1.0) > 0.1  # 0.17 on these four scenes (0.30 over the evaluation's 48)


def test_bundled_inpainting_model_repaints_only_the_mask() -> None:
    """easel-demo-inpaint (9-channel fine-tune) repaints a shape in the asked colour, and the
    paste-back keeps every pixel outside the blurred mask."""
    import tempfile

    from PIL import ImageFilter

    from easel import Easel, GenerationRequest
    from easel.inpaint import blur_mask

    engine = Easel()
    colors = list(shapes.COLORS)
    hits = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed, fields in enumerate(_scenes(4)):
            scene = shapes.Scene(**fields)
            init, mask = shapes.draw_scene(scene), shapes.draw_mask(scene).filter(ImageFilter.MaxFilter(9))
            init.save(f"{tmp}/init.png")
            mask.save(f"{tmp}/mask.png")
            target = next(
                c for c in ("green", "magenta", "yellow", "cyan") if c not in (scene.color, scene.background)
            )
            result = engine.generate(
                GenerationRequest(
                    model="easel-demo-inpaint", init_image=f"{tmp}/init.png", mask_image=f"{tmp}/mask.png",
                    prompt=f"a {target} {scene.shape} on a {scene.background} background",
                    strength=1.0, steps=20, seed=seed,
                )
            )  # fmt: skip
            out = np.asarray(result.images[0])
            keep = np.asarray(blur_mask(mask, 4)) == 0
            np.testing.assert_array_equal(out[keep], np.asarray(init)[keep])
            labels = shapes.nearest_color_labels(out)[np.asarray(mask) > 127]
            drawn = labels[labels != colors.index(scene.background)]
            hits.append(drawn.size > 0 and np.bincount(drawn).argmax() == colors.index(target))
    assert sum(hits) >= 2


def _scenes(count: int) -> list[dict[str, Any]]:
    """Held-out scenes as dicts (seeded apart from training and the evaluation)."""
    from dataclasses import asdict

    rng = np.random.default_rng(777)
    return [asdict(shapes.random_scene(rng)) for _ in range(count)]


@pytest.mark.slow  # two more training scripts, a few steps each
def test_inpainting_and_lora_training_scripts_smoke(tmp_path: Path) -> None:
    from diffusers import StableDiffusionInpaintPipeline

    from easel.demo.train_inpaint import main as train_inpaint
    from easel.demo.train_lora import main as train_lora

    train_inpaint(["--out", str(tmp_path / "inpaint"), "--smoke"])
    inpaint = StableDiffusionInpaintPipeline.from_pretrained(tmp_path / "inpaint" / "inpaint")
    assert inpaint.unet.config.in_channels == 9
    train_lora(["--out", str(tmp_path / "lora"), "--smoke"])
    lora = tmp_path / "lora" / "lora" / "easel-demo-outline.safetensors"
    assert lora.is_file() and lora.stat().st_size < 2_000_000


@pytest.mark.slow  # sixteen 25-step generations
def test_backgrounds_are_flat_and_one_shape_is_drawn(pipe: Any) -> None:
    """Issue 19's defects, measured as the model card states them (easel.demo.quality): the
    fine-tuned decoder leaves a speck off the shape's edge in 0.5% of 960 held-out images (95.8%
    of 120 before its fine-tune) and an off-blend dot on the edge in none (95% before its edge
    rounds), one shape in all of them, colours within a few levels of the palette. On these 16:
    no speck, no edge speck, background / shape error 2.26 / 3.09 levels (one of each kind is
    allowed for other builds' last bits)."""
    from easel.demo import quality
    from easel.demo.evaluate import EVAL_SEED, held_out_scenes

    scenes = held_out_scenes(16)
    images = generate(
        pipe, [s.caption() for s in scenes], [EVAL_SEED + i for i in range(16)], guidance_scale=7.5
    )
    figures = quality.summarize(images)
    assert figures["one_shape"] == 1.0
    assert figures["speck_images"] <= 1 / 16 and figures["edge_speck_images"] <= 1 / 16, figures
    assert figures["background_error"] < 3 and figures["shape_error"] < 4.5, figures


@pytest.mark.slow  # sixteen 25-step generations through easel
def test_weighting_a_colour_down_lets_the_other_one_win() -> None:
    """Prompt weighting visibly changes the picture on this model when a word is weighted down:
    with two colours named for the shape, `red--` (Compel) or `(red:0.5)` (A1111) draws the other
    colour (79% / 93% of 96 measured cases; the unweighted prompt draws the second-named colour in
    12.5%). Weights above 1 do not decide here (model card: the UNet reads colour from the later
    tokens, which Compel's upweighting leaves as they are)."""
    from easel import Easel, GenerationRequest

    engine = Easel()
    cases = [("red", "blue", "circle", "white"), ("green", "yellow", "square", "black"),
             ("cyan", "red", "triangle", "white"), ("blue", "green", "circle", "black")]  # fmt: skip
    won = {"compel": 0, "a1111": 0}
    for index, (first, second, shape, background) in enumerate(cases):
        for syntax, written in (("compel", f"{first}--"), ("a1111", f"({first}:0.5)")):
            for seed in (index, index + 10):
                request = GenerationRequest(
                    prompt=f"a {written} {second} {shape} on a {background} background", prompt_syntax=syntax,
                    steps=25, guidance_scale=7.5, seed=seed,
                )  # fmt: skip
                image = np.asarray(engine.generate(request).images[0].convert("RGB"))
                won[syntax] += shapes.read_scene(image)["shape_color"] == second
    assert won["compel"] >= 5 and won["a1111"] >= 6, won  # of 8 each

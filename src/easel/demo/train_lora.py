"""Train the bundled demo LoRA: `python -m easel.demo.train_lora --out DIR`.

Why a LoRA with a visible, measurable effect: tests and users need to see that a LoRA is
applied (and how strongly), offline. The base demo model always draws filled shapes; this LoRA
teaches it to draw every shape as an **outline** (a 5-pixel border in the shape's colour, the
inside left in the background colour), with the same prompts and no trigger word, so weight 0,
0.5 and 1 give filled, in-between and hollow shapes (`python -m easel.demo.evaluate` measures
the share of each shape's inside that is background).

How: PEFT LoRA (rank 8) on the UNet's attention, feed-forward and ResNet convolutions of the
shipped demo model, everything else frozen, epsilon loss with min-SNR weights on outline scenes
drawn on the fly (easel.demo.shapes + an eroded mask), EMA of the LoRA weights. Saved with
diffusers' `save_lora_weights` (PEFT layout), which `load_lora_weights` and easel read.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from easel.demo import shapes
from easel.demo.train import (
    Ema,
    ResumableStage,
    _batch_seed,
    _encode_text,
    _log,
    _lr_factor,
    _noisy,
    _to_tensor,
)

STAGE = 30  # data-seed stage ids 30.. (base training 0..8, inpainting 20..22)
OUTLINE = 5  # border width in pixels (the VAE works in 4x4 pixel cells)
TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
]


@dataclass
class LoraSettings:
    """LoRA training hyper-parameters (the defaults trained the shipped demo LoRA)."""

    seed: int = 0
    steps: int = 900
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 50
    rank: int = 8
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.995
    checkpoint_every: int = 150

    @classmethod
    def smoke(cls) -> LoraSettings:
        return cls(steps=3, batch=4, warmup=2, checkpoint_every=2)


def outline_batch(seed: int, count: int) -> tuple[np.ndarray, list[shapes.Scene]]:
    """`count` scenes drawn as outlines: the shape's border in its colour, inside background."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    scenes = [shapes.random_scene(rng) for _ in range(count)]
    images = []
    for scene in scenes:
        image = shapes.draw_scene(scene)
        inside = shapes.draw_mask(scene).filter(ImageFilter.MinFilter(2 * OUTLINE + 1))
        image.paste(Image.new("RGB", image.size, shapes.COLORS[scene.background]), mask=inside)
        images.append(np.asarray(image))
    return np.stack(images), scenes


def hollowness(image: np.ndarray) -> float | None:
    """Share of a drawn shape's inside (its silhouette, holes filled, less a 4-pixel border)
    that is background colour: ~0 for a filled shape, ~1 for an outline. None: no shape."""
    from scipy import ndimage

    labels = shapes.nearest_color_labels(image)
    background = np.bincount(labels.ravel()).argmax()
    drawn = labels != background
    if drawn.sum() < 40:
        return None
    silhouette = ndimage.binary_fill_holes(drawn)
    inside = ndimage.binary_erosion(silhouette, iterations=4)
    if inside.sum() < 4:
        return None
    return float((labels[inside] == background).mean())


def train(base: Path, out: Path, settings: LoraSettings) -> Path:
    """Train on the diffusers folder `base`; write OUT/lora/easel-demo-outline.safetensors."""
    import json

    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    torch.set_num_threads(1)
    began = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(base)
    components = {
        name: getattr(pipe, name) for name in ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
    }
    for name in ("vae", "text_encoder", "unet"):
        components[name].requires_grad_(False)
    unet = pipe.unet
    torch.manual_seed(_batch_seed(settings.seed, STAGE, 0))  # LoRA A matrices start random
    unet.add_adapter(
        LoraConfig(r=settings.rank, lora_alpha=settings.rank, target_modules=TARGETS, init_lora_weights=True)
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    work = out / "checkpoints"
    work.mkdir(parents=True, exist_ok=True)
    (work / "lora_settings.json").write_text(json.dumps(asdict(settings), indent=2))
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)

    def lora_state() -> dict[str, Any]:
        return {k: v for k, v in unet.state_dict().items() if "lora_" in k}

    ema = _LoraEma(lora_state(), settings.ema_decay)

    def restore(checkpoint: dict[str, Any]) -> None:
        unet.load_state_dict(checkpoint["lora"], strict=False)
        optimizer.load_state_dict(checkpoint["optimizer"])
        ema.shadow = checkpoint["ema"]

    def state() -> dict[str, Any]:
        return {"lora": lora_state(), "optimizer": optimizer.state_dict(), "ema": ema.shadow}

    stage = ResumableStage(work, "lora", settings.steps, settings.checkpoint_every)
    vae = components["vae"]
    unet.train()
    for step in stage.steps(state, restore, last=True):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * _lr_factor(step, settings.steps, settings.warmup)
        rng = np.random.default_rng(_batch_seed(settings.seed, STAGE + 1, step))
        images, scenes = outline_batch(_batch_seed(settings.seed, STAGE + 2, step), settings.batch)
        captions = [
            "" if rng.random() < settings.caption_dropout else shapes.random_caption(scene, rng)
            for scene in scenes
        ]
        with torch.no_grad():
            latents = vae.encode(_to_tensor(images)).latent_dist.mean * vae.config.scaling_factor
            text = _encode_text(components, captions)
        generator = torch.Generator().manual_seed(_batch_seed(settings.seed, STAGE + 3, step))
        noise, timesteps, noisy, weights = _noisy(components, latents, generator, settings)  # type: ignore[arg-type]
        prediction = unet(noisy, timesteps, text).sample
        loss = (weights * (prediction - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.update(lora_state(), step)
        if (step + 1) % 50 == 0:
            _log(
                f"lora step {step + 1}/{settings.steps} loss {loss.item():.4f} ({time.time() - began:.0f} s)"
            )
    unet.load_state_dict(ema.shadow, strict=False)
    unet.eval()
    target = out / "lora"
    target.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        target, unet_lora_layers=get_peft_model_state_dict(unet), weight_name="easel-demo-outline.safetensors"
    )
    path = target / "easel-demo-outline.safetensors"
    _log(f"lora: finished after {time.time() - began:.0f} s (this invocation); wrote {path}")
    return path


class _LoraEma(Ema):
    """Ema over a state dict of the LoRA tensors only (the frozen base needs no average)."""

    def __init__(self, state: dict[str, Any], decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in state.items()}

    def update(self, state: dict[str, Any], step: int) -> None:  # type: ignore[override]
        import torch

        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for key, value in state.items():
                self.shadow[key].mul_(decay).add_(value, alpha=1 - decay)


def main(argv: list[str] | None = None) -> None:
    from easel.demo import demo_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder: lora/ and checkpoints/")
    parser.add_argument(
        "--base", type=Path, default=None, help="base diffusers folder (default: the demo model)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps on tiny settings")
    args = parser.parse_args(argv)
    settings = LoraSettings.smoke() if args.smoke else LoraSettings()
    settings.seed = args.seed
    train(args.base or demo_model_path(), args.out, settings)


if __name__ == "__main__":
    main()

"""Fine-tune the demo model into an inpainting model: `python -m easel.demo.train_inpaint --out DIR`.

Why a second model: the demo model repaints a region only through the 4-channel route (the
known latents blended back each step), which at 16x16 latents keeps the old colours leaking in.
Dedicated inpainting checkpoints (SD 1.5 inpainting, SDXL inpainting) are trained the way this
script does it, as RunwayML described: the UNet gets 9 input channels (noisy latents 4, mask 1,
latents of the masked image 4); the extra input weights start at zero, so training starts from
exactly the base model's behaviour, and learns to use what the mask leaves visible.

Training data (easel.demo.shapes, drawn on the fly from seeded generators, so a resumed run
sees the batches an uninterrupted one would): the target is a whole scene with its full
caption; the mask is one of: the shape grown by 0-6 px (repaint the object), a random box, a
strip along 1-2 edges (outpainting), the whole image (plain text-to-image). The masked image
is the scene with the masked pixels set to 0 in [-1, 1], as StableDiffusionInpaintPipeline
builds it. VAE and text encoder stay frozen and are copied unchanged, so the folder shares
their bytes with the base model. Writes DIR/inpaint (a StableDiffusionInpaintPipeline folder).
"""

from __future__ import annotations

import argparse
import shutil
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

STAGE = 20  # data-seed stage ids 20.. (the base training uses 0..8)


@dataclass
class InpaintSettings:
    """Fine-tuning hyper-parameters (the defaults trained the shipped inpainting model)."""

    seed: int = 0
    steps: int = 1200
    batch: int = 32
    lr: float = 5e-4
    warmup: int = 100
    caption_dropout: float = 0.1
    partial_captions: float = 0.0
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    checkpoint_every: int = 250

    @classmethod
    def smoke(cls) -> InpaintSettings:
        return cls(steps=3, batch=4, warmup=2, checkpoint_every=2)


def random_masks(rng: np.random.Generator, shape_masks: np.ndarray) -> np.ndarray:
    """One training mask per scene (True = repaint): grown shape, box, edge strips or all."""
    from PIL import Image, ImageFilter

    size = shapes.IMAGE_SIZE
    masks = np.zeros_like(shape_masks)
    for i, shape_mask in enumerate(shape_masks):
        kind = rng.random()
        if kind < 0.4:
            grow = int(rng.integers(0, 4)) * 2 + 1
            image = Image.fromarray(shape_mask.astype(np.uint8) * 255)
            masks[i] = np.asarray(image.filter(ImageFilter.MaxFilter(grow))) > 127
        elif kind < 0.6:
            w, h = rng.integers(12, 48, size=2)
            x, y = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
            masks[i, y : y + h, x : x + w] = True
        elif kind < 0.9:
            for side in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
                width = int(rng.integers(8, 33))
                if side == 0:
                    masks[i, :, :width] = True
                elif side == 1:
                    masks[i, :width, :] = True
                elif side == 2:
                    masks[i, :, size - width :] = True
                else:
                    masks[i, size - width :, :] = True
        else:
            masks[i] = True
    return masks


def inpaint_unet(base_unet: Any) -> Any:
    """A 9-input-channel copy of `base_unet`; the 5 new input channels start at zero."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config({**base_unet.config, "in_channels": 9})
    state = dict(base_unet.state_dict())
    weight = state["conv_in.weight"]
    widened = torch.zeros(weight.shape[0], 9, *weight.shape[2:])
    widened[:, :4] = weight
    state["conv_in.weight"] = widened
    unet.load_state_dict(state)
    return unet


def batch_inputs(
    components: dict[str, Any], settings: InpaintSettings, step: int
) -> tuple[Any, Any, Any, list[str]]:
    """(target latents, latent-size mask, masked-image latents, captions) for one step."""
    import torch

    rng = np.random.default_rng(_batch_seed(settings.seed, STAGE, step))
    images, shape_masks, scenes = shapes.make_batch(
        _batch_seed(settings.seed, STAGE + 1, step), settings.batch
    )
    masks = torch.from_numpy(random_masks(rng, shape_masks)).float()[:, None]
    pixels = _to_tensor(images)
    masked = pixels * (masks < 0.5)
    vae = components["vae"]
    with torch.no_grad():
        encoded = vae.encode(torch.cat([pixels, masked])).latent_dist.mean * vae.config.scaling_factor
    latents, masked_latents = encoded.chunk(2)
    small = torch.nn.functional.interpolate(masks, size=latents.shape[-2:])
    captions = [
        "" if rng.random() < settings.caption_dropout else shapes.random_caption(scene, rng)
        for scene in scenes
    ]
    return latents, small, masked_latents, captions


def fine_tune(components: dict[str, Any], settings: InpaintSettings, work: Path) -> Any:
    """Train the 9-channel UNet (EMA ships); resumable from work/inpaint.pt."""
    import torch

    unet = inpaint_unet(components["unet"])
    components["vae"].requires_grad_(False)
    components["text_encoder"].requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.lr, weight_decay=0.01)
    ema = Ema(unet, settings.ema_decay)
    stage = ResumableStage(work, "inpaint", settings.steps, settings.checkpoint_every)

    def state() -> dict[str, Any]:
        return {"unet": unet.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.shadow}

    def restore(checkpoint: dict[str, Any]) -> None:
        unet.load_state_dict(checkpoint["unet"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        ema.shadow = checkpoint["ema"]

    unet.train()
    for step in stage.steps(state, restore, last=True):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * _lr_factor(step, settings.steps, settings.warmup)
        latents, mask, masked_latents, captions = batch_inputs(components, settings, step)
        generator = torch.Generator().manual_seed(_batch_seed(settings.seed, STAGE + 2, step))
        noise, timesteps, noisy, weights = _noisy(components, latents, generator, settings)  # type: ignore[arg-type]
        with torch.no_grad():
            text = _encode_text(components, captions)
        prediction = unet(torch.cat([noisy, mask, masked_latents], dim=1), timesteps, text).sample
        loss = (weights * (prediction - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.update(unet, step)
        stage.log(step, loss)
    ema.copy_to(unet)
    unet.eval()
    return unet


def train(base: Path, out: Path, settings: InpaintSettings) -> Path:
    """Fine-tune from the diffusers folder `base`; write OUT/inpaint; return its path."""
    import json

    import torch
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    torch.set_num_threads(1)
    began = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(base)
    components = {
        name: getattr(pipe, name) for name in ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
    }
    work = out / "checkpoints"
    work.mkdir(parents=True, exist_ok=True)
    (work / "inpaint_settings.json").write_text(json.dumps(asdict(settings), indent=2))
    unet = fine_tune(components, settings, work)
    target = out / "inpaint"
    if target.exists():
        shutil.rmtree(target)
    inpaint = StableDiffusionInpaintPipeline(
        **{**components, "unet": unet},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    inpaint.save_pretrained(target, safe_serialization=True)
    _log(f"inpaint: finished after {time.time() - began:.0f} s (this invocation); wrote {target}")
    return target


def main(argv: list[str] | None = None) -> None:
    from easel.demo import demo_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder: inpaint/ and checkpoints/")
    parser.add_argument(
        "--base", type=Path, default=None, help="base diffusers folder (default: the demo model)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps on tiny settings")
    args = parser.parse_args(argv)
    settings = InpaintSettings.smoke() if args.smoke else InpaintSettings()
    settings.seed = args.seed
    train(args.base or demo_model_path(), args.out, settings)


if __name__ == "__main__":
    main()

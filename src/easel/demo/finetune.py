"""Fine-tune the bundled demo model's VAE decoder: `python -m easel.demo.finetune --out DIR`.

Why a fine-tune of the shipped weights rather than a new training run: the first training left a
dark or rainbow speck at the lower-left edge of nearly every shape (in plain reconstructions of
clean renders too: the decoder draws it) and slightly off-palette colours. Only the decoder and
post_quant_conv train; the encoder, and so every latent, stays exactly as it was, and with it
the UNet, the ControlNet, the inpainting UNet and the outline LoRA, all trained on those latents.

The loss adds, to L1 + MSE, the mean error of each image's worst pixels away from the shape's
edge (a speck is a few pixels: mean losses barely see it, and a clean render's hard edge would
otherwise hold all of an image's worst pixels), and the latents are decoded with a little
Gaussian noise, as the UNet's samples are never exactly the encoder's, so that near-miss latents
still decode to flat palette colours. Resumable from checkpoints under DIR/checkpoints and a pure
function of --seed (batches and noise seeded by (seed, stage, step), as in easel.demo.train).

The finished pipeline folder is written to DIR/model; the inpainting model shares the VAE (copy
DIR/model/vae/*.safetensors to both shipped folders; see the model card).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from easel.demo import shapes
from easel.demo.train import ResumableStage, _batch_seed, _log, _lr_factor, _to_tensor, save_pipeline


@dataclass
class FinetuneSettings:
    """Hyper-parameters (the defaults are what the shipped model was fine-tuned with)."""

    seed: int = 0
    decoder_steps: int = 2400
    # the decoder's learning rate restarts every this many steps (warm restarts): the first run
    # ended at 800 steps with specks in 21% of images and still improving, the second at 8%, the
    # third at 6%; each cycle, resumed from the last checkpoint, is the same computation as one
    # run of all of them with these settings
    decoder_cycle: int = 800
    decoder_batch: int = 16
    decoder_lr: float = 3e-4
    latent_noise: float = 0.15  # largest std of the noise added to scaled latents (per image U(0, this))
    worst_pixels: int = 32  # per image, the pixels whose error the speck loss averages
    warmup: int = 100
    checkpoint_every: int = 250
    # then a polish with the speck loss's edge band matched to the speck measure (a diamond, as
    # easel.demo.quality's band is): the square band above never penalised a pixel 2 px diagonally
    # off a corner, where 9 in 10 of the specks left after 2,400 steps sat (single pixels at 2.8 px)
    polish_steps: int = 600
    polish_lr: float = 1e-4
    polish_worst_pixels: int = 8
    polish_warmup: int = 50

    @classmethod
    def smoke(cls) -> FinetuneSettings:
        """A few steps, for the test that the script runs end to end (and resumes)."""
        return cls(
            decoder_steps=3, decoder_cycle=2, decoder_batch=4, warmup=2, checkpoint_every=2,
            polish_steps=3, polish_warmup=2,
        )  # fmt: skip


def load_components(base: Path) -> dict[str, Any]:
    """The shipped pipeline's components (scheduler included, saved back unchanged)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base)
    return {name: getattr(pipe, name) for name in ("tokenizer", "text_encoder", "vae", "unet", "scheduler")}


def _diamond_dilate(masks: Any, pixels: int) -> Any:
    """Grow (N,1,H,W) masks by `pixels` in city-block distance, as scipy's binary_dilation with
    its default cross does (easel.demo.quality's band)."""
    import torch
    import torch.nn.functional as F

    for _ in range(pixels):
        padded = F.pad(masks, (1, 1, 1, 1))
        vertical = torch.maximum(padded[..., :-2, 1:-1], padded[..., 2:, 1:-1])
        horizontal = torch.maximum(padded[..., 1:-1, :-2], padded[..., 1:-1, 2:])
        masks = torch.maximum(masks, torch.maximum(vertical, horizontal))
    return masks


def decoder_loss(recon: Any, target: Any, masks: Any, worst: int, diamond: bool = False) -> Any:
    """L1 + MSE over all pixels, plus the mean error of each image's `worst` pixels away from the
    shape's edge (2 px either side, where a clean render's hard edge is never matched exactly):
    a speck is a handful of pixels that mean losses barely see, and the edge would otherwise
    hold all of an image's worst pixels. `diamond`: the band outside the shape reaches 2 px in
    city-block distance (the speck measure's shape) rather than a 5x5 square's."""
    import torch.nn.functional as F

    error = (recon - target).abs()
    shape = masks[:, None].float()
    outer = _diamond_dilate(shape, 2) if diamond else F.max_pool2d(shape, 5, 1, 2)
    edge = (outer - (1 - F.max_pool2d(1 - shape, 5, 1, 2)))[:, 0] > 0
    away = error.amax(dim=1).masked_fill(edge, 0).flatten(1)  # (N, H*W): worst channel per pixel
    return error.mean() + error.pow(2).mean() + away.topk(worst, dim=1).values.mean()


@dataclass(frozen=True)
class DecoderStage:
    """One resumable training stage of the decoder: its schedule, loss and data streams."""

    name: str
    steps: int
    lr: float
    cycle: int  # the learning rate restarts every this many steps
    warmup: int
    worst_pixels: int
    diamond: bool  # decoder_loss's band shape
    streams: tuple[int, int]  # _batch_seed stage ids of the batches and of the latent noise


def decoder_stages(settings: FinetuneSettings) -> list[DecoderStage]:
    """The fine-tune's stages in order: the long run with warm restarts, then the polish."""
    return [
        DecoderStage(
            "decoder", settings.decoder_steps, settings.decoder_lr, settings.decoder_cycle,
            settings.warmup, settings.worst_pixels, diamond=False, streams=(21, 22),
        ),
        DecoderStage(
            "polish", settings.polish_steps, settings.polish_lr, settings.polish_steps,
            settings.polish_warmup, settings.polish_worst_pixels, diamond=True, streams=(31, 32),
        ),
    ]  # fmt: skip


def train_decoder(
    components: dict[str, Any], settings: FinetuneSettings, spec: DecoderStage, work: Path
) -> None:
    """One stage: decoder + post_quant_conv on the frozen encoder's latents (plus noise), from a
    fresh optimizer; a finished stage only loads its weights."""
    import torch

    vae = components["vae"]
    stage = ResumableStage(work, spec.name, spec.steps, settings.checkpoint_every)
    done = stage.finished()
    if done is not None:
        vae.load_state_dict(done["vae"])
        return
    vae.requires_grad_(False)
    trained = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for parameter in trained:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=spec.lr, weight_decay=0.0)

    def restore(checkpoint: dict[str, Any]) -> None:
        vae.load_state_dict(checkpoint["vae"])
        optimizer.load_state_dict(checkpoint["optimizer"])

    scale = vae.config.scaling_factor
    vae.eval()  # no dropout or batch statistics in this VAE; eval keeps the encoder exactly frozen
    for step in stage.steps(lambda: {"vae": vae.state_dict(), "optimizer": optimizer.state_dict()}, restore):
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * _lr_factor(step % spec.cycle, spec.cycle, spec.warmup)
        batches, noise = spec.streams
        seed = _batch_seed(settings.seed, batches, step)
        images, masks, _ = shapes.make_batch(seed, settings.decoder_batch)
        x = _to_tensor(images)
        generator = torch.Generator().manual_seed(_batch_seed(settings.seed, noise, step))
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mean
        sigma = torch.rand(len(x), 1, 1, 1, generator=generator) * settings.latent_noise
        noisy = latents + sigma * torch.randn(latents.shape, generator=generator) / scale
        recon = vae.decode(noisy).sample
        loss = decoder_loss(recon, x, torch.from_numpy(masks), spec.worst_pixels, spec.diamond)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        stage.log(step, loss)
    vae.requires_grad_(False)
    stage.finish({"vae": vae.state_dict()})


def finetune(out: Path, settings: FinetuneSettings, base: Path) -> None:
    """Run (or resume) the decoder fine-tune of the model folder `base` and write OUT/model."""
    import torch

    torch.set_num_threads(1)  # the training loop is measured at one thread (20-40x faster here)
    began = time.time()
    components = load_components(base)
    work = out / "checkpoints"
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(asdict(settings), indent=2))
    for spec in decoder_stages(settings):
        train_decoder(components, settings, spec, work)
    if (out / "model").exists():
        shutil.rmtree(out / "model")
    save_pipeline(components, out / "model")
    _log(f"finished after {time.time() - began:.0f} s (this invocation); wrote {out / 'model'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder: model/ and checkpoints/")
    parser.add_argument(
        "--base", type=Path, required=True,
        help="the first training's model folder (DIR/model of python -m easel.demo.train)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps")
    args = parser.parse_args(argv)
    settings = FinetuneSettings.smoke() if args.smoke else FinetuneSettings()
    settings.seed = args.seed
    finetune(args.out, settings, args.base)


if __name__ == "__main__":
    main()

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
    decoder_steps: int = 1600
    # the decoder's learning rate restarts every this many steps (warm restarts): the first run
    # ended at 800 steps with specks in 21% of images and still improving; a second cycle, resumed
    # from its checkpoint, is the same computation as one 1,600-step run with these settings
    decoder_cycle: int = 800
    decoder_batch: int = 16
    decoder_lr: float = 3e-4
    latent_noise: float = 0.15  # largest std of the noise added to scaled latents (per image U(0, this))
    worst_pixels: int = 32  # per image, the pixels whose error the speck loss averages
    warmup: int = 100
    checkpoint_every: int = 250

    @classmethod
    def smoke(cls) -> FinetuneSettings:
        """A few steps, for the test that the script runs end to end (and resumes)."""
        return cls(decoder_steps=3, decoder_cycle=2, decoder_batch=4, warmup=2, checkpoint_every=2)


def load_components(base: Path) -> dict[str, Any]:
    """The shipped pipeline's components (scheduler included, saved back unchanged)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base)
    return {name: getattr(pipe, name) for name in ("tokenizer", "text_encoder", "vae", "unet", "scheduler")}


def decoder_loss(recon: Any, target: Any, masks: Any, worst: int) -> Any:
    """L1 + MSE over all pixels, plus the mean error of each image's `worst` pixels away from the
    shape's edge (2 px either side, where a clean render's hard edge is never matched exactly):
    a speck is a handful of pixels that mean losses barely see, and the edge would otherwise
    hold all of an image's worst pixels."""
    import torch.nn.functional as F

    error = (recon - target).abs()
    shape = masks[:, None].float()
    edge = (F.max_pool2d(shape, 5, 1, 2) - (1 - F.max_pool2d(1 - shape, 5, 1, 2)))[:, 0] > 0
    away = error.amax(dim=1).masked_fill(edge, 0).flatten(1)  # (N, H*W): worst channel per pixel
    return error.mean() + error.pow(2).mean() + away.topk(worst, dim=1).values.mean()


def finetune_decoder(components: dict[str, Any], settings: FinetuneSettings, work: Path) -> None:
    """Stage 1: decoder + post_quant_conv on the frozen encoder's latents (plus noise)."""
    import torch

    vae = components["vae"]
    stage = ResumableStage(work, "decoder", settings.decoder_steps, settings.checkpoint_every)
    done = stage.finished()
    if done is not None:
        vae.load_state_dict(done["vae"])
        return
    vae.requires_grad_(False)
    trained = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for parameter in trained:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=settings.decoder_lr, weight_decay=0.0)

    def restore(checkpoint: dict[str, Any]) -> None:
        vae.load_state_dict(checkpoint["vae"])
        optimizer.load_state_dict(checkpoint["optimizer"])

    scale = vae.config.scaling_factor
    vae.eval()  # no dropout or batch statistics in this VAE; eval keeps the encoder exactly frozen
    for step in stage.steps(lambda: {"vae": vae.state_dict(), "optimizer": optimizer.state_dict()}, restore):
        for group in optimizer.param_groups:
            cycle = settings.decoder_cycle
            group["lr"] = settings.decoder_lr * _lr_factor(step % cycle, cycle, settings.warmup)
        images, masks, _ = shapes.make_batch(_batch_seed(settings.seed, 21, step), settings.decoder_batch)
        x = _to_tensor(images)
        generator = torch.Generator().manual_seed(_batch_seed(settings.seed, 22, step))
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mean
        sigma = torch.rand(len(x), 1, 1, 1, generator=generator) * settings.latent_noise
        noisy = latents + sigma * torch.randn(latents.shape, generator=generator) / scale
        loss = decoder_loss(vae.decode(noisy).sample, x, torch.from_numpy(masks), settings.worst_pixels)
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
    finetune_decoder(components, settings, work)
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

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
still decode to flat palette colours. A third stage decodes latents the UNet itself sampled (and,
with --controlnet, the ControlNet), to their own decodings snapped to the palette off the band:
after the first two stages 5% of generated images still had a speck (over 960 held-out pairs;
1.1% after this stage), and 4.8% of reconstructions (0.9% after it). Then a mining round trains
on the clean renders and samples the decoder still gets wrong (half of each batch from those):
0.4% and 0.4%. The last stages, the edge rounds, look at the shape's edge, which the speck
measure (and the loss) had left out: a pixel there far from every blend of the two colours (the
issue's rainbow dot) was on 95% of images, 7% after the first (a speck just off the edge: 0.4%
-> 1.7%), 0.2% after a second round mining both kinds (1.6% off the edge), and after five such
rounds images with either kind are 0.5% (reconstructions 0.1%): a faint pixel just off a corner,
66-78 levels from the background.
Resumable from checkpoints under DIR/checkpoints, a finished later stage standing for the earlier
ones, and a pure function of --seed (batches, noise and samples seeded by (seed, stage, step), as
in easel.demo.train).

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
    # then decoding what the UNet samples: after the polish, 5% of generated images still had a
    # speck (and 4.8% of reconstructions of clean renders, 960 held-out pairs); the UNet's latents
    # sit just off the encoder's (all five speckled images of the first 120 were colour pairs one
    # channel apart), so this stage also decodes sampled latents, to their own decodings snapped
    # to the palette off the band (easel.demo.quality.palette_target), beside clean renders as before
    sampled_latents: int = 8192  # drawn once with the shipped UNet (and ControlNet), 25 steps
    sampled_guidance: tuple[float, ...] = (3.0, 5.0, 7.5)  # one per chunk of 16, at random
    sampled_controlnet_share: float = 0.25  # of the chunks, where --controlnet is given
    sampled_inference_steps: int = 25
    sampled_steps: int = 2400
    sampled_lr: float = 1e-4
    sampled_per_batch: int = 8  # of decoder_batch; the rest are clean renders
    # of those, the share drawn from the samples whose decoding had a speck (3.7% of them): drawn
    # uniformly (600 steps), the stage left specks in 3.1% of the very samples it trained on, with
    # half from those 152 (1,200 steps) 0.6%; reading the flags again from the decoder every 200
    # steps did no better on held-out images (2.2% vs 1.5% of 960), so they stay as first drawn
    sampled_speck_share: float = 0.5
    # then mining the clean renders as well: after the sampled stage ~1% of generated images and of
    # reconstructions of clean renders still had a speck (960 held-out pairs), the same faint one
    # or two pixels on both, so the decoder's own; a fixed pool of training clean renders is
    # flagged by whether its reconstruction specks (62 of 8,192), and each batch is half clean
    # renders and half samples, half of each from the speckled ones (flags re-read from the decoder
    # at the round's start); every round re-reads them. One round took specks from 1.1% to 0.4% of
    # 960 held-out images (0.9% to 0.4% of reconstructions); a second round on the same pool gave
    # 0.5% / 0.6%, on a fresh pool four times as large 0.4% / 0.3%, with the loss on each image's 3
    # worst pixels weighted 4x 0.3% / 0.4% (palette errors up by 0.2-0.4 levels): one round is shipped
    mined_renders: int = 8192  # the pool: training-stream clean renders, encoded once
    mined_rounds: int = 1
    mined_steps: int = 1200  # per round
    mined_lr: float = 1e-4
    # last, the edges: inside the band the speck measure leaves out, 95% of images still had a
    # pixel far from every blend of the two colours (the rainbow dot at the lower-left
    # edge: easel.demo.quality's edge speck), which no loss had looked at (the worst-pixel term
    # skipped the edge, the samples' targets keep it as drawn); a last stage on the mining
    # round's batches judges edge pixels by their distance from the nearest blend
    edge_lr: float = 1e-4
    # and a second edge round whose pool is flagged by either kind of speck (6.8% of renders): the
    # first moved part of the dot one pixel outward (specks off the band 0.4% -> 1.7%), and with
    # flags that see only those the edge dots were barely mined; after it 0.2% / 1.6% of 960
    # (either kind 1.8%). Three more rounds the same way (the pool's flags re-read each time: 51,
    # 18, 16 renders and 100, 46, 41 samples) took either kind to 1.25%, 0.94%, 0.52% of 960 (the
    # reconstructions 0.73% -> 0.1%); a sixth gave 0.83% (its pool down to 4 speckled renders), and
    # one round of 2,400 steps instead of the third 0.83%, two of them 0.73%: five rounds ship
    edge_steps: tuple[int, ...] = (1200, 1200, 1200, 1200, 1200)  # one edge round per entry: its steps

    @classmethod
    def smoke(cls) -> FinetuneSettings:
        """A few steps, for the test that the script runs end to end (and resumes)."""
        return cls(
            decoder_steps=3, decoder_cycle=2, decoder_batch=4, warmup=2, checkpoint_every=2,
            polish_steps=3, polish_warmup=2, sampled_latents=48, sampled_inference_steps=10,
            sampled_steps=3, sampled_per_batch=2, mined_renders=48, mined_rounds=2, mined_steps=3,
            edge_steps=(3, 3),
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


def decoder_loss(
    recon: Any, target: Any, masks: Any, worst: int, diamond: bool = False, edge_blend: bool = False
) -> Any:
    """L1 + MSE over all pixels, plus the mean error of each image's `worst` pixels away from the
    shape's edge (2 px either side, where a clean render's hard edge is never matched exactly):
    a speck is a handful of pixels that mean losses barely see, and the edge would otherwise
    hold all of an image's worst pixels. `diamond`: the band outside the shape reaches 2 px in
    city-block distance (the speck measure's shape) rather than a 5x5 square's. `edge_blend`:
    plus the mean of the `worst` edge pixels, each judged by its distance from the nearest blend
    of the target's background and shape colours (all a clean render draws there; the edge
    speck measure's criterion), so a soft edge costs nothing and a coloured dot on it does; a
    term of its own, so the background keeps its share (one shared top-k measured about the same)."""
    import torch.nn.functional as F

    error = (recon - target).abs()
    shape = masks[:, None].float()
    outer = _diamond_dilate(shape, 2) if diamond else F.max_pool2d(shape, 5, 1, 2)
    inner = 1 - F.max_pool2d(1 - shape, 5, 1, 2)
    edge = (outer - inner)[:, 0] > 0
    away = error.amax(dim=1).masked_fill(edge, 0).flatten(1)  # (N, H*W): worst channel per pixel
    loss = error.mean() + error.pow(2).mean() + away.topk(worst, dim=1).values.mean()
    if edge_blend:
        on_edge = _blend_error(recon, target, shape, outer, inner).masked_fill(~edge, 0).flatten(1)
        loss = loss + on_edge.topk(worst, dim=1).values.mean()
    return loss


def _blend_error(recon: Any, target: Any, shape: Any, outer: Any, inner: Any) -> Any:
    """(N,H,W): each pixel's largest channel distance from the nearest blend of the target's
    background colour (its mean off the `outer` band) and shape colour (its mean over `inner`,
    the whole shape where that is empty), as easel.demo.quality's edge deviation reads it."""
    import torch

    background = (target * (1 - outer)).sum((2, 3)) / (1 - outer).sum((2, 3)).clamp(min=1)
    core = torch.where(inner.sum((2, 3), keepdim=True) > 0, inner, shape)
    colour = (target * core).sum((2, 3)) / core.sum((2, 3)).clamp(min=1)
    direction, start = (colour - background)[..., None, None], background[..., None, None]
    length = (direction * direction).sum(1, keepdim=True).clamp(min=1e-6)
    share = (((recon - start) * direction).sum(1, keepdim=True) / length).clamp(0, 1)
    return (recon - (start + share * direction)).abs().amax(1)


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
    sampled: int = 0  # latents per batch drawn from the UNet's samples (sample_latents)
    # the clean renders come from a pool flagged by their reconstructions' specks (mine_renders),
    # half of them speckled, and the samples' flags are re-read with the pool (streams[0]: the pool's)
    mined: bool = False
    edge_blend: bool = False  # decoder_loss's
    edge_flags: bool = False  # the pool's flags count edge specks too


def decoder_stages(settings: FinetuneSettings) -> list[DecoderStage]:
    """The fine-tune's stages in order: the long run with warm restarts, the polish, the stage
    that also decodes the UNet's samples, the rounds that mine the speckled ones, then the edges."""
    mined = [
        DecoderStage(
            f"mined{round_}", settings.mined_steps, settings.mined_lr, settings.mined_steps,
            settings.polish_warmup, settings.polish_worst_pixels, diamond=True, streams=(61, 60 + 2 * round_),
            sampled=settings.sampled_per_batch, mined=True,
        )
        for round_ in range(1, settings.mined_rounds + 1)
    ]  # fmt: skip
    return [
        DecoderStage(
            "decoder", settings.decoder_steps, settings.decoder_lr, settings.decoder_cycle,
            settings.warmup, settings.worst_pixels, diamond=False, streams=(21, 22),
        ),
        DecoderStage(
            "polish", settings.polish_steps, settings.polish_lr, settings.polish_steps,
            settings.polish_warmup, settings.polish_worst_pixels, diamond=True, streams=(31, 32),
        ),
        DecoderStage(
            "sampled", settings.sampled_steps, settings.sampled_lr, settings.sampled_steps,
            settings.polish_warmup, settings.polish_worst_pixels, diamond=True, streams=(51, 52),
            sampled=settings.sampled_per_batch,
        ),
        *mined,
        *[
            DecoderStage(
                "edges" if number == 1 else f"edges{number}", steps, settings.edge_lr,
                steps, settings.polish_warmup, settings.polish_worst_pixels, diamond=True,
                streams=(61, 70 + 2 * number), sampled=settings.sampled_per_batch, mined=True,
                edge_blend=True, edge_flags=number > 1,
            )
            for number, steps in enumerate(settings.edge_steps, start=1)
        ],
    ]  # fmt: skip


def sample_latents(
    components: dict[str, Any], settings: FinetuneSettings, work: Path, controlnet: Path | None
) -> dict[str, Any]:
    """The UNet's own latents for training scenes (captions in every phrasing, guidance drawn per
    chunk of 16, a share of chunks through the ControlNet with the scene's mask), each with its
    target: its decoding by the VAE as it is now, snapped to the palette off the band
    (easel.demo.quality.palette_target), and whether that decoding had a speck; latents showing
    no single shape are left out. Chunks are seeded by index, resumable like a training stage
    (work/samples.pt), kept in samples_done.pt."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from easel.demo import quality

    stage = ResumableStage(work, "samples", -(-settings.sampled_latents // 16), 16)
    done = stage.finished()
    if done is not None:
        return done
    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    control = None
    if controlnet is not None:
        from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

        control = StableDiffusionControlNetPipeline.from_pipe(
            pipe, controlnet=ControlNetModel.from_pretrained(controlnet)
        )
        control.set_progress_bar_config(disable=True)
    parts: dict[str, list[Any]] = {"latents": [], "targets": [], "masks": [], "specks": []}

    def restore(checkpoint: dict[str, Any]) -> None:
        for key in parts:
            parts[key] = list(checkpoint[key])

    vae, scale = components["vae"], components["vae"].config.scaling_factor
    for chunk in stage.steps(lambda: {key: list(value) for key, value in parts.items()}, restore, last=True):
        rng = np.random.default_rng(_batch_seed(settings.seed, 41, chunk))
        scenes = [shapes.random_scene(rng) for _ in range(16)]
        captions = [shapes.random_caption(scene, rng) for scene in scenes]
        guidance = float(rng.choice(settings.sampled_guidance))
        kwargs: dict[str, Any] = {}
        runner = pipe
        if control is not None and rng.random() < settings.sampled_controlnet_share:
            runner = control
            kwargs["image"] = [shapes.draw_mask(scene).convert("RGB") for scene in scenes]  # white on black
        seeds = [_batch_seed(settings.seed, 42, chunk * 16 + i) for i in range(16)]
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        with torch.no_grad():
            latents = runner(
                captions, generator=generators, guidance_scale=guidance, output_type="latent",
                num_inference_steps=settings.sampled_inference_steps, **kwargs,
            ).images / scale  # fmt: skip
        images = _decoded_images(vae, latents)
        for latent, image in zip(latents, images, strict=True):
            snapped = quality.palette_target(image)
            if snapped is not None:
                parts["latents"].append(latent)
                parts["targets"].append(torch.from_numpy(snapped[0]))
                parts["masks"].append(torch.from_numpy(snapped[1]))
                parts["specks"].append(torch.tensor(quality.measure(image).has_speck))
    data = {key: torch.stack(value) for key, value in parts.items()}
    kept, specks = len(data["latents"]), int(data["specks"].sum())
    stage.finish(data, f"samples: {kept} of {stage.total * 16} show one shape, {specks} of them a speck")
    return data


def mine_renders(
    vae: Any, settings: FinetuneSettings, spec: DecoderStage, work: Path, samples: dict[str, Any]
) -> dict[str, Any]:
    """The pool of clean renders a mining round trains on (chunks of 16 from the stream
    spec.streams[0]): their latents, images and masks, and whether the decoder as it is now
    reconstructs each with a speck; with the samples' flags re-read the same way ("sample_specks").
    Resumable like a training stage (work/NAME_pool.pt), kept in NAME_pool_done.pt."""
    import torch

    stage = ResumableStage(work, f"{spec.name}_pool", -(-settings.mined_renders // 16), 64)
    done = stage.finished()
    if done is not None:
        return done
    parts: dict[str, list[Any]] = {"latents": [], "images": [], "masks": [], "specks": []}

    def restore(checkpoint: dict[str, Any]) -> None:
        for key in parts:
            parts[key] = list(checkpoint[key])

    for chunk in stage.steps(lambda: {key: list(value) for key, value in parts.items()}, restore, last=True):
        images, masks, _ = shapes.make_batch(_batch_seed(settings.seed, spec.streams[0], chunk), 16)
        with torch.no_grad():
            latents = vae.encode(_to_tensor(images)).latent_dist.mean
        parts["latents"] += list(latents)
        parts["images"] += list(torch.from_numpy(images))
        parts["masks"] += list(torch.from_numpy(masks))
        parts["specks"] += list(_decoded_specks(vae, latents, spec.edge_flags))
    pool = {key: torch.stack(value) for key, value in parts.items()}
    pool["sample_specks"] = _decoded_specks(vae, samples["latents"], spec.edge_flags)
    specks, sampled = int(pool["specks"].sum()), int(pool["sample_specks"].sum())
    stage.finish(pool, f"{stage.name}: {specks} of {len(pool['specks'])} renders speck, {sampled} samples")
    return pool


def _decoded_images(vae: Any, latents: Any) -> Any:
    """uint8 (N,H,W,3) images of (unscaled) latents, as the pipelines and the evaluation make them."""
    import torch

    from easel.demo.evaluate import to_uint8

    with torch.no_grad():
        decoded = vae.decode(latents).sample
    return to_uint8((decoded.permute(0, 2, 3, 1).numpy() + 1) / 2)


def _decoded_specks(vae: Any, latents: Any, edges: bool = False) -> Any:
    """Whether each latent's decoding by `vae` as it is now has a speck (chunks of 16, as drawn);
    with `edges`, a speck or an edge speck."""
    import torch

    from easel.demo import quality

    flags = []
    for start in range(0, len(latents), 16):
        measured = [quality.measure(image) for image in _decoded_images(vae, latents[start : start + 16])]
        flags += [m.has_speck or (edges and m.has_edge_speck) for m in measured]
    return torch.tensor(flags)


def _choose_samples(specks: Any, count: int, speck_share: float, generator: Any) -> Any:
    """Indices of `count` samples for one batch: round(count * speck_share) of them from those
    whose decoding had a speck (while there are any), the rest from all; none twice."""
    import torch

    hard = torch.nonzero(specks).flatten()
    take = min(round(count * speck_share), len(hard))
    chosen = hard[torch.randperm(len(hard), generator=generator)[:take]]
    rest = torch.randperm(len(specks), generator=generator)
    rest = rest[~torch.isin(rest, chosen)][: count - take]
    return torch.cat([chosen, rest])


def train_decoder(
    components: dict[str, Any],
    settings: FinetuneSettings,
    spec: DecoderStage,
    work: Path,
    samples: dict[str, Any] | None = None,
    pool: dict[str, Any] | None = None,
) -> None:
    """One stage: decoder + post_quant_conv on the frozen encoder's latents (plus noise) of fresh
    clean renders, or with `spec.mined` of the `pool`'s, and with `spec.sampled`, on that many of
    `samples` per batch (plus the same noise) with their snapped targets; from a fresh optimizer;
    a finished stage only loads its weights."""
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
        renders = settings.decoder_batch - spec.sampled
        generator = torch.Generator().manual_seed(_batch_seed(settings.seed, noise, step))
        if spec.mined:
            assert pool is not None
            chosen = _choose_samples(pool["specks"], renders, settings.sampled_speck_share, generator)
            x, masks = _to_tensor(pool["images"][chosen].numpy()), pool["masks"][chosen]
            latents = pool["latents"][chosen]
        else:
            images, masks, _ = shapes.make_batch(_batch_seed(settings.seed, batches, step), renders)
            x, masks = _to_tensor(images), torch.from_numpy(masks)
            with torch.no_grad():
                latents = vae.encode(x).latent_dist.mean
        if spec.sampled:
            assert samples is not None
            flags = pool["sample_specks"] if pool is not None else samples["specks"]
            chosen = _choose_samples(flags, spec.sampled, settings.sampled_speck_share, generator)
            latents = torch.cat([latents, samples["latents"][chosen]])
            x = torch.cat([x, _to_tensor(samples["targets"][chosen].numpy())])
            masks = torch.cat([masks, samples["masks"][chosen]])
        sigma = torch.rand(len(x), 1, 1, 1, generator=generator) * settings.latent_noise
        noisy = latents + sigma * torch.randn(latents.shape, generator=generator) / scale
        recon = vae.decode(noisy).sample
        loss = decoder_loss(recon, x, masks, spec.worst_pixels, spec.diamond, spec.edge_blend)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        stage.log(step, loss)
    vae.requires_grad_(False)
    if spec.sampled:  # for the log: how many samples the finished stage still decodes with a speck
        assert samples is not None
        left = int(_decoded_specks(vae, samples["latents"], spec.edge_flags).sum())
        were = int((pool["sample_specks"] if pool is not None else samples["specks"]).sum())
        _log(f"{spec.name}: {left} of {len(samples['latents'])} samples decode with a speck (were {were})")
    if pool is not None:
        left = int(_decoded_specks(vae, pool["latents"], spec.edge_flags).sum())
        were = int(pool["specks"].sum())
        _log(f"{spec.name}: {left} of {len(pool['latents'])} pool renders decode with a speck (were {were})")
    stage.finish({"vae": vae.state_dict()})


def finetune(out: Path, settings: FinetuneSettings, base: Path, controlnet: Path | None = None) -> None:
    """Run (or resume) the decoder fine-tune of the model folder `base` and write OUT/model; the
    sampled stage draws a share of its latents through the ControlNet folder `controlnet`."""
    import torch

    torch.set_num_threads(1)  # the training loop is measured at one thread (20-40x faster here)
    began = time.time()
    components = load_components(base)
    work = out / "checkpoints"
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(asdict(settings), indent=2))
    stages = decoder_stages(settings)
    # a finished stage carries every earlier one: start from the last (its weights are loaded)
    finished = [i for i, spec in enumerate(stages) if (work / f"{spec.name}_done.pt").exists()]
    for spec in stages[max(finished, default=0) :]:
        needs_samples = spec.sampled and not (work / f"{spec.name}_done.pt").exists()
        samples = sample_latents(components, settings, work, controlnet) if needs_samples else None
        pool = None
        if spec.mined and needs_samples:
            assert samples is not None
            pool = mine_renders(components["vae"], settings, spec, work, samples)
        train_decoder(components, settings, spec, work, samples, pool)
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
    parser.add_argument(
        "--controlnet", type=Path, default=None,
        help="ControlNetModel folder: a share of the sampled stage's latents are drawn through it",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps")
    args = parser.parse_args(argv)
    settings = FinetuneSettings.smoke() if args.smoke else FinetuneSettings()
    settings.seed = args.seed
    finetune(args.out, settings, args.base, args.controlnet)


if __name__ == "__main__":
    main()

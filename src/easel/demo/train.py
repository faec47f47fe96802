"""Train the bundled demo model from scratch: `python -m easel.demo.train --out DIR`.

Why a script in the repo: the shipped weights must be reproducible by anyone, offline, on a
2-core CPU in about an hour. Stages, each resumable from checkpoints under DIR/checkpoints:

1. VAE (AutoencoderKL, 64x64x3 <-> 16x16x4) on procedurally drawn shapes (easel.demo.shapes).
2. Text encoder (CLIPTextModel, trained jointly) + UNet2DConditionModel on cached latents, with
   classifier-free-guidance caption dropout, partial captions, context swaps and weighted
   two-colour captions (so prompt weights decide colours; see _caption_plans), min-SNR loss
   weighting and an EMA of the weights (the EMA is what ships: it binds colours far better than
   the raw weights).
3. ControlNetModel.from_unet(unet) conditioned on the shape mask (white on black), UNet frozen.

Everything is a pure function of --seed: batches and noise are drawn from generators seeded by
(seed, stage, step), so a resumed run sees exactly the batches an uninterrupted one would.
Results are deterministic for one machine and torch build (float reductions may differ across
CPUs). The finished diffusers folders are written to DIR/model and DIR/controlnet.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from easel.demo import shapes

LATENT_SIZE = 16
TEXT_DIM = 64
# Near-zero terminal SNR (sqrt(alpha_bar_T) = 0.015 versus 0.068 for SD 1.5's beta_end 0.012):
# with tiny latents of flat colours, SD's schedule leaks the mean colour of the training image
# into the last timestep, so sampling from pure noise would drift towards grey. "trailing"
# spacing starts sampling at t=999, where training put pure noise.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
}
# Options of other schedulers, kept in the saved config so that Scheduler.from_config(...)
# (how easel and diffusers users switch samplers) gets SD 1.5's choices for them.
OTHER_SCHEDULER_OPTIONS: dict[str, Any] = {
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "clip_sample": False,
}


@dataclass
class Settings:
    """Training hyper-parameters (the defaults are what the shipped model was trained with)."""

    seed: int = 0
    vae_steps: int = 1400
    vae_batch: int = 16
    vae_lr: float = 1e-3
    latent_images: int = 12288
    unet_steps: int = 8500
    # The cosine decay ends here; the remaining steps run at the 10% floor, which the EMA
    # averages into a smoother model. (Set apart from unet_steps so that lengthening training
    # keeps the earlier steps, and their checkpoints, identical.)
    unet_decay_steps: int = 6000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup: int = 200
    caption_dropout: float = 0.1
    partial_captions: float = 0.1
    # Shares of UNet training captions that teach the UNet to read each colour from the colour
    # word's own vectors (see _caption_embeddings): context swaps, and two-colour captions with
    # the drawn colour Compel-weighted by a factor drawn from caption_weight_range.
    context_swaps: float = 0.25
    weighted_captions: float = 0.2
    caption_weight_range: tuple[float, float] = (1.1, 1.8)
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    controlnet_steps: int = 1500
    controlnet_batch: int = 32
    controlnet_lr: float = 5e-4
    checkpoint_every: int = 500
    probe_prompts: int = 24
    stats_images: int = 512

    @classmethod
    def smoke(cls) -> Settings:
        """A few steps of everything, for the test that the script runs end to end."""
        return cls(
            vae_steps=3,
            vae_batch=4,
            latent_images=16,
            unet_steps=4,
            unet_decay_steps=3,
            unet_batch=4,
            warmup=2,
            controlnet_steps=3,
            controlnet_batch=4,
            checkpoint_every=2,
            probe_prompts=2,
            stats_images=16,
        )


def build_tokenizer(directory: Path) -> Any:
    """Write and load a CLIPTokenizer with one whole-word token per caption word."""
    from transformers import CLIPTokenizer

    from easel.testing.tokenizer import write_clip_tokenizer

    write_clip_tokenizer(directory, shapes.vocabulary(), model_max_length=77)
    return CLIPTokenizer.from_pretrained(directory)


def build_components(seed: int = 0) -> dict[str, Any]:
    """The untrained model: SD 1.5 classes with tiny configs, initialised after manual_seed.

    Why these sizes: measured at 1 CPU thread, this UNet takes ~0.27 s per batch-32 training
    step on 16x16 latents, and UNet + ControlNet + VAE + text encoder stay under 20 MB in
    float32. `addition_embed_type="text"` adds an attention-pooled summary of the prompt to
    the timestep embedding (a standard UNet2DConditionModel option): background colour is a
    global property, and this path lets every ResNet see it instead of waiting for cross-
    attention to learn it (the background bound slowest in the calibration runs).
    """
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            intermediate_size=2 * TEXT_DIM,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=TEXT_DIM,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=shapes.IMAGE_SIZE,
    )
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )
    # DPM++ 2M: measured at step 6000 of the UNet stage on 64 held-out pairs at guidance 7.5,
    # it drew the prompted colours in 100% (Euler a also 100%) versus 92% for SD 1.5's PNDM,
    # which over-saturates at high guidance with this small model.
    scheduler = DPMSolverMultistepScheduler(**SCHEDULER_CONFIG)
    scheduler.register_to_config(**OTHER_SCHEDULER_OPTIONS)
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "unet": unet,
        "scheduler": scheduler,
    }


def build_controlnet(unet: Any) -> Any:
    """ControlNet copied from the UNet; its conditioning embedding downsamples 64 -> 16."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64))


def save_pipeline(components: dict[str, Any], directory: Path) -> None:
    """Save a StableDiffusionPipeline folder (safetensors, no safety checker)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(directory, safe_serialization=True)


def _to_tensor(images: np.ndarray) -> Any:
    """uint8 (N,H,W,3) -> float (N,3,H,W) in [-1, 1], the range diffusers' VAE works in."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _batch_seed(seed: int, stage: int, step: int) -> int:
    """A distinct data seed per (stage, step), so batches never depend on resume history."""
    return (seed * 1_000_003 + stage * 10_000_019 + step) % (2**63)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Ema:
    """Exponential moving average of a module's parameters (with the usual warm-up)."""

    def __init__(self, module: Any, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def update(self, module: Any, step: int) -> None:
        import torch

        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for key, value in module.state_dict().items():
                if value.dtype.is_floating_point:
                    self.shadow[key].mul_(decay).add_(value, alpha=1 - decay)
                else:
                    self.shadow[key].copy_(value)

    def copy_to(self, module: Any) -> None:
        module.load_state_dict(self.shadow)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic torch.save (checkpoints are private to training; the shipped model is safetensors)."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    import torch

    if not path.exists():
        return None
    return torch.load(path, weights_only=False)


class ResumableStage:
    """The bookkeeping every training stage shares (vae, unet and controlnet here; the decoder
    fine-tune, the inpainting UNet and the LoRA in easel.demo.finetune / train_inpaint / train_lora),
    so a stage can be interrupted and rerun: work/NAME.pt holds a checkpoint every `every` steps,
    work/NAME_done.pt the finished stage (where a stage keeps one). Each stage keeps its own setup,
    step, state and finish; batches are seeded by step, so a resumed run is the same run."""

    def __init__(self, work: Path, name: str, total: int, every: int) -> None:
        self.name, self.total, self.every = name, total, every
        self.checkpoint, self.final = work / f"{name}.pt", work / f"{name}_done.pt"
        self._start, self._began = 0, time.time()

    def finished(self) -> dict[str, Any] | None:
        """The finished stage's saved state (the caller loads it), or None: train it."""
        done = _load_checkpoint(self.final)
        if done is not None:
            _log(f"{self.name}: loaded finished stage")
        return done

    def steps(
        self,
        state: Callable[[], dict[str, Any]],
        restore: Callable[[dict[str, Any]], None],
        *,
        last: bool = False,
        after_checkpoint: Callable[[int], None] | None = None,
    ) -> Iterator[int]:
        """The steps still to run: from a checkpoint's step (handed to `restore` first) to total.
        After each, `state()` is saved with the step every `every` steps (and after the last one with
        `last`), then after_checkpoint(steps done) runs."""
        checkpoint = _load_checkpoint(self.checkpoint)
        if checkpoint is not None:
            restore(checkpoint)
            self._start = checkpoint["step"]
            _log(f"{self.name}: resumed at step {self._start}")
        self._began = time.time()
        for step in range(self._start, self.total):
            yield step
            if (step + 1) % self.every == 0 or (last and step + 1 == self.total):
                _save_checkpoint(self.checkpoint, {**state(), "step": step + 1})
                if after_checkpoint is not None:
                    after_checkpoint(step + 1)

    def log(self, step: int, loss: Any) -> None:
        """Every 50 steps: the loss and the time per step of this invocation."""
        if (step + 1) % 50 == 0:
            per_step = (time.time() - self._began) / (step + 1 - self._start)
            _log(f"{self.name} step {step + 1}/{self.total} loss {loss.item():.4f} ({per_step:.2f} s/step)")

    def finish(self, state: dict[str, Any], message: str | None = None) -> None:
        """Save the finished stage (a rerun loads it instead of training)."""
        _save_checkpoint(self.final, state)
        _log(message or f"{self.name}: done")


def train_vae(components: dict[str, Any], settings: Settings, work: Path) -> None:
    """Stage 1: reconstruction (L1 + MSE) with SD's tiny KL weight; sets scaling_factor."""
    import torch

    vae = components["vae"]
    stage = ResumableStage(work, "vae", settings.vae_steps, settings.checkpoint_every)
    done = stage.finished()
    if done is not None:
        vae.load_state_dict(done["vae"])
        vae.register_to_config(scaling_factor=done["scaling_factor"])
        return
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)

    def restore(checkpoint: dict[str, Any]) -> None:
        vae.load_state_dict(checkpoint["vae"])
        optimizer.load_state_dict(checkpoint["optimizer"])

    vae.train()
    for step in stage.steps(lambda: {"vae": vae.state_dict(), "optimizer": optimizer.state_dict()}, restore):
        for group in optimizer.param_groups:
            group["lr"] = settings.vae_lr * _lr_factor(step, settings.vae_steps, settings.warmup)
        images, _, _ = shapes.make_batch(_batch_seed(settings.seed, 1, step), settings.vae_batch)
        x = _to_tensor(images)
        torch.manual_seed(_batch_seed(settings.seed, 11, step))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        stage.log(step, loss)
    vae.eval()
    images, _, _ = shapes.make_batch(_batch_seed(settings.seed, 2, 0), settings.stats_images)
    with torch.no_grad():
        latents = vae.encode(_to_tensor(images)).latent_dist.mean
        recon = vae.decode(latents).sample
    scaling_factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    error = (recon - _to_tensor(images)).abs().mean().item() * 127.5
    stage.finish(
        {"vae": vae.state_dict(), "scaling_factor": scaling_factor},
        f"vae: done, mean abs error {error:.2f}/255, latent mean {latents.mean():.3f}, "
        f"scaling_factor {scaling_factor:.4f}",
    )


def encode_dataset(components: dict[str, Any], settings: Settings, work: Path) -> dict[str, Any]:
    """Draw a fixed training set and cache its (scaled) latents, so the UNet stages skip the VAE."""
    import torch

    path = work / "latents.pt"
    cached = _load_checkpoint(path)
    if cached is not None:
        return cached
    vae = components["vae"]
    chunks, masks_all, scenes_all = [], [], []
    chunk = 256
    for index in range(0, settings.latent_images, chunk):
        count = min(chunk, settings.latent_images - index)
        images, masks, scenes = shapes.make_batch(_batch_seed(settings.seed, 3, index), count)
        with torch.no_grad():
            chunks.append(vae.encode(_to_tensor(images)).latent_dist.mean * vae.config.scaling_factor)
        masks_all.append(torch.from_numpy(masks))
        scenes_all += [asdict(s) for s in scenes]
    data = {"latents": torch.cat(chunks), "masks": torch.cat(masks_all), "scenes": scenes_all}
    _save_checkpoint(path, data)
    _log(f"encoded {settings.latent_images} training images")
    return data


def _captions(
    scenes: list[dict[str, Any]], rng: np.random.Generator, settings: Settings, partial: bool
) -> list[str]:
    """Random phrasings, with CFG dropout to "" (and optionally partial captions)."""
    captions = []
    for scene in scenes:
        if rng.random() < settings.caption_dropout:
            captions.append("")
        else:
            captions.append(
                shapes.random_caption(
                    shapes.Scene(**scene), rng, settings.partial_captions if partial else 0.0
                )
            )
    return captions


def _token_ids(components: dict[str, Any], captions: list[str]) -> Any:
    tokenizer = components["tokenizer"]
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def _encode_text(components: dict[str, Any], captions: list[str]) -> Any:
    return components["text_encoder"](_token_ids(components, captions))[0]


@dataclass(frozen=True)
class CaptionPlan:
    """How one training caption is embedded.

    plain: `text` encoded as it is. swap: `text` is the true caption and `context` the same
    phrasing with other colours; the embedding is the context's, except at the positions where the
    two differ (the colour words), which keep the true caption's vectors. weighted: `text` names two
    colours for the shape and the vectors at `weighted_word` are Compel-weighted by `weight`.
    """

    text: str
    context: str | None = None
    weighted_word: str | None = None
    weight: float = 1.0


def _other_colour(rng: np.random.Generator, *avoid: str) -> str:
    return str(rng.choice([c for c in shapes.COLORS if c not in avoid]))


def _caption_plans(
    scenes: list[dict[str, Any]], rng: np.random.Generator, settings: Settings
) -> list[CaptionPlan]:
    """The UNet stage's captions: CFG dropout and partial captions as in _captions, plus context
    swaps and weighted two-colour captions.

    Why: CLIP's text encoder is causal, so every token after a colour word carries that colour
    too, and a UNet trained only on consistent captions learns to read the colour from those later
    tokens; Compel's and A1111's weights above 1 scale the word's own vectors, which such a UNet
    ignores (measured on the first release: `++` drew the weighted colour in 34% of images, no
    better than none). A swap makes the word the only truth; a weighted two-colour caption makes the
    weight decide which of two named colours is drawn.
    """
    plans = []
    for scene in scenes:
        draw = rng.random()
        if draw < settings.context_swaps:
            template = shapes.TEMPLATES[int(rng.integers(len(shapes.TEMPLATES)))]
            true = shapes.Scene(**scene)
            colour = _other_colour(rng, true.color)
            swapped = shapes.Scene(
                **{**scene, "color": colour, "background": _other_colour(rng, true.background, colour)}
            )
            plans.append(CaptionPlan(true.caption(template), context=swapped.caption(template)))
        elif draw < settings.context_swaps + settings.weighted_captions:
            template = shapes.TEMPLATES[int(rng.integers(len(shapes.TEMPLATES)))]
            true = shapes.Scene(**scene)
            distractor = _other_colour(rng, true.color, true.background)
            pair = f"{true.color} {distractor}" if rng.random() < 0.5 else f"{distractor} {true.color}"
            weight = float(rng.uniform(*settings.caption_weight_range))
            text = shapes.Scene(**{**scene, "color": pair}).caption(template)
            plans.append(CaptionPlan(text, weighted_word=true.color, weight=weight))
        else:
            plans.append(CaptionPlan(_captions([scene], rng, settings, partial=True)[0]))
    return plans


def _caption_embeddings(components: dict[str, Any], plans: list[CaptionPlan]) -> Any:
    """Embed the plans in three text-encoder calls (true texts, swap contexts, the empty prompt),
    keeping gradients: the text encoder trains with the UNet. Weighting is Compel's for weights
    above 1: empty + (z - empty) * weight at the weighted word's positions (the other positions go
    through the same formula with weight 1, equal to z up to float rounding)."""
    import torch

    ids = _token_ids(components, [plan.text for plan in plans])
    embeddings = components["text_encoder"](ids)[0]
    swaps = [i for i, plan in enumerate(plans) if plan.context is not None]
    weighted = [i for i, plan in enumerate(plans) if plan.weighted_word is not None]
    if not swaps and not weighted:
        return embeddings
    rows = list(embeddings.unbind(0))
    if swaps:
        context_ids = _token_ids(components, [plans[i].context for i in swaps])  # type: ignore[misc]
        contexts = components["text_encoder"](context_ids)[0]
        for row, i in enumerate(swaps):
            keep = (ids[i] != context_ids[row])[:, None]
            rows[i] = torch.where(keep, embeddings[i], contexts[row])
    if weighted:
        empty = components["text_encoder"](_token_ids(components, [""]))[0][0]
        tokenizer = components["tokenizer"]
        for i in weighted:
            word = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(plans[i].weighted_word)[0])
            scale = torch.where(ids[i] == word, plans[i].weight, 1.0)[:, None]
            rows[i] = empty + (rows[i] - empty) * scale
    return torch.stack(rows)


def _noisy(
    components: dict[str, Any], latents: Any, generator: Any, settings: Settings
) -> tuple[Any, Any, Any, Any]:
    """Noise, timesteps, noisy latents and min-SNR weights for an epsilon-prediction loss."""
    import torch
    from diffusers import DDPMScheduler

    # The training forward process is DDPM's, whatever sampler ships: DDPM's add_noise is a
    # pure function of the timestep (multistep samplers' add_noise depends on set_timesteps).
    scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
    )
    noisy = scheduler.add_noise(latents, noise, timesteps)
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    weights = torch.clamp(snr, max=settings.min_snr_gamma) / snr
    return noise, timesteps, noisy, weights


def probe(
    components: dict[str, Any], count: int, seed: int = 12345, steps: int = 20, guidance: float = 7.5
) -> dict[str, float]:
    """Quick adherence check during training: `count` canonical prompts, fraction correct."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(seed)
    scenes = [shapes.random_scene(rng) for _ in range(count)]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(count)]
    with torch.no_grad():
        images = pipe(
            [s.caption() for s in scenes],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="np",
        ).images
    read = [shapes.read_scene((np.clip(im, 0, 1) * 255).round().astype(np.uint8)) for im in images]
    pairs = list(zip(read, scenes, strict=True))
    return {
        "shape_color": float(np.mean([r["shape_color"] == s.color for r, s in pairs])),
        "background": float(np.mean([r["background"] == s.background for r, s in pairs])),
        "shape": float(np.mean([r["shape"] == s.shape for r, s in pairs])),
    }


def train_unet(components: dict[str, Any], data: dict[str, Any], settings: Settings, work: Path) -> None:
    """Stage 2: UNet + text encoder, epsilon prediction, min-SNR weights, EMA; EMA ships."""
    import torch

    unet, text_encoder = components["unet"], components["text_encoder"]
    stage = ResumableStage(work, "unet", settings.unet_steps, settings.checkpoint_every)
    done = stage.finished()
    if done is not None:
        unet.load_state_dict(done["unet"])
        text_encoder.load_state_dict(done["text_encoder"])
        return
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.unet_lr, weight_decay=0.01)
    ema_unet = Ema(unet, settings.ema_decay)
    ema_text = Ema(text_encoder, settings.ema_decay)

    def state() -> dict[str, Any]:
        return {
            "unet": unet.state_dict(),
            "text_encoder": text_encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema_unet": ema_unet.shadow,
            "ema_text": ema_text.shadow,
        }

    def restore(checkpoint: dict[str, Any]) -> None:
        unet.load_state_dict(checkpoint["unet"])
        text_encoder.load_state_dict(checkpoint["text_encoder"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        ema_unet.shadow, ema_text.shadow = checkpoint["ema_unet"], checkpoint["ema_text"]

    def probe_ema(done_steps: int) -> None:  # the EMA weights' pictures, then back to the raw ones
        if not settings.probe_prompts:
            return
        raw = {k: v.detach().clone() for k, v in unet.state_dict().items()}
        raw_text = {k: v.detach().clone() for k, v in text_encoder.state_dict().items()}
        ema_unet.copy_to(unet)
        ema_text.copy_to(text_encoder)
        unet.eval()
        text_encoder.eval()
        _log(f"probe (EMA, guidance 7.5) at step {done_steps}: {probe(components, settings.probe_prompts)}")
        unet.load_state_dict(raw)
        text_encoder.load_state_dict(raw_text)

    latents, scenes = data["latents"], data["scenes"]
    for step in stage.steps(state, restore, last=True, after_checkpoint=probe_ema):
        unet.train()
        text_encoder.train()
        for group in optimizer.param_groups:
            group["lr"] = settings.unet_lr * _lr_factor(step, settings.unet_decay_steps, settings.warmup)
        rng = np.random.default_rng(_batch_seed(settings.seed, 4, step))
        index = rng.integers(len(scenes), size=settings.unet_batch)
        plans = _caption_plans([scenes[i] for i in index], rng, settings)
        generator = torch.Generator().manual_seed(_batch_seed(settings.seed, 5, step))
        x0 = latents[torch.from_numpy(index)]
        noise, timesteps, noisy, weights = _noisy(components, x0, generator, settings)
        prediction = unet(noisy, timesteps, _caption_embeddings(components, plans)).sample
        loss = (weights * (prediction - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_unet.update(unet, step)
        ema_text.update(text_encoder, step)
        stage.log(step, loss)
    ema_unet.copy_to(unet)
    ema_text.copy_to(text_encoder)
    unet.eval()
    text_encoder.eval()
    stage.finish({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict()})


def train_controlnet(components: dict[str, Any], data: dict[str, Any], settings: Settings, work: Path) -> Any:
    """Stage 3: ControlNet on the shape mask; UNet and text encoder frozen; EMA ships."""
    import torch

    unet, text_encoder = components["unet"], components["text_encoder"]
    # The conditioning embedding is initialised from the global RNG: seed it here, or its
    # weights would depend on which stages this invocation ran (i.e. on resumes).
    torch.manual_seed(_batch_seed(settings.seed, 8, 0))
    controlnet = build_controlnet(unet)
    stage = ResumableStage(work, "controlnet", settings.controlnet_steps, settings.checkpoint_every)
    done = stage.finished()
    if done is not None:
        controlnet.load_state_dict(done["controlnet"])
        return controlnet
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=settings.controlnet_lr, weight_decay=0.01)
    ema = Ema(controlnet, settings.ema_decay)

    def state() -> dict[str, Any]:
        return {"controlnet": controlnet.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.shadow}

    def restore(checkpoint: dict[str, Any]) -> None:
        controlnet.load_state_dict(checkpoint["controlnet"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        ema.shadow = checkpoint["ema"]

    latents, masks, scenes = data["latents"], data["masks"], data["scenes"]
    controlnet.train()
    for step in stage.steps(state, restore):
        for group in optimizer.param_groups:
            group["lr"] = settings.controlnet_lr * _lr_factor(
                step, settings.controlnet_steps, settings.warmup
            )
        rng = np.random.default_rng(_batch_seed(settings.seed, 6, step))
        index = rng.integers(len(scenes), size=settings.controlnet_batch)
        captions = _captions([scenes[i] for i in index], rng, settings, partial=False)
        generator = torch.Generator().manual_seed(_batch_seed(settings.seed, 7, step))
        select = torch.from_numpy(index)
        noise, timesteps, noisy, weights = _noisy(components, latents[select], generator, settings)
        # The pipeline hands the ControlNet the control image in [0, 1], 3 channels.
        control = masks[select].float()[:, None].expand(-1, 3, -1, -1)
        with torch.no_grad():
            text = _encode_text(components, captions)
        down, mid = controlnet(noisy, timesteps, text, controlnet_cond=control, return_dict=False)
        prediction = unet(
            noisy, timesteps, text, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
        loss = (weights * (prediction - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        ema.update(controlnet, step)
        stage.log(step, loss)
    ema.copy_to(controlnet)
    controlnet.eval()
    stage.finish({"controlnet": controlnet.state_dict()})
    return controlnet


def train(out: Path, settings: Settings, untrained: bool = False) -> None:
    """Run (or resume) all stages and write OUT/model and OUT/controlnet."""
    import torch

    torch.set_num_threads(1)
    began = time.time()
    components = build_components(settings.seed)
    if untrained:
        save_pipeline(components, out / "model")
        build_controlnet(components["unet"]).save_pretrained(out / "controlnet", safe_serialization=True)
        return
    work = out / "checkpoints"
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(asdict(settings), indent=2))
    train_vae(components, settings, work)
    components["vae"].requires_grad_(False)
    data = encode_dataset(components, settings, work)
    _log(f"stage vae+encode finished after {time.time() - began:.0f} s")
    train_unet(components, data, settings, work)
    _log(f"stage unet finished after {time.time() - began:.0f} s")
    controlnet = train_controlnet(components, data, settings, work)
    components["unet"].requires_grad_(True)
    components["text_encoder"].requires_grad_(True)
    for name in ("model", "controlnet"):
        if (out / name).exists():
            shutil.rmtree(out / name)
    save_pipeline(components, out / "model")
    controlnet.save_pretrained(out / "controlnet", safe_serialization=True)
    _log(
        f"all stages finished after {time.time() - began:.0f} s (this invocation); "
        f"wrote {out / 'model'} and {out / 'controlnet'}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder: model/, controlnet/ and checkpoints/ go here"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps on tiny settings")
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="only write the randomly initialised model (same architecture)",
    )
    args = parser.parse_args(argv)
    settings = Settings.smoke() if args.smoke else Settings()
    settings.seed = args.seed
    train(args.out, settings, untrained=args.untrained)


if __name__ == "__main__":
    main()

"""Live previews: every N denoising steps, a picture of the current latents (issue 18).

Two ways to turn latents into a picture, chosen per run by `preview_method`:

    linear  a 4x3 latent-to-RGB matrix plus a bias (no weights, well under a millisecond).
            SD 1.5 and SDXL VAEs (the published architectures) use the factors ComfyUI and
            A1111 ("Approx cheap") use. Any other latent space -- the bundled demo model's own
            small VAE, Kandinsky 2.2's MoVQ, a test's tiny VAE -- gets a least-squares map fitted
            once per VAE, by encoding a picture of coloured blocks with that VAE's encoder and
            solving latents -> colours; it is cached in the loaded model's state (it goes when
            the model is evicted). The picture is at latent resolution (1/8 of the image for SD).
    taesd   diffusers' AutoencoderTiny decoder (madebyollin/taesd for SD 1.5, taesdxl for
            SDXL), full resolution, only when it is already in the Hugging Face cache: never a
            download, never a network probe. Loaded once per engine and kept.
    auto    taesd when it is cached for the family and the model's VAE is the published one
            (TAESD was distilled from it: the demo model's own VAE, say, gets linear), else linear.
    none    no previews.

A preview is made from the first image of the batch, every `every` steps and never after the
last step (the final image follows). The latents are only read, so the final pixels do not
change. Anything that goes wrong making a preview is logged and the preview skipped: a preview
never fails a run.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger("easel.previews")

PREVIEW_METHODS = ("auto", "linear", "taesd", "none")
# TAESD decoders by family name (their latent spaces); other families have none
TAESD_REPOS = {
    "sd15": "madebyollin/taesd",
    "sdxl": "madebyollin/taesdxl",
    "sdxl_refiner": "madebyollin/taesdxl",
}
TAESD_FILES = ("config.json", "diffusion_pytorch_model.safetensors")

# Published latent -> RGB factors (rows: latent channels; columns: R, G, B) for latents as the
# UNet sees them (VAE output x scaling factor); output in [-1, 1]. SD 1.5: ComfyUI's
# latent_formats.SD15 (no bias); SDXL: ComfyUI's latent_formats.SDXL with its bias.
SD15_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
SD15_BIAS = (0.0, 0.0, 0.0)
SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_BIAS = (0.1084, -0.0175, -0.0011)
# The published VAEs these factors belong to: (block_out_channels, scaling factor)
PUBLISHED = {
    ((128, 256, 512, 512), 0.18215): (SD15_FACTORS, SD15_BIAS),
    ((128, 256, 512, 512), 0.13025): (SDXL_FACTORS, SDXL_BIAS),
}
STATE_KEY = "preview_linear"  # loaded.state: {id(vae): (weakref(vae), LinearMap)}


def check_method(method: str) -> None:
    if method not in PREVIEW_METHODS:
        raise InvalidRequest(
            f"invalid preview_method={method!r}: use one of {', '.join(PREVIEW_METHODS)}",
            field="preview_method",
            value=method,
        )


def taesd_repo(family_name: str) -> str | None:
    """The TAESD repo for a family's latent space, None when there is none."""
    return TAESD_REPOS.get(family_name)


def taesd_cached(repo: str) -> bool:
    """Whether `repo`'s config and weights are in the Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(repo, name), str) for name in TAESD_FILES)


def resolve_method(method: str, family_name: str) -> str:
    """The method a run uses, before loading: "auto" stays "auto" when the family's TAESD is
    cached (make_previewer then looks at the VAE), else "linear"; "taesd" is refused (naming
    preview_method) when the family has none or it is not in the cache."""
    check_method(method)
    repo = taesd_repo(family_name)
    if method == "auto":
        return "auto" if repo is not None and taesd_cached(repo) else "linear"
    if method == "taesd":
        if repo is None:
            raise InvalidRequest(
                f"invalid preview_method='taesd': there is no TAESD for {family_name} latents "
                f"(TAESD exists for: {', '.join(sorted(set(TAESD_REPOS)))}); use linear or auto",
                field="preview_method",
                value=method,
            )
        if not taesd_cached(repo):
            raise InvalidRequest(
                f"invalid preview_method='taesd': {repo} is not in the Hugging Face cache (easel never "
                f"downloads it for previews); fetch it once with `huggingface-cli download {repo}`, "
                "or use linear or auto",
                field="preview_method",
                value=method,
            )
    return method


@dataclass(frozen=True)
class LinearMap:
    """RGB in [-1, 1] = latents . factors + bias, per latent pixel."""

    factors: tuple[tuple[float, ...], ...]  # one row per latent channel: (R, G, B)
    bias: tuple[float, float, float]

    def image(self, latents: Any) -> Image | None:
        import torch
        from PIL import Image

        first = latents[0].detach().to("cpu", torch.float32)
        if first.shape[0] != len(self.factors):
            return None
        factors = torch.tensor(self.factors, dtype=torch.float32)
        rgb = torch.einsum("chw,cr->hwr", first, factors) + torch.tensor(self.bias, dtype=torch.float32)
        pixels = ((rgb + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()
        return Image.fromarray(pixels, "RGB")


def _vae_of(pipe: Any) -> Any:
    vae = getattr(pipe, "movq", None)  # Kandinsky's MoVQ
    if vae is None:
        vae = getattr(pipe, "vae", None)
    if vae is None:
        raise ValueError(f"{type(pipe).__name__} has no VAE to fit a preview map to")
    return vae


def published_factors(vae: Any) -> tuple[Any, Any] | None:
    """(factors, bias) when `vae` is the published SD 1.5 or SDXL VAE (by its architecture and
    scaling factor), else None."""
    if type(vae).__name__ != "AutoencoderKL":
        return None
    config = vae.config
    scaling = round(float(config.get("scaling_factor") or 0), 5)
    return PUBLISHED.get((tuple(config.get("block_out_channels") or ()), scaling))


def linear_map(pipe: Any, state: dict[str, Any]) -> LinearMap:
    """The linear map for `pipe`'s latent space: published factors for the published SD/SDXL
    VAEs, else fitted to its VAE (MoVQ for Kandinsky) once and kept in `state`."""
    vae = _vae_of(pipe)
    known = published_factors(vae)
    if known is not None:
        return LinearMap(*known)
    fitted = state.setdefault(STATE_KEY, {})
    entry = fitted.get(id(vae))
    if entry is not None and entry[0]() is vae:
        return entry[1]
    made = fit_linear_map(vae)
    fitted[id(vae)] = (weakref.ref(vae), made)
    return made


def _to_latents(vae: Any, pixels: Any) -> Any:
    """Latents as the UNet sees them for `pixels` in [-1, 1] (what the pipelines' img2img does)."""
    if type(vae).__name__ == "VQModel":  # Kandinsky's MoVQ: its encoder output, unscaled
        return vae.encode(pixels).latents
    latents = vae.encode(pixels).latent_dist.mean
    config = vae.config
    mean, std = config.get("latents_mean"), config.get("latents_std")
    scaling = float(config.get("scaling_factor") or 1.0)
    if mean is not None and std is not None:
        mean_t = latents.new_tensor(mean).view(1, -1, 1, 1)
        std_t = latents.new_tensor(std).view(1, -1, 1, 1)
        return (latents - mean_t) * scaling / std_t
    shift = config.get("shift_factor")
    return (latents - float(shift or 0.0)) * scaling


def fit_linear_map(vae: Any, blocks: int = 8, seed: int = 0) -> LinearMap:
    """Least-squares latent -> RGB map for `vae`: a picture of `blocks` x `blocks` coloured
    squares (the 8 corners of the RGB cube among them, the rest random) is encoded, and the
    latents well inside each square are matched to its colour."""
    import torch

    factor = _downsampling(vae)
    cell = 4  # latent pixels per block side; the centre 2x2 of each block is used
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(blocks * blocks, 3, generator=generator)
    corners = torch.tensor([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=torch.float32)
    colours[: len(corners)] = corners
    grid = colours.view(blocks, blocks, 3).permute(2, 0, 1).unsqueeze(0)  # 1 x 3 x blocks x blocks
    pixels = grid.repeat_interleave(cell * factor, 2).repeat_interleave(cell * factor, 3) * 2 - 1
    parameter = next(vae.parameters())
    with torch.inference_mode():
        latents = _to_latents(vae, pixels.to(parameter.device, parameter.dtype)).float().cpu()
    channels = latents.shape[1]
    inner = torch.zeros(cell, cell, dtype=torch.bool)
    inner[1:3, 1:3] = True
    mask = inner.repeat(blocks, blocks)
    samples = latents[0].permute(1, 2, 0)[mask]  # n x channels
    targets = (grid[0].repeat_interleave(cell, 1).repeat_interleave(cell, 2) * 2 - 1).permute(1, 2, 0)[mask]
    design = torch.cat([samples, torch.ones(samples.shape[0], 1)], dim=1)
    solution = torch.linalg.lstsq(design, targets).solution  # (channels + 1) x 3
    factors = tuple(tuple(float(v) for v in row) for row in solution[:channels].tolist())
    bias = tuple(float(v) for v in solution[channels].tolist())
    return LinearMap(factors, (bias[0], bias[1], bias[2]))


def _downsampling(vae: Any) -> int:
    """Pixels per latent pixel of `vae` (2 per down block after the first)."""
    blocks = len(vae.config.get("block_out_channels") or (1, 1, 1, 1))
    return 2 ** (blocks - 1)


class TaesdDecoder:
    """An AutoencoderTiny's decoder: latents (as the UNet sees them) -> full-size picture."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def image(self, latents: Any) -> Image | None:
        import torch
        from PIL import Image

        parameter = next(self.module.parameters())
        with torch.inference_mode():
            decoded = self.module.decode(latents[:1].to(parameter.device, parameter.dtype)).sample
        pixels = ((decoded[0].float() + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)
        return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy(), "RGB")


def load_taesd(repo: str, device: str, dtype: Any) -> TaesdDecoder:
    """AutoencoderTiny `repo` from the HF cache only (local_files_only)."""
    from diffusers import AutoencoderTiny

    module = AutoencoderTiny.from_pretrained(
        repo, local_files_only=True, use_safetensors=True, torch_dtype=dtype
    )
    module.to(device=device)
    module.eval()
    return TaesdDecoder(module)


class Previewer:
    """Made per run: `__call__(step, total, tensors)` (1-based step of `total`, the step
    callback's tensors) -> a preview of the first image, or None at the other steps."""

    def __init__(self, every: int, method: str, decode: Callable[[Any], Image | None]) -> None:
        self.every, self.method, self.decode = every, method, decode

    def __call__(self, step: int, total: int, tensors: Mapping[str, Any]) -> Image | None:
        if self.every <= 0 or step % self.every or step >= total:
            return None
        latents = tensors.get("latents")
        if latents is None or getattr(latents, "ndim", 0) != 4:
            return None
        try:
            return self.decode(latents)
        except Exception:  # a preview never fails a run
            log.warning("preview at step %d skipped", step, exc_info=True)
            return None


def make_previewer(
    every: int,
    method: str,
    pipe: Any,
    state: dict[str, Any],
    taesd: Callable[[], TaesdDecoder] | None,
) -> Previewer | None:
    """The previewer of a run (None: previews off). `method` is resolved (resolve_method);
    `taesd` loads (or returns the kept) decoder for method "taesd"."""
    if every <= 0 or method == "none":
        return None
    if method == "auto":  # TAESD is cached; it decodes the published VAE's latents only
        vae = getattr(pipe, "vae", None)
        method = "taesd" if vae is not None and published_factors(vae) is not None else "linear"
    if method == "taesd":
        assert taesd is not None
        return Previewer(every, method, taesd().image)
    vae = getattr(pipe, "vae", None)
    if vae is not None and "temperal_downsample" in vae.config:
        # a video-style VAE (Qwen-Image's): its latents have a frames axis the fit cannot encode into,
        # and the pipeline's are packed besides; no previews, and nothing to warn about
        return None
    try:
        mapping = linear_map(pipe, state)
    except Exception:  # no VAE to fit, or one that cannot encode: no previews, never a failed run
        log.warning("no linear preview map for %s", type(pipe).__name__, exc_info=True)
        return None
    return Previewer(every, "linear", mapping.image)

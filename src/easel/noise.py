"""Initial latents for variation seeds (A1111's subseed, subseed_strength, seed_resize_from).

Why easel draws the noise itself: a variation blends the noise of image i's seed with the noise
of its variation seed, which the pipeline cannot do from its generators alone. So the noise is
drawn here exactly as diffusers' prepare_latents draws it (randn on the CPU generator of image i,
shape (1, C, H/8, W/8), in the pipeline's dtype), blended, and passed as `latents=`. The main
noise comes from the very generator the pipeline is then given, so the generator's state after it
is what it would have been (ancestral samplers draw their step noise from it): strength 0 without
a resize gives the very latents, and pixels, of a run without variation.

A1111's semantics (its processing.create_random_tensors, rewritten):
- image i blends noise(seed + i) and noise(variation_seed + i) by spherical interpolation at
  variation_strength (0: the seed's noise, 1: the variation seed's), linear where the two are
  nearly parallel;
- with seed_resize_from (w, h), both are drawn at that size and the blend is pasted, centred
  (cropped when larger), into noise(seed + i) at the target size: the composition the seed
  had at the old size carries over to the new one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from easel.request import GenerationRequest

PARALLEL_DOT = 0.9995  # A1111's threshold: above it, slerp falls back to lerp


def uses_variation(request: GenerationRequest) -> bool:
    """Whether the request asks for anything but the plain noise of its seeds."""
    return request.variation_seed is not None or request.seed_resize_from is not None


def slerp(strength: float, low: Any, high: Any) -> Any:
    """Spherical interpolation from `low` (0) to `high` (1), over each tensor as one vector;
    linear where they are nearly parallel (|cos| > 0.9995), where slerp is ill-conditioned."""
    import torch

    if strength == 0:
        return low
    if strength == 1:
        return high
    a, b = low.flatten().double(), high.flatten().double()
    dot = float(torch.dot(a / a.norm(), b / b.norm()))
    if abs(dot) > PARALLEL_DOT:
        blended = (1 - strength) * a + strength * b
    else:
        omega = torch.acos(torch.tensor(dot, dtype=torch.float64))
        sin = torch.sin(omega)
        blended = (torch.sin((1 - strength) * omega) / sin) * a + (torch.sin(strength * omega) / sin) * b
    return blended.reshape(low.shape).to(low.dtype)


def paste_centred(source: Any, target: Any) -> Any:
    """`source` (1, C, h, w) pasted into a copy of `target` (1, C, H, W), centred; where `source` is
    larger, its centre is what fits (A1111's seed resize)."""
    result = target.clone()
    height, width = target.shape[-2:]
    src_height, src_width = source.shape[-2:]

    def spans(inner: int, outer: int) -> tuple[slice, slice]:
        offset = (outer - inner) // 2
        if offset >= 0:
            return slice(offset, offset + inner), slice(0, inner)
        return slice(0, outer), slice(-offset, -offset + outer)

    rows_to, rows_from = spans(src_height, height)
    cols_to, cols_from = spans(src_width, width)
    result[..., rows_to, cols_to] = source[..., rows_from, cols_from]
    return result


def initial_latents(pipe: Any, request: GenerationRequest, generators: list[Any]) -> Any | None:
    """The initial latents (N, C, H/f, W/f) for a text-to-image request with variation fields,
    drawn from `generators` (one per image, the ones the pipeline gets) as diffusers draws them;
    None when the request uses none (the pipeline draws its own, as always)."""
    if not uses_variation(request):
        return None
    import torch

    assert request.seed is not None and request.width is not None and request.height is not None
    channels = int(pipe.unet.config.in_channels)
    factor = int(pipe.vae_scale_factor)
    dtype = pipe.unet.dtype
    shape = (1, channels, request.height // factor, request.width // factor)
    from_width, from_height = request.seed_resize_from or (request.width, request.height)
    from_shape = (1, channels, from_height // factor, from_width // factor)
    strength = request.variation_strength if request.variation_seed is not None else 0.0

    def noise(seed: int, size: tuple[int, ...]) -> Any:
        return torch.randn(size, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype)

    latents = []
    for index, generator in enumerate(generators):
        # the pipeline's own draw, from its own generator: its state afterwards is as without variation
        main = torch.randn(shape, generator=generator, device="cpu", dtype=dtype)
        if from_shape == shape and strength == 0:
            latents.append(main)
            continue
        base = main if from_shape == shape else noise(request.seed + index, from_shape)
        if strength:
            assert request.variation_seed is not None
            base = slerp(strength, base, noise(request.variation_seed + index, from_shape))
        latents.append(base if from_shape == shape else paste_centred(base, main))
    return torch.cat(latents)

"""Tiny, randomly initialised ControlNets for the tiny FLUX.1 and SD 3.5 medium, under repo ids of
real ControlNets for those bases.

The recipes follow diffusers' own tests (FluxControlNetPipelineFastTests / StableDiffusion3ControlNet-
PipelineFastTests get_dummy_components), shaped like easel.testing.tiny_flux's and tiny_sd3's
transformers so the ControlNets fit them: the same packed-latent width, heads, head size, text and
pooled dimensions, rope axes (FLUX) and patch size, MMDiT-X block and qk norm (SD 3.5 medium).

Why the zero modules are randomised: a fresh ControlNet's output projections (and its control-image
input embedder) are zero, so it changes nothing, and a test could not tell a working ControlNet from an
ignored one. Each id is seeded differently, so two units are two different models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easel.testing.tiny_models import install_into_hf_cache

# FLUX.1-dev ControlNets: two single-purpose (the InstantX layout: the control image VAE-encoded and
# packed) and one union (num_mode control types, as InstantX's and Shakker-Labs' union models)
FLUX_CANNY_ID = "InstantX/FLUX.1-dev-Controlnet-Canny"
FLUX_DEPTH_ID = "Shakker-Labs/FLUX.1-dev-ControlNet-Depth"
FLUX_UNION_ID = "InstantX/FLUX.1-dev-Controlnet-Union"
FLUX_UNION_MODES = 10  # InstantX's union config (7 of them trained: canny ... lq)
SD3_CANNY_ID = "InstantX/SD3-Controlnet-Canny"


def _randomised(module: Any, layers: list[Any], seed: int) -> Any:
    """`module` with the weights and biases of `layers` (its zero-initialised outputs) drawn from a
    seeded generator, scaled small so the steered images stay images."""
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            for parameter in (layer.weight, layer.bias):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return module


def build_tiny_flux_controlnet(*, seed: int, union: bool = False) -> Any:
    """A FluxControlNetModel for easel.testing.tiny_flux's transformer (dev: guidance_embeds)."""
    import torch
    from diffusers import FluxControlNetModel

    from easel.testing.tiny_flux import TRANSFORMER_CONFIG

    torch.manual_seed(seed)
    controlnet = FluxControlNetModel(
        **TRANSFORMER_CONFIG, guidance_embeds=True, num_mode=FLUX_UNION_MODES if union else None
    )
    outputs = [
        *controlnet.controlnet_blocks,
        *controlnet.controlnet_single_blocks,
        controlnet.controlnet_x_embedder,
    ]
    return _randomised(controlnet, outputs, seed)


def build_tiny_sd3_controlnet(*, seed: int) -> Any:
    """An SD3ControlNetModel for easel.testing.tiny_sd3's 3.5-medium transformer (one block)."""
    import torch
    from diffusers import SD3ControlNetModel

    from easel.testing.tiny_sd3 import TRANSFORMER_CONFIG

    torch.manual_seed(seed)
    controlnet = SD3ControlNetModel(**{**TRANSFORMER_CONFIG, "num_layers": 1})
    outputs = [*controlnet.controlnet_blocks, controlnet.pos_embed_input.proj]
    return _randomised(controlnet, outputs, seed)


def install_tiny_dit_controlnets(hf_home: Path) -> dict[str, Path]:
    """Install the tiny FLUX.1 (canny, depth, union) and SD 3.5 (canny) ControlNets under their
    repo ids; id -> snapshot folder."""
    models = {
        FLUX_CANNY_ID: build_tiny_flux_controlnet(seed=200),
        FLUX_DEPTH_ID: build_tiny_flux_controlnet(seed=201),
        FLUX_UNION_ID: build_tiny_flux_controlnet(seed=202, union=True),
        SD3_CANNY_ID: build_tiny_sd3_controlnet(seed=210),
    }
    return {repo_id: install_into_hf_cache(model, hf_home, repo_id) for repo_id, model in models.items()}

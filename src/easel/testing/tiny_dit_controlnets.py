"""Tiny, randomly initialised ControlNets for the tiny FLUX.1, SD 3.5 medium, Qwen-Image and Z-Image
Turbo, under repo ids of real ControlNets for those bases.

The recipes follow diffusers' own tests (FluxControlNetPipelineFastTests / StableDiffusion3ControlNet-
PipelineFastTests / QwenImageControlNetPipelineFastTests / ZImageControlNetPipelineFastTests
get_dummy_components), shaped like easel.testing.tiny_flux's, tiny_sd3's, tiny_qwen_image's and
tiny_zimage's transformers so the ControlNets fit them: the same packed-latent width, heads, head size,
text and pooled dimensions, rope axes (FLUX, Qwen-Image) and patch size, MMDiT-X block and qk norm
(SD 3.5 medium). A Z-Image ControlNet has no embedders or refiners of its own (it borrows the
transformer's when a pipeline is built), so only its control layers and control input are here.

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
QWEN_UNION_ID = "InstantX/Qwen-Image-ControlNet-Union"  # no control type: it reads it from the image
# Z-Image Turbo's union ControlNets, in diffusers' layout under the repos diffusers reads their configs
# from when loading alibaba-pai's single files (1.0: control layers only; 2.1: a control refiner too,
# and a wider control input the pipeline pads with zeros)
ZIMAGE_UNION_ID = "hlky/Z-Image-Turbo-Fun-Controlnet-Union"
ZIMAGE_UNION_21_ID = "hlky/Z-Image-Turbo-Fun-Controlnet-Union-2.1"


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


def build_tiny_qwen_image_controlnet(*, seed: int) -> Any:
    """A QwenImageControlNetModel for easel.testing.tiny_qwen_image's transformer (one block)."""
    import torch
    from diffusers import QwenImageControlNetModel

    from easel.testing.tiny_qwen_image import LATENT_CHANNELS

    torch.manual_seed(seed)
    controlnet = QwenImageControlNetModel(
        patch_size=2,
        in_channels=4 * LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        axes_dims_rope=(8, 4, 4),
    )
    return _randomised(controlnet, [*controlnet.controlnet_blocks, controlnet.controlnet_x_embedder], seed)


def build_tiny_zimage_controlnet(*, seed: int, refiner: bool = False) -> Any:
    """A ZImageControlNetModel for easel.testing.tiny_zimage's transformer (dim 32, 2 heads, 2 layers,
    1 refiner layer): control layers at both layers; `refiner`: 2.1's layout, a control refiner whose
    hints go to the transformer's refiner layer, and a 33-channel control input."""
    import torch
    from diffusers import ZImageControlNetModel

    from easel.testing.tiny_zimage import LATENT_CHANNELS

    torch.manual_seed(seed)
    controlnet = ZImageControlNetModel(
        control_layers_places=[0, 1],
        control_refiner_layers_places=[0] if refiner else None,
        control_in_dim=33 if refiner else LATENT_CHANNELS,
        add_control_noise_refiner="control_noise_refiner" if refiner else None,
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        dim=32,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
    )
    blocks = [*controlnet.control_layers, *(controlnet.control_noise_refiner if refiner else ())]
    projections = [getattr(block, name, None) for block in blocks for name in ("before_proj", "after_proj")]
    return _randomised(controlnet, [layer for layer in projections if layer is not None], seed)


def install_tiny_dit_controlnets(hf_home: Path) -> dict[str, Path]:
    """Install the tiny FLUX.1 (canny, depth, union), SD 3.5 (canny), Qwen-Image (union) and Z-Image
    (union 1.0 and 2.1) ControlNets under their repo ids; id -> snapshot folder."""
    models = {
        FLUX_CANNY_ID: build_tiny_flux_controlnet(seed=200),
        FLUX_DEPTH_ID: build_tiny_flux_controlnet(seed=201),
        FLUX_UNION_ID: build_tiny_flux_controlnet(seed=202, union=True),
        SD3_CANNY_ID: build_tiny_sd3_controlnet(seed=210),
        QWEN_UNION_ID: build_tiny_qwen_image_controlnet(seed=220),
        ZIMAGE_UNION_ID: build_tiny_zimage_controlnet(seed=230),
        ZIMAGE_UNION_21_ID: build_tiny_zimage_controlnet(seed=231, refiner=True),
    }
    return {repo_id: install_into_hf_cache(model, hf_home, repo_id) for repo_id, model in models.items()}

"""The seed document's speed and memory options, applied to pipelines on purpose.

Two moments: when a base pipeline is loaded (placement, attention, VAE slicing/tiling,
channels_last, torch.compile: all properties of the shared modules, so every task pipeline
derived with from_pipe inherits them), and when a task pipeline is derived for a request
(CPU offload: its hooks chain the pipeline's own modules in order, so each derived pipeline
installs them for itself). Combinations that cannot work are refused before anything loads,
with a message instead of a crash deep inside diffusers or accelerate.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from easel.config import PerformanceOptions
from easel.errors import InvalidRequest, UnsupportedFeature


def check_options(options: PerformanceOptions, device: str) -> None:
    """Refuse combinations this device or installation cannot run."""
    accelerator = device.startswith(("cuda", "xpu"))
    if options.offload != "none" and not accelerator:
        raise UnsupportedFeature(
            f"offload={options.offload!r} moves weights between the CPU and an accelerator, "
            f"but this run uses device={device!r}; use --offload none"
        )
    if options.attention == "xformers":
        if importlib.util.find_spec("xformers") is None:
            raise UnsupportedFeature("attention='xformers' asked for, but xformers is not installed")
        if not accelerator:
            raise UnsupportedFeature(f"attention='xformers' needs a CUDA device, not device={device!r}")
    if options.compile:
        if device == "mps":
            raise UnsupportedFeature("compile is not supported on the mps backend; leave it off")
        if options.offload == "sequential":
            raise InvalidRequest(
                "compile cannot be combined with offload='sequential' (it moves each layer at run time)",
                field="compile",
                value=True,
            )


def variant_for(options: PerformanceOptions, dtype: Any) -> str | None:
    """The weights variant to ask from_pretrained for ("fp16" files are half the download)."""
    import torch

    if options.variant == "fp16" or (options.variant == "auto" and dtype == torch.float16):
        return "fp16"
    return None


def prepare_loaded(pipe: Any, options: PerformanceOptions, device: str) -> None:
    """Place and optimise a freshly loaded base pipeline (module-level, shared by from_pipe)."""
    import torch

    if options.offload == "none":
        pipe.to(device)
    if options.attention == "sdpa":
        for module in _denoisers(pipe):
            if hasattr(module, "set_attn_processor"):
                module.set_attn_processor(_sdpa_processors(module.attn_processors))
    elif options.attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    elif options.attention == "slicing":
        pipe.enable_attention_slicing()
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        if options.vae_slicing:
            vae.enable_slicing()
        if options.vae_tiling:
            vae.enable_tiling()
    if options.channels_last:
        for module in _denoisers(pipe):
            module.to(memory_format=torch.channels_last)
    if options.compile:
        for name in _denoiser_names(pipe):
            module = getattr(pipe, name)
            compiled = torch.compile(module, mode=options.compile_mode, fullgraph=options.compile_fullgraph)
            setattr(pipe, name, compiled)


def prepare_vae(vae: Any, options: PerformanceOptions) -> None:
    """The options prepare_loaded gives a base's VAE, for a VAE loaded on its own (a VAE
    override): slicing, tiling and xformers attention (pipe.enable_xformers_memory_efficient_attention
    reaches every module, the VAE included). Upcasting needs nothing here: the pipelines read
    force_upcast from the VAE's own config."""
    if options.vae_slicing:
        vae.enable_slicing()
    if options.vae_tiling:
        vae.enable_tiling()
    if options.attention == "xformers":
        vae.enable_xformers_memory_efficient_attention()


def prepare_task(pipe: Any, options: PerformanceOptions, device: str) -> None:
    """Per-request preparation of a derived pipeline: CPU offload hooks."""
    if options.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif options.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)


def _sdpa_processors(processors: dict[str, Any]) -> dict[str, Any]:
    """Each attention processor swapped for its scaled-dot-product version, keeping its kind:
    one AttnProcessor2_0 everywhere would break UNets with added key/value projections
    (Kandinsky 2.2's decoder needs AttnAddedKVProcessor2_0)."""
    from diffusers.models.attention_processor import (
        AttnAddedKVProcessor,
        AttnAddedKVProcessor2_0,
        AttnProcessor,
        AttnProcessor2_0,
    )

    sdpa = {AttnProcessor: AttnProcessor2_0, AttnAddedKVProcessor: AttnAddedKVProcessor2_0}
    return {
        name: sdpa[type(processor)]() if type(processor) in sdpa else processor
        for name, processor in processors.items()
    }


def _denoiser_names(pipe: Any) -> list[str]:
    return [name for name in ("unet", "transformer") if getattr(pipe, name, None) is not None]


def _denoisers(pipe: Any) -> list[Any]:
    return [getattr(pipe, name) for name in _denoiser_names(pipe)]

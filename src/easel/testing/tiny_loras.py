"""Tiny LoRA files for tests, in the two layouts people download.

`peft`: what diffusers' `save_lora_weights` writes (`unet.<module>.lora_A.weight`, ...,
`text_encoder.<module>...`, `text_encoder_2....` for SDXL). `kohya`: A1111/kohya-ss names
(`lora_unet_<module with _>.lora_down.weight`, `.lora_up.weight`, `.alpha`; text encoders
`lora_te_` for SD 1.5, `lora_te1_`/`lora_te2_` for SDXL), with diffusers module paths for the
UNet as SD 1.5 Kohya files have them. Weights are random (seeded) and large enough to change
an image visibly, so a test can tell applied from ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _linear_layers(module: Any, targets: tuple[str, ...]) -> list[tuple[str, Any]]:
    import torch

    return [
        (name, layer)
        for name, layer in module.named_modules()
        if isinstance(layer, torch.nn.Linear) and name.endswith(targets)
    ]


def write_tiny_lora(
    pipe: Any,
    path: Path,
    *,
    layout: Literal["peft", "kohya"] = "peft",
    seed: int = 0,
    rank: int = 2,
    scale: float = 0.5,
    text_encoders: bool = True,
) -> Path:
    """A random LoRA for `pipe`'s UNet (and text encoders) written to `path` (.safetensors)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    parts: list[tuple[str, str, Any, tuple[str, ...]]] = [("unet", "lora_unet", pipe.unet, UNET_TARGETS)]
    if text_encoders:
        encoders = [("text_encoder", pipe.text_encoder)]
        if getattr(pipe, "text_encoder_2", None) is not None:
            encoders.append(("text_encoder_2", pipe.text_encoder_2))
        for index, (prefix, encoder) in enumerate(encoders):
            kohya = "lora_te" if len(encoders) == 1 else f"lora_te{index + 1}"
            parts.append((prefix, kohya, encoder, TEXT_TARGETS))
    tensors: dict[str, Any] = {}
    for prefix, kohya_prefix, module, targets in parts:
        for name, layer in _linear_layers(module, targets):
            down = torch.randn(rank, layer.in_features, generator=generator) * scale
            up = torch.randn(layer.out_features, rank, generator=generator) * scale
            if layout == "peft":
                tensors[f"{prefix}.{name}.lora_A.weight"] = down
                tensors[f"{prefix}.{name}.lora_B.weight"] = up
            else:
                # Kohya names text-encoder layers from the CLIPTextModel root (text_model.encoder...)
                full = name if prefix == "unet" or name.startswith("text_model.") else f"text_model.{name}"
                key = f"{kohya_prefix}_{full.replace('.', '_')}"
                tensors[f"{key}.lora_down.weight"] = down
                tensors[f"{key}.lora_up.weight"] = up
                tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path

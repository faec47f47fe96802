"""Tiny GGUF transformer files, as city96 writes FLUX.1 / SD 3.5 ones (gguf's GGUFWriter, 2-D
weights quantised, the rest F32), from a diffusers transformer's weights.

Key names: diffusers' own. diffusers' single-file loader takes a checkpoint whose keys are exactly
the model's as they are (single_file_model._should_convert_state_dict_to_diffusers), and converts
BFL's original names (double_blocks.N.img_attn.qkv, ...: what city96's files carry) with
convert_flux_transformer_checkpoint_to_diffusers, which hard-codes FLUX.1's inner width (3072):
the tiny transformers' 32 cannot go through it. So the tiny files carry diffusers' names and
load through the same from_single_file + GGUFQuantizationConfig path as the real ones;
`write_bfl_names` writes a header-only file with BFL's names for the tests of base inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Q8_BLOCK = 32  # Q8_0 quantises rows in blocks of 32 values


def write_gguf(
    state_dict: dict[str, Any], path: Path, *, quantization: str = "Q8_0", arch: str = "flux"
) -> Path:
    """Write `state_dict` (name -> torch tensor) as a GGUF file: 2-D weights whose rows are a
    multiple of the block size in `quantization` (Q8_0, or F16 / F32 for everything), the rest
    F32 (biases, norms: as city96's files keep them)."""
    import gguf
    import numpy as np

    kind = gguf.GGMLQuantizationType[quantization]
    writer = gguf.GGUFWriter(str(path), arch=arch)
    for name, tensor in state_dict.items():
        array = tensor.detach().float().cpu().numpy()
        if kind == gguf.GGMLQuantizationType.Q8_0:
            quantizable = array.ndim == 2 and array.shape[-1] % Q8_BLOCK == 0
            tensor_kind = kind if quantizable else gguf.GGMLQuantizationType.F32
        else:
            tensor_kind = kind
        if tensor_kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, array.astype(np.float32))
        elif tensor_kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, tensor_kind), raw_dtype=tensor_kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def bfl_names(*, dev: bool, in_channels: int = 64) -> dict[str, Any]:
    """Tiny tensors under the names BFL's FLUX.1 checkpoints (and city96's GGUF files, ComfyUI's
    diffusion_models) use, with dev's guidance embedder or without it (schnell); `in_channels` 384
    is FLUX.1 Fill's: enough for diffusers' infer_diffusers_model_type, not a loadable model."""
    import torch

    names = ["double_blocks.0.img_attn.norm.key_norm.scale", "img_in.weight", "img_in.bias"]
    if dev:
        names += ["guidance_in.in_layer.weight", "guidance_in.in_layer.bias"]
    return {
        name: torch.zeros(4, in_channels) if name.endswith("weight") else torch.zeros(4) for name in names
    }


def write_bfl_names(path: Path, *, dev: bool) -> Path:
    """A tiny GGUF file with BFL's FLUX.1 tensor names (bfl_names): for the tests of base inference."""
    return write_gguf(bfl_names(dev=dev), path, quantization="F32")

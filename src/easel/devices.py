"""Device and dtype policy: where pipelines run and in what precision.

auto picks cuda > mps > cpu, and float16 on accelerators but float32 on the CPU, where
half-precision matmul is about 100x slower on the machines easel is built on.
"""

from __future__ import annotations

from typing import Any

from easel.errors import InvalidRequest, UnsupportedFeature

DTYPES = ("float32", "float16", "bfloat16")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UnsupportedFeature(f"device={name!r} requested but CUDA is not available here")
        return name
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UnsupportedFeature("device='mps' requested but MPS is not available here")
        return name
    raise InvalidRequest(
        f"invalid device={name!r}: use auto, cpu, cuda, cuda:N or mps", field="device", value=name
    )


SMALL_MODEL_PARAMETERS = 50_000_000


def cpu_threads_for(unet_parameters: int, requested: int | None) -> int | None:
    """Threads to use on the CPU: the user's choice, else 1 for small models.

    Measured on a 2-core machine: the bundled 2.8M-parameter demo UNet ran 20-40x faster on
    one thread than on torch's default (its kernels are too small to split, and the threads
    spin against each other); real models (860M parameters) want every core, so they keep
    torch's default (None).
    """
    if requested:
        return requested
    return 1 if unet_parameters < SMALL_MODEL_PARAMETERS else None


def resolve_dtype(name: str, device: str, accelerator_default: str = "float16") -> Any:
    """`name` as a torch dtype; "auto" is float32 on the CPU and `accelerator_default` (the
    family's: float16 for SD, bfloat16 for FLUX, whose activations overflow float16) elsewhere."""
    import torch

    if name == "auto":
        return torch.float32 if device == "cpu" else getattr(torch, accelerator_default)
    if name not in DTYPES:
        raise InvalidRequest(
            f"invalid dtype={name!r}: use auto or one of {', '.join(DTYPES)}", field="dtype", value=name
        )
    return getattr(torch, name)

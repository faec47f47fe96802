"""A tiny model upscaler for tests: a RealESRGAN "compact" network (SRVGGNetCompact).

The state dict is written here in the layout RealESRGAN's compact models are published in
(`body.0` the first conv, `body.1` its PReLU, then conv/PReLU pairs, and a last conv to
3 x scale^2 channels that a pixel shuffle turns into the bigger picture), so spandrel detects
it as it detects a downloaded realesr-general-x4v3. Weights are random (seeded) and few (8
features, 2 convs: a few thousand parameters), so the output differs visibly from a plain
resize while a 64x64 picture upscales in milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

FEATURES = 8
CONVS = 2


def spandrel_importable() -> bool:
    """Whether spandrel (the `upscalers` extra) imports here: model upscalers need it, and its
    torchvision must be built for this torch (PyPI's does not import beside CI's CPU torch).
    Writing a tiny upscaler does not need it (torch and safetensors only)."""
    try:
        import spandrel  # noqa: F401
    except Exception:  # not installed, or its torchvision does not match torch
        return False
    return True


def tiny_upscaler_state(scale: int = 2, *, seed: int = 0) -> dict[str, object]:
    """The state dict of a random compact upscaler that makes pictures `scale` times bigger."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    def conv(out_channels: int, in_channels: int) -> tuple[object, object]:
        bound = (1.0 / (in_channels * 9)) ** 0.5  # PyTorch's default conv initialisation range
        weight = (torch.rand(out_channels, in_channels, 3, 3, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(out_channels, generator=generator) * 2 - 1) * bound
        return weight.contiguous(), bias.contiguous()

    state: dict[str, object] = {}
    index = 0
    channels = 3
    for _ in range(CONVS + 1):  # the first conv, then CONVS more, each followed by a PReLU
        state[f"body.{index}.weight"], state[f"body.{index}.bias"] = conv(FEATURES, channels)
        state[f"body.{index + 1}.weight"] = torch.full((FEATURES,), 0.25)
        index += 2
        channels = FEATURES
    state[f"body.{index}.weight"], state[f"body.{index}.bias"] = conv(3 * scale * scale, FEATURES)
    return state


def write_tiny_upscaler(path: Path, scale: int = 2, *, seed: int = 0) -> Path:
    """A tiny random compact upscaler saved to `path` (.safetensors, or a pickle for any other
    suffix, as torch.save writes .pth files); returns `path`."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = tiny_upscaler_state(scale, seed=seed)
    if path.suffix == ".safetensors":
        save_file(state, str(path))  # type: ignore[arg-type]
    else:
        torch.save(state, path)
    return path

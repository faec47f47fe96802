"""Seamless tiling: images whose edges continue each other, as A1111's "Tiling" makes them.

How: every Conv2d of the denoiser, the VAE (or MoVQ) and any ControlNet pads circularly for the
run, so each convolution sees the image as wrapped around a torus and the left edge is drawn as
the neighbour of the right one (and top of bottom). The modules are the cached pipeline's own
(shared by every task pipeline), so the change is undone when the run ends, also on an error or
a cancel: the next request without tiling gets the pipeline exactly as loaded.

Not with torch.compile (the `compile` performance option): a compiled UNet was traced with the
padding it had, and changing modules under a compiled graph either recompiles on every switch or
is not seen at all; tiling is refused there, naming the field, before anything loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from easel.errors import UnsupportedFeature

# pipeline components whose convolutions shape the picture (text encoders, priors and the safety
# checker do not see pixels or latents as a plane)
TILED_COMPONENTS = ("unet", "vae", "movq", "controlnet")


def check_tiling(tiling: bool, *, compiled: bool) -> None:
    """Refuse tiling with a compiled UNet (see the module docstring)."""
    if tiling and compiled:
        error = UnsupportedFeature(
            "tiling=True: seamless tiling changes the UNet's padding for the run, which a torch.compile'd "
            "UNet cannot follow; turn compile off (EASEL_COMPILE / --no-compile) to tile"
        )
        error.field = "tiling"  # type: ignore[attr-defined]
        raise error


def tiled_modules(pipelines: Iterable[Any]) -> list[Any]:
    """The modules of `pipelines` (a task pipeline and its companions) that tiling patches."""
    import torch

    modules: list[Any] = []
    for pipe in pipelines:
        components = getattr(pipe, "components", {}) or {}
        for name in TILED_COMPONENTS:
            module = components.get(name, getattr(pipe, name, None))
            if isinstance(module, torch.nn.Module) and all(module is not seen for seen in modules):
                modules.append(module)
    return modules


@contextmanager
def seamless(enabled: bool, pipelines: Iterable[Any]) -> Iterator[None]:
    """Within the block, every Conv2d of the pipelines' image modules pads circularly (when
    `enabled`); afterwards each has its own padding mode again, whatever happened inside."""
    if not enabled:
        yield
        return
    import torch

    changed: list[tuple[Any, str]] = []
    seen: set[int] = set()
    try:
        for module in tiled_modules(pipelines):
            for conv in module.modules():
                if isinstance(conv, torch.nn.Conv2d) and id(conv) not in seen:
                    seen.add(id(conv))
                    changed.append((conv, conv.padding_mode))
                    conv.padding_mode = "circular"
        yield
    finally:
        for conv, mode in changed:
            conv.padding_mode = mode

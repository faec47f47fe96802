"""Scheduler names users type, mapped to diffusers scheduler classes and options.

Users arrive with two vocabularies: diffusers class names ("EulerAncestralDiscreteScheduler")
and the AUTOMATIC1111 sampler names they see in every web UI ("Euler a", "DPM++ 2M Karras").
Both resolve here; an unknown name is an error, never a silent fallback to the default.
Each request gets its own scheduler instance built from the base pipeline's scheduler
config, because schedulers keep step state and must not be shared between requests.
"""

from __future__ import annotations

from typing import Any

# A1111 sampler name -> (diffusers class name, extra config for from_config)
A1111_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}

# diffusers class names accepted as they are
DIFFUSERS_SCHEDULERS: tuple[str, ...] = (
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "UniPCMultistepScheduler",
)


def _key(name: str) -> str:
    return name.strip().casefold()


def scheduler_spec(name: str) -> tuple[str, dict[str, Any]] | None:
    """Return (class name, config overrides) for a user-facing name, or None if unknown.

    Matching ignores case and surrounding spaces ("euler a" works), nothing fuzzier.
    """
    wanted = _key(name)
    for label, spec in A1111_SAMPLERS.items():
        if _key(label) == wanted:
            return spec
    for class_name in DIFFUSERS_SCHEDULERS:
        if _key(class_name) == wanted:
            return class_name, {}
    return None


def known_scheduler_names() -> list[str]:
    """Every accepted name, A1111 names first (what most users type)."""
    return [*A1111_SAMPLERS, *DIFFUSERS_SCHEDULERS]


def a1111_name_for(class_name: str, config: dict[str, Any]) -> str:
    """The A1111 sampler label matching a scheduler (used in image metadata)."""
    best, best_matched = class_name, -1
    for label, (cls, overrides) in A1111_SAMPLERS.items():
        matches = cls == class_name and all(config.get(k) == v for k, v in overrides.items())
        if matches and len(overrides) > best_matched:
            best, best_matched = label, len(overrides)
    return best


def build_scheduler(name: str | None, base_scheduler: Any) -> Any:
    """A fresh scheduler for one request: the model's own kind, or the named one."""
    import diffusers

    if name is None:
        return base_scheduler.__class__.from_config(base_scheduler.config)
    spec = scheduler_spec(name)
    if spec is None:  # the request validator already refused it; this guards direct calls
        raise ValueError(f"unknown scheduler {name!r}")
    class_name, overrides = spec
    return getattr(diffusers, class_name).from_config(base_scheduler.config, **overrides)

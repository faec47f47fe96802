"""Scheduler names users type, mapped to diffusers scheduler classes and options.

Users arrive with two vocabularies: diffusers class names ("EulerAncestralDiscreteScheduler")
and the AUTOMATIC1111 sampler names they see in every web UI ("Euler a", "DPM++ 2M Karras").
Both resolve here; an unknown name is an error, never a silent fallback to the default.

A1111 >= 1.9 chooses the sampler and its schedule type separately ("DPM++ 2M" + "Karras");
easel's one `scheduler` string carries both as the combined label A1111 used before
("DPM++ 2M Karras", "Euler SGM Uniform"), so a recipe is one name and replays exactly. A
schedule type is a set of config overrides on the sampler's diffusers class, accepted only
where that class has the option; A1111's schedule types diffusers cannot express are refused
by name.
Each request gets its own scheduler instance built from the base pipeline's scheduler
config, because schedulers keep step state and must not be shared between requests.
"""

from __future__ import annotations

from typing import Any

# A1111 sampler name -> (diffusers class name, config overrides for from_config). The overrides
# pin what makes the sampler itself (DPM++ 2M: dpmsolver++ of order 2), so building it from any
# base config gives A1111's algorithm; the schedule type's overrides come on top.
A1111_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
    ),
    "DPM++ 2M SDE Heun": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
    ),
    "DPM++ 3M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "PNDM": ("PNDMScheduler", {}),  # easel's name: the model's own PNDM config as it is
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}

# A1111 schedule type -> (config overrides, the option a class must have to take them)
SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
SCHEDULE_TYPES: dict[str, dict[str, Any]] = {
    "Automatic": {},  # the sampler's own schedule (the model's config)
    "Uniform": {"timestep_spacing": "linspace"},  # k-diffusion's default: evenly spaced timesteps
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Beta": {"use_beta_sigmas": True},
}
# A1111 schedule types diffusers' schedulers cannot express: refused by name
REFUSED_SCHEDULE_TYPES: dict[str, str] = {
    "Polyexponential": "diffusers has no polyexponential sigma schedule",
    "KL Optimal": "diffusers has no KL-optimal sigma schedule",
    "Align Your Steps": "diffusers' schedulers take no Align Your Steps schedule as a config option",
    "Simple": "diffusers has no ComfyUI 'simple' schedule option",
    "Normal": "diffusers has no ComfyUI 'normal' schedule option",
    "DDIM": "diffusers has no A1111 'DDIM' (ddim_uniform) schedule option for k-samplers",
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
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "UniPCMultistepScheduler",
)


def _key(name: str) -> str:
    return name.strip().casefold()


def _options_of(class_name: str) -> frozenset[str]:
    """The config options a diffusers scheduler class takes (its __init__ parameters)."""
    import inspect

    import diffusers

    return frozenset(inspect.signature(getattr(diffusers, class_name).__init__).parameters)


def schedule_types_for(class_name: str) -> list[str]:
    """The schedule types a scheduler class can run (those whose options it has)."""
    options = _options_of(class_name)
    return [label for label, overrides in SCHEDULE_TYPES.items() if set(overrides) <= options]


def split_label(name: str) -> tuple[str, str | None] | None:
    """An A1111 label -> (its sampler, its schedule type or None for Automatic); None when the
    name is no A1111 sampler. "DPM++ 2M SDE Karras" -> ("DPM++ 2M SDE", "Karras"); an unknown or
    refused schedule type is returned as written, for the caller to refuse by name."""
    wanted = _key(name)
    for label in sorted(A1111_SAMPLERS, key=len, reverse=True):  # "DPM++ 2M SDE" before "DPM++ 2M"
        if wanted == _key(label):
            return label, None
        if wanted.startswith(_key(label) + " "):
            rest = wanted[len(label) + 1 :].strip()
            for schedule in (*SCHEDULE_TYPES, *REFUSED_SCHEDULE_TYPES):
                if rest == _key(schedule):
                    return label, None if schedule == "Automatic" else schedule
    return None


def scheduler_problem(name: str) -> str | None:
    """Why `name` is not an accepted scheduler (None: it is), in words that name what to send."""
    parts = split_label(name)
    if parts is None:
        if any(_key(c) == _key(name) for c in DIFFUSERS_SCHEDULERS):
            return None
        return (
            "unknown scheduler; A1111 samplers: " + ", ".join(A1111_SAMPLERS)
            + "; each may end in a schedule type (" + ", ".join(t for t in SCHEDULE_TYPES if t != "Automatic")
            + "), e.g. 'DPM++ 2M Karras'; or a diffusers class: " + ", ".join(DIFFUSERS_SCHEDULERS)
        )  # fmt: skip
    sampler, schedule = parts
    if schedule is None:
        return None
    if schedule in REFUSED_SCHEDULE_TYPES:
        return f"schedule type {schedule!r} is not supported: {REFUSED_SCHEDULE_TYPES[schedule]}"
    class_name = A1111_SAMPLERS[sampler][0]
    if schedule not in schedule_types_for(class_name):
        return (
            f"the {sampler} sampler ({class_name}) cannot run the schedule type {schedule!r}; it takes: "
            + ", ".join(schedule_types_for(class_name))
        )
    return None


def canonical_label(name: str | None) -> str | None:
    """The A1111 label spelled as A1111 does ("dpm++ 2m karras" -> "DPM++ 2M Karras"); None for
    diffusers class names and unknown names."""
    parts = None if name is None else split_label(name)
    if parts is None:
        return None
    sampler, schedule = parts
    return sampler if schedule is None else f"{sampler} {schedule}"


def scheduler_spec(name: str) -> tuple[str, dict[str, Any]] | None:
    """Return (class name, config overrides) for a user-facing name, or None if not accepted.

    Matching ignores case and surrounding spaces ("euler a" works), nothing fuzzier. A schedule
    type also switches off the other sigma schedules, which the base config may have on (diffusers
    refuses two at once).
    """
    if scheduler_problem(name) is not None:
        return None
    parts = split_label(name)
    if parts is None:
        return next(c for c in DIFFUSERS_SCHEDULERS if _key(c) == _key(name)), {}
    sampler, schedule = parts
    class_name, overrides = A1111_SAMPLERS[sampler]
    if schedule is None:
        return class_name, dict(overrides)
    options = _options_of(class_name)
    flags = {flag: False for flag in SIGMA_FLAGS if flag in options}
    return class_name, {**overrides, **flags, **SCHEDULE_TYPES[schedule]}


def known_scheduler_names() -> list[str]:
    """Every accepted name, A1111 names first (what most users type): each sampler, then each
    with every schedule type it can run, then the diffusers classes."""
    combined = [
        f"{sampler} {schedule}"
        for sampler, (class_name, _) in A1111_SAMPLERS.items()
        for schedule in schedule_types_for(class_name)
        if schedule != "Automatic"
    ]
    return [*A1111_SAMPLERS, *combined, *DIFFUSERS_SCHEDULERS]


def a1111_name_for(class_name: str, config: dict[str, Any]) -> str:
    """The A1111 sampler label matching a scheduler (used in image metadata): the sampler whose
    overrides the config matches most, with " Karras"/" Exponential"/" Beta" when the config
    has that sigma schedule on. Spacing-based schedule types (Uniform, SGM Uniform) are not
    inferred: the model's own spacing is its Automatic schedule."""
    best, best_matched = class_name, -1
    for label, (cls, overrides) in A1111_SAMPLERS.items():
        matches = cls == class_name and all(config.get(k) == v for k, v in overrides.items())
        if matches and len(overrides) > best_matched:
            best, best_matched = label, len(overrides)
    if best_matched < 0:
        return best
    for schedule, overrides in SCHEDULE_TYPES.items():
        flag = next(iter(overrides), None)
        if flag in SIGMA_FLAGS and config.get(flag):
            return f"{best} {schedule}"
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

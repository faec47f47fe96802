"""ControlNet rules Qwen-Image and Z-Image share (easel.families.qwen_image, easel.families.zimage).

Both families' ControlNets differ from FLUX.1's in the same two ways, so their refusals are written
once here:

- No control type: their union ControlNets (InstantX/Qwen-Image-ControlNet-Union, alibaba-pai's
  Z-Image-Turbo-Fun-Controlnet-Union) read the kind of control from the control image itself; their
  configs have no num_mode and the pipelines take no control_mode. A unit's `mode` is refused.
- Several units run on one model at most: diffusers' QwenImageMultiControlNetModel runs a single
  (union) ControlNet over several control images, and ZImageControlNetPipeline takes one ControlNet
  and one image. What a pipeline cannot run is refused by unit and field before weights load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest

if TYPE_CHECKING:
    from collections.abc import Mapping

    from easel.request import GenerationRequest


def refuse_mode(title: str, index: int, reference: str, mode: int | str | None) -> None:
    """A unit's union `mode` for a family whose ControlNets take none."""
    if mode is None:
        return
    raise InvalidRequest(
        f"invalid controls[{index}].mode={mode!r}: {title} ControlNets take no control type ({reference!r} "
        "included: its union models read the kind of control from the control image); leave mode out",
        field=f"controls[{index}].mode",
        value=mode,
    )


def refuse_other_models(request: GenerationRequest, title: str, why: str) -> None:
    """Units after the first that name another ControlNet than controls[0].model (`why`: what the
    pipeline runs instead)."""
    first = request.controls[0].model if request.controls else None
    for index, unit in enumerate(request.controls[1:], start=1):
        if unit.model != first:
            raise InvalidRequest(
                f"invalid controls[{index}].model={unit.model!r}: {title} runs several units on one "
                f"ControlNet only ({why}), and controls[0].model is {first!r}; give every unit that model "
                "or drop this unit",
                field=f"controls[{index}].model",
                value=unit.model,
            )


def refuse_unfit(index: int, reference: str, denoiser: str, reasons: list[str]) -> None:
    """A ControlNet whose config does not fit the loaded transformer, for `reasons` (none: it fits)."""
    if reasons:
        field = f"controls[{index}].model"
        raise InvalidRequest(
            f"invalid {field}={reference!r}: this ControlNet does not fit the model's {denoiser} "
            f"({'; '.join(reasons)}); it was made for another base model",
            field=field,
            value=reference,
        )


def beyond(places: Any, count: Any) -> list[int]:
    """The entries of a ControlNet's layer `places` (a config list, or None) at or past `count`
    layers of the transformer: residuals the transformer would never add."""
    return [int(place) for place in places or () if count is not None and int(place) >= int(count)]


def config_of(config: Mapping[str, Any], class_name: str) -> dict[str, Any]:
    """A ControlNet's config with its class: a loaded module's config (a single file's, read once
    loaded) does not carry _class_name, and the module was loaded as the family's class."""
    return {"_class_name": class_name, **config}

"""Limits: how much one request may ask of a shared machine, checked on the concrete request.

A server's operator sets them (EASEL_MAX_PIXELS, EASEL_MAX_STEPS, EASEL_MAX_IMAGES). The door
checks what a request states outright, but a request that leaves width, height or steps
out gets them from an init or control image, the model's native size or the family's
default, and a second-order sampler (Heun, DPM2) evaluates the model twice per step. So
the engine checks the limits again once those are known, before any denoising runs: no
value can bypass them by being left to a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest
from easel.request import effective_steps

if TYPE_CHECKING:
    from easel.config import Settings
    from easel.request import GenerationRequest


@dataclass(frozen=True)
class Limits:
    """Upper bounds per request; None means no bound (the CLI and the Python API)."""

    max_pixels: int | None = None  # width x height of one image
    max_steps: int | None = None  # denoising steps (model evaluations) and prior steps
    max_images: int | None = None  # images per request

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.max_pixels, settings.max_steps, settings.max_images)

    def check(self, request: GenerationRequest, *, defaulted: frozenset[str] = frozenset()) -> None:
        """Whatever the request fixes so far; `defaulted` names fields that came from a
        default rather than the caller (the message says so)."""

        def origin(name: str) -> str:
            return " (the default)" if name in defaulted else ""

        width, height = request.width, request.height
        if (
            self.max_pixels is not None
            and width is not None
            and height is not None
            and (width * height > self.max_pixels)
        ):
            came_from = " (taken from the input image or the model)" if "width" in defaulted else ""
            raise InvalidRequest(
                f"invalid width x height={width}x{height}{came_from}: more than this server's limit "
                f"of {self.max_pixels} pixels; ask for a smaller width and height",
                field="width",
                value=width,
            )
        if self.max_steps is not None:
            for name in ("steps", "prior_steps"):
                value = getattr(request, name, None)
                if value is not None and value > self.max_steps:
                    raise InvalidRequest(
                        f"invalid {name}={value}{origin(name)}: more than this server's limit of "
                        f"{self.max_steps}",
                        field=name,
                        value=value,
                    )
        self._check_hires(request)
        if self.max_images is not None and request.num_images > self.max_images:
            raise InvalidRequest(
                f"invalid num_images={request.num_images}: more than this server's limit of "
                f"{self.max_images}",
                field="num_images",
                value=request.num_images,
            )

    def _check_hires(self, request: GenerationRequest) -> None:
        """The hires fix's second pass counts too: its size against max_pixels, and the steps
        of both passes together against max_steps."""
        hires = getattr(request, "hires", None)
        if hires is None or request.width is None or request.height is None:
            return
        width, height = hires.target_size(request.width, request.height)
        if self.max_pixels is not None and width * height > self.max_pixels:
            field = "hires.scale" if hires.width is None and hires.height is None else "hires.width"
            value = getattr(hires, field.removeprefix("hires."))
            raise InvalidRequest(
                f"invalid {field}={value!r}: the hires fix's second pass at {width}x{height} is more than "
                f"this server's limit of {self.max_pixels} pixels; ask for a smaller hires size",
                field=field,
                value=value,
            )
        if self.max_steps is not None and request.steps is not None:
            total = self.hires_steps(request, 1, 1)
            if total > self.max_steps:
                raise InvalidRequest(
                    f"invalid hires.steps={hires.steps!r}: both passes of the hires fix run {total} steps "
                    f"together, more than this server's limit of {self.max_steps}",
                    field="hires.steps",
                    value=hires.steps,
                )

    @staticmethod
    def hires_steps(request: GenerationRequest, first_order: int, second_order: int) -> int:
        """Model evaluations of both hires passes (steps times each sampler's order)."""
        assert request.steps is not None and request.hires is not None
        second = effective_steps(request.hires.second_steps(request.steps), request.hires.strength)
        return request.steps * first_order + second * second_order

    def check_hires_evaluations(self, request: GenerationRequest, first: Any, second: Any) -> None:
        """Both hires passes' steps weighted by their samplers' order (`first`, `second`: the
        schedulers) against max_steps."""
        if self.max_steps is None or request.hires is None:
            return
        orders = [int(getattr(scheduler, "order", 1) or 1) for scheduler in (first, second)]
        total = self.hires_steps(request, *orders)
        if total > self.max_steps:
            raise InvalidRequest(
                f"invalid hires.steps={request.hires.steps!r}: the two hires passes evaluate the model "
                f"{total} times (steps x sampler order), more than this server's limit of {self.max_steps}",
                field="hires.steps",
                value=request.hires.steps,
            )

    def check_evaluations(self, request: GenerationRequest, scheduler: Any, sampler: str) -> None:
        """Steps weighted by the sampler's order against max_steps: Heun and DPM2 evaluate the
        model twice per step (Heun's 50 steps are 99 evaluations), so they count double."""
        if self.max_steps is None or request.steps is None:
            return
        order = int(getattr(scheduler, "order", 1) or 1)
        steps = effective_steps(request.steps, request.strength)
        if steps * order > self.max_steps:
            ran = f"{steps} steps" if steps == request.steps else f"{steps} steps at this strength"
            raise InvalidRequest(
                f"invalid steps={request.steps}: the {sampler} sampler evaluates the model {order} times "
                f"per step, so {ran} count as {steps * order}, more than this server's limit of "
                f"{self.max_steps}; use fewer steps or a first-order sampler",
                field="steps",
                value=request.steps,
            )

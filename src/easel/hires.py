"""Hires fix (A1111's enable_hr): a first pass at the request's size, upscaled, then denoised
again at the bigger size as image-to-image.

Kept apart from the engine's generate() so that only a small call site lives there. Both passes
go through Easel._run, so whatever the engine does per run (prompt encoding with Compel or A1111
weighting, clip skip, LoRAs and embeddings, the step callback, cancel, seamless tiling) holds
for both. The first pass stops at latents (output_type="latent"): the "Latent" upscalers
interpolate them as A1111 does (torch.nn.functional.interpolate, LATENT_UPSCALERS), picture
upscalers get them decoded as the pipeline decodes them. The second pass is the family's
image-to-image pipeline derived from the same cached base, with its own fresh scheduler and
one CPU generator per image seeded seed + i again (A1111 reuses the seed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from easel.errors import Cancelled, GenerationFailed, InvalidRequest, UnsupportedFeature
from easel.families.base import RunOutput
from easel.request import GenerationRequest, effective_steps
from easel.result import CancelToken, Progress

if TYPE_CHECKING:
    from easel.config import Settings
    from easel.families.base import Family
    from easel.limits import Limits
    from easel.models.cache import LoadedModel

FIRST_PASS_MARK = "(hires fix: the first pass)"  # the second pass's init_image, never read as a path


class Engine(Protocol):
    """What the hires fix uses of the engine (easel.engine.Easel, which imports this module;
    this one never imports the engine)."""

    settings: Settings
    task_pipeline: Callable[..., Any]
    _run: Callable[..., RunOutput]

    def device_and_dtype(self) -> tuple[str, Any]: ...


class HiresPass:
    """One request's hires fix: wraps the first pass (latents out, progress over both passes)
    and runs the upscale and the second pass."""

    def __init__(
        self,
        easel: Engine,
        loaded: LoadedModel,
        request: GenerationRequest,
        *,
        first_pipe: Any,
        vae: Any = None,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: CancelToken | None = None,
        limits: Limits | None = None,
    ) -> None:
        assert request.hires is not None and request.width is not None and request.height is not None
        self.easel, self.loaded, self.request, self.hires = easel, loaded, request, request.hires
        self.on_progress, self.cancel = on_progress, cancel
        self.previewer: Any = None  # the run's Previewer (easel.previews), set by the engine
        check_hires(easel, loaded.family, request)
        from easel.upscalers import LATENT_UPSCALERS

        self.latent_mode = LATENT_UPSCALERS.get(self.hires.upscaler)
        self.width, self.height = self.hires.target_size(request.width, request.height)
        self.second_request = second_pass_request(request)
        self.second_pipe = easel.task_pipeline(loaded, self.second_request, vae=vae)
        if limits is not None:
            limits.check_hires_evaluations(request, first_pipe.scheduler, self.second_pipe.scheduler)
        self.first_total = _timesteps(first_pipe.scheduler, request.steps or 1, None)
        second_steps = self.hires.second_steps(request.steps or 1)
        self.second_total = _timesteps(self.second_pipe.scheduler, second_steps, self.hires.strength)

    @property
    def total(self) -> int:
        """Progress total over both passes: the first's steps and the second's effective ones."""
        return self.first_total + self.second_total

    def first_family(self, family: Family) -> Family:
        """`family` whose run stops at latents (what the upscale needs)."""
        return cast("Family", _LatentFirstPass(family))

    def first_progress(self, progress: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(progress.step, self.total, preview=progress.preview))

    def _second_progress(self, progress: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(
                Progress(
                    self.first_total + progress.step,
                    self.first_total + progress.total,
                    preview=progress.preview,
                )
            )

    def second_pass(self, first: RunOutput, family: Family) -> RunOutput:
        """Upscale the first pass's latents and denoise them again at the target size."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled after the hires fix's first pass")
        latents = first.images
        image = self.upscale(latents)
        output = self.easel._run(
            family=family,
            pipe=self.second_pipe,
            request=self.second_request,
            init_image=image,
            on_progress=self._second_progress,
            cancel=self.cancel,
            companions={},
            state=self.loaded.state,
            previewer=self.previewer,
        )
        output.warnings[:0] = first.warnings
        return output

    def upscale(self, latents: Any) -> Any:
        """The second pass's input: latents interpolated (Latent modes), or the decoded pictures
        upscaled by the picture upscaler (a list of PIL images)."""
        import torch

        factor = int(self.second_pipe.vae_scale_factor)
        if self.latent_mode is not None:
            mode, antialias = self.latent_mode
            with torch.inference_mode():
                size = (self.height // factor, self.width // factor)
                return torch.nn.functional.interpolate(latents, size=size, mode=mode, antialias=antialias)
        pictures = decode(self.loaded.family, self.second_pipe, latents)
        upscalers = upscalers_of(self.easel)
        return [
            upscalers.upscale(picture, self.width, self.height, self.hires.upscaler, field="hires.upscaler")
            for picture in pictures
        ]


class _LatentFirstPass:
    """A family whose run asks the pipeline for its final latents instead of pictures (the
    hires fix's first pass); everything else is the family's own."""

    def __init__(self, family: Family) -> None:
        self._family = family

    def __getattr__(self, name: str) -> Any:
        return getattr(self._family, name)

    def run(self, pipe: Any, arguments: dict[str, Any], **_: Any) -> RunOutput:
        import torch

        latents = pipe(**arguments, output_type="latent").images
        if not torch.isfinite(latents).all():
            raise GenerationFailed(
                "the hires fix's first pass came out with non-finite latents (NaN/inf); try --dtype float32"
            )
        return RunOutput(images=latents)


def check_hires(easel: Engine, family: Family, request: GenerationRequest) -> None:
    """Refuse, before any weights load, a family the hires fix is not built for and an
    upscaler name that is neither a latent mode nor one of the engine's picture upscalers."""
    from easel.upscalers import LATENT_UPSCALERS

    check_family(family)
    name = request.hires.upscaler if request.hires is not None else "Latent"
    if name not in LATENT_UPSCALERS:
        names = upscalers_of(easel).names()
        if name not in names:
            known = ", ".join([*LATENT_UPSCALERS, *names])
            raise InvalidRequest(
                f"invalid hires.upscaler={name!r}: unknown upscaler; known: {known}",
                field="hires.upscaler",
                value=name,
            )


def check_family(family: Family) -> None:
    """The hires fix needs latents a UNet pipeline returns and an img2img pipeline of the same
    family taking them: SD 1.x/2.x and the SDXL base."""
    if family.name not in HIRES_FAMILIES:
        error = UnsupportedFeature(
            f"hires: the hires fix is not built for {family.name} models (it works with: "
            f"{', '.join(HIRES_FAMILIES)})"
        )
        error.field = "hires"  # type: ignore[attr-defined]
        raise error


HIRES_FAMILIES = ("sd15", "sdxl")


def second_pass_request(request: GenerationRequest) -> GenerationRequest:
    """The request the second pass runs: image-to-image at the target size with the hires
    prompts, steps, strength, scheduler and guidance (None: the first pass's). Not validated
    again (its init image is the first pass, handed over in memory)."""
    hires = request.hires
    assert hires is not None and request.width is not None and request.height is not None
    width, height = hires.target_size(request.width, request.height)
    negative = request.negative_prompt if hires.negative_prompt is None else hires.negative_prompt
    update: dict[str, Any] = {
        "init_image": FIRST_PASS_MARK,
        "strength": hires.strength,
        "width": width,
        "height": height,
        "steps": hires.second_steps(request.steps or 1),
        "prompt": request.prompt if hires.prompt is None else hires.prompt,
        "negative_prompt": negative,
        "scheduler": hires.scheduler or request.scheduler,
        "guidance_scale": request.guidance_scale if hires.guidance_scale is None else hires.guidance_scale,
        "hires": None,
    }
    if hires.scheduler is not None and "eta" in GenerationRequest.model_fields:
        from easel.schedulers import scheduler_spec

        spec = scheduler_spec(hires.scheduler)  # DDIM's eta goes on only to a DDIM second pass
        if spec is None or spec[0] != "DDIMScheduler":
            update["eta"] = None
    # variation seeds shape the first pass's noise; the second pass draws plain seed + i noise
    for name, plain in (("variation_seed", None), ("variation_strength", 0.0), ("seed_resize_from", None)):
        if name in GenerationRequest.model_fields:
            update[name] = plain
    return request.model_copy(update=update)


def upscalers_of(easel: Engine) -> Any:
    """The engine's upscalers (Easel.upscalers where the engine has them), else a set of
    its own from the settings."""
    found = getattr(easel, "upscalers", None)
    if found is not None:
        return found
    from easel.upscalers import Upscalers

    device = easel.device_and_dtype()[0]
    settings = easel.settings
    return Upscalers(settings.upscalers_folder, allow_pickle=settings.allow_pickle, device=device)


def decode(family: Family, pipe: Any, latents: Any) -> list[Any]:
    """Final latents -> PIL pictures, as the pipeline itself decodes them (its VAE in its own
    dtype, scaling factor and latents mean/std; float32 where the VAE asks to be upcast or
    gave non-finite values)."""
    import numpy as np
    import torch

    from easel.families.base import _numpy_to_pil, unscale_latents

    vae = pipe.vae
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return _numpy_to_pil(family.decode_float32(pipe, latents))
    with torch.inference_mode():
        scaled = unscale_latents(vae, latents.to(device=vae.device, dtype=vae.dtype))
        image = vae.decode(scaled, return_dict=False)[0]
        pictures = pipe.image_processor.postprocess(image, output_type="np")
    if not np.isfinite(pictures).all():
        pictures = family.decode_float32(pipe, latents)
    return _numpy_to_pil(pictures)


def _timesteps(scheduler: Any, steps: int, strength: float | None) -> int:
    """How many denoising steps (step callbacks) a pipeline runs with `scheduler`: all its
    timesteps for text-to-image, those after strength cuts the start off for image-to-image
    (as diffusers' get_timesteps); effective_steps where the scheduler cannot tell."""
    try:
        fresh = type(scheduler).from_config(scheduler.config)
        fresh.set_timesteps(steps, device="cpu")
        count = len(fresh.timesteps)
    except Exception:  # a scheduler that wants more than a step count: the plain count
        return effective_steps(steps, strength)
    if strength is None:
        return count
    start = max(steps - min(int(steps * strength), steps), 0)
    return max(count - start * int(getattr(fresh, "order", 1) or 1), 0)

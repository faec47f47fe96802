"""AUTOMATIC1111-compatible API (/sdapi/v1/...), enough for the `webuiapi` client unchanged.

A1111 fields map onto GenerationRequest: prompt, negative_prompt, steps, cfg_scale ->
guidance_scale (FLUX.1 as Forge reads it: cfg_scale is real CFG, true_cfg_scale, and dev's and
Kontext's guidance is distilled_cfg_scale),
seed (-1 random), width, height, sampler_name (+ the newer separate
`scheduler` "Karras") -> scheduler, batch_size x n_iter -> num_images (A1111 also seeds
image i with seed + i), denoising_strength -> strength (img2img), init_images[0] -> init_image,
refiner_checkpoint / refiner_switch_at -> refiner / refiner_at, override_settings
sd_model_checkpoint -> model, override_settings sd_vae -> vae, and ControlNet units
(alwayson_scripts.controlnet.args, the sd-webui-controlnet extension's API) -> controls.
Prompts are read in A1111's own weighting syntax (prompt_syntax="a1111").
override_settings CLIP_stop_at_last_layers -> clip_skip, styles -> styles (styles.csv, expanded
by the engine), eta -> eta for DDIM (other samplers: checked by _check_eta), and the separate
schedule type `scheduler` joins the sampler's label ("DPM++ 2M" + "Karras"; easel.schedulers).
tiling -> tiling (seamless). Variation
seeds: subseed (-1 random) -> variation_seed, subseed_strength -> variation_strength,
seed_resize_from_w/h (both above 0) -> seed_resize_from. Hires fix (txt2img): enable_hr with
hr_scale or hr_resize_x/y, hr_upscaler, hr_second_pass_steps, denoising_strength (its strength),
hr_prompt, hr_negative_prompt, hr_sampler_name + hr_scheduler, hr_cfg -> hires; with enable_hr
false the hr_* fields are accepted only at their defaults. Nothing is accepted and ignored:
a field is honoured, or accepted only at a value that cannot change the image (A1111's
default, or unused as sent), or refused with a 422 naming it (check_fields), fields A1111
does not have included (A1111 ignores those). Errors name the A1111 field, not ours. send_images
and save_images (the gallery keeps the images only when true, as A1111 saves them only then)
are honoured after the run. Inpainting: mask,
mask_blur (or _x/_y, equal), inpainting_fill, inpaint_full_res (+ _padding) and
inpainting_mask_invert, with A1111's API defaults; without a mask they cannot change the
result and are not used.

Extras (upscaling): GET /upscalers, GET /realesrgan-models, POST /extra-single-image and
/extra-batch-images live in server/upscaling.py (resize_mode, upscaling_resize(_w/_h),
upscaling_crop, upscaler_1, upscaler_2 + extras_upscaler_2_visibility honoured; face
restoration, gfpgan_visibility and codeformer_visibility above 0, refused by name).

The model A1111 clients switch with POST /options {"sd_model_checkpoint": title} is state of
this app (ServerState.current_model), checked when set, loaded on the next generation; so is
the VAE, {"sd_vae": name} (ServerState.current_vae; "Automatic" or "None": the model's own),
and clip skip, {"CLIP_stop_at_last_layers": n} (ServerState.current_clip_skip). Every key POSTed
to /options is stored in EASEL_HOME (a1111_options.py) and survives a restart; the three above
are applied, the others only stored, and the answer says which.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from easel.errors import InvalidRequest, ModelNotFound, UnsupportedFeature
from easel.request import MAX_CLIP_SKIP, MAX_SEED, MAX_SIDE, SIDE_SCHEMA, GenerationRequest, shown_value
from easel.server import openapi as api
from easel.server.a1111_options import vae_setting
from easel.server.jobs import Job
from easel.server.native import gallery_entry, submit
from easel.server.openapi import A1111, documented
from easel.server.state import ServerState, state_of

if TYPE_CHECKING:
    from easel.families.base import Family

State = Annotated[ServerState, Depends(state_of)]

# our field -> the A1111 field, so errors name what the client sent
A1111_FIELD = {
    "guidance_scale": "cfg_scale", "true_cfg_scale": "cfg_scale", "scheduler": "sampler_name",
    "num_images": "batch_size",
    "strength": "denoising_strength", "init_image": "init_images", "refiner": "refiner_checkpoint",
    "refiner_at": "refiner_switch_at", "model": "sd_model_checkpoint", "mask_image": "mask",
    "masked_content": "inpainting_fill", "inpaint_area": "inpaint_full_res",
    "inpaint_padding": "inpaint_full_res_padding", "invert_mask": "inpainting_mask_invert", "vae": "sd_vae",
    "variation_seed": "subseed", "variation_strength": "subseed_strength",
    "seed_resize_from": "seed_resize_from_w",
    "hires": "enable_hr", "hires.scale": "hr_scale", "hires.width": "hr_resize_x",
    "hires.height": "hr_resize_y", "hires.upscaler": "hr_upscaler", "hires.steps": "hr_second_pass_steps",
    "hires.strength": "denoising_strength", "hires.prompt": "hr_prompt",
    "hires.negative_prompt": "hr_negative_prompt", "hires.scheduler": "hr_sampler_name",
    "hires.guidance_scale": "hr_cfg",
}  # fmt: skip
OVERRIDE_MODEL = "override_settings.sd_model_checkpoint"
OVERRIDE_VAE = "override_settings.sd_vae"
CLIP_OPTION = "CLIP_stop_at_last_layers"  # A1111's clip skip setting (1 = none)
OVERRIDE_CLIP = f"override_settings.{CLIP_OPTION}"
# ControlUnit field -> the sd-webui-controlnet unit field
UNIT_FIELD = {"conditioning_scale": "weight", "preprocessor": "module", "canny_low": "threshold_a",
              "canny_high": "threshold_b"}  # fmt: skip
# sd-webui-controlnet module names -> easel preprocessors (others are passed on and refused by name)
A1111_MODULES = {
    "none": "none", "canny": "canny", "openpose": "openpose", "openpose_full": "openpose",
    "dw_openpose_full": "openpose", "depth": "depth", "depth_midas": "depth", "hed": "hed",
    "softedge_hed": "hed", "lineart": "lineart", "lineart_realistic": "lineart", "mlsd": "mlsd",
    "normal_bae": "normalbae",
}  # fmt: skip


class Txt2ImgRequest(BaseModel):
    """A1111's txt2img fields. Each is honoured, or accepted only at a value that leaves the
    image as A1111 would make it (its default, or a value that cannot change the result);
    anything else, and any field A1111 does not have, is a 422 naming it (check_fields)."""

    # strict: JSON types as documented (steps=true or cfg_scale="7" are refused, not converted);
    # no NaN/Infinity: the answer echoes these fields, and JSON cannot carry them (was a 500);
    # extra="allow" so that fields A1111 does not have can be refused by name (check_fields)
    model_config = ConfigDict(
        extra="allow", strict=True, allow_inf_nan=False, json_schema_extra={"additionalProperties": False}
    )

    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = Field(None, ge=1, le=1000)
    cfg_scale: float | None = Field(None, ge=0, le=100)
    distilled_cfg_scale: float | None = Field(
        None, ge=0, le=100, description="Forge's field: FLUX.1-dev's and Kontext's (distilled) guidance"
    )
    seed: int = Field(-1, le=MAX_SEED, description="-1 (any negative): random")
    width: int | None = Field(None, json_schema_extra=SIDE_SCHEMA)
    height: int | None = Field(None, json_schema_extra=SIDE_SCHEMA)
    sampler_name: str | None = None
    sampler_index: str | None = None  # older clients send the sampler name here
    scheduler: str | None = None  # A1111 >= 1.9: schedule type ("Automatic", "Karras")
    batch_size: int = Field(1, ge=1, le=64)  # and batch_size x n_iter <= 64
    n_iter: int = Field(1, ge=1, le=64)
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = Field(
        True, description="false: the override_settings easel applies stay set after this request"
    )
    alwayson_scripts: dict[str, Any] | None = None
    send_images: bool = Field(True, description="false: the answer carries no images")
    save_images: bool = Field(False, description="Whether the gallery keeps the images (A1111: save them)")
    # accepted at A1111's defaults only (or where they cannot change the image): see check_fields
    styles: list[str] | None = Field(None, description="Prompt styles (GET /sdapi/v1/prompt-styles)")
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = Field(None, ge=0, le=1)
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    force_task_id: str | None = None
    infotext: str | None = None
    # hires fix (enable_hr): the hr_* fields and denoising_strength set it (see _hires_fields)
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_cfg: float | None = Field(None, ge=0, le=100, description="Hires fix: second-pass CFG scale")
    firstpass_image: str | None = None


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(default_factory=list, json_schema_extra={"minItems": 1})
    denoising_strength: float | None = Field(None, ge=0, le=1)
    resize_mode: int = Field(0, description="0 (just resize) only")
    image_cfg_scale: float | None = Field(None, description="instruct-pix2pix models only: no effect here")
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    mask_round: bool = True
    include_init_images: bool = Field(False, description="Echo init_images and mask in `parameters`")
    # inpainting, with A1111's API defaults (used only with a mask; webuiapi sends them always)
    mask: str | None = Field(None, description="Inpainting mask (base64): white = repaint, black = keep")
    mask_blur: int | None = Field(None, ge=0, le=64, description="Sets mask_blur_x and mask_blur_y")
    mask_blur_x: int = Field(4, ge=0, le=64)
    mask_blur_y: int = Field(4, ge=0, le=64)
    inpainting_fill: int = Field(0, ge=0, le=3, description="0 fill, 1 original, 2/3 latent noise/nothing")
    inpaint_full_res: bool = Field(True, description="Only masked: work on a padded box around the mask")
    inpaint_full_res_padding: int = Field(0, ge=0, le=256)
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: repaint the black part")


class OptionsUpdate(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    sd_model_checkpoint: str | None = None
    sd_vae: str | None = None
    CLIP_stop_at_last_layers: int | None = Field(None, ge=1, le=MAX_CLIP_SKIP, description="Clip skip")


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    image: str


def _model_family(state: ServerState, model: str | None) -> Family | None:
    """The family of `model` (None when it cannot be found: the job reports that, naming the model)."""
    from easel.errors import EaselError
    from easel.models.cache import detect_family

    try:
        return detect_family(state.engine.resolve_model(model))
    except EaselError:
        return None


def _takes_true_cfg(family: Family | None) -> bool:
    """FLUX.1 (dev, schnell, Kontext): Forge's cfg_scale is its real CFG, easel's true_cfg_scale."""
    return family is not None and "true_cfg_scale" in family.options


def _guidance(body: Txt2ImgRequest, family: Family | None) -> dict[str, Any]:
    """guidance_scale (and true_cfg_scale) as Forge reads them: cfg_scale is classifier-free
    guidance, for FLUX.1 too, where it is the real CFG against the negative prompt (true_cfg_scale;
    1: off, the default); models whose guidance is distilled (FLUX.1-dev, Kontext: Forge's
    "Distilled CFG Scale") take that in distilled_cfg_scale, refused on any other model (it would
    change nothing). A FLUX.1 negative prompt without cfg_scale above 1 would be ignored: a 422."""
    distilled = family is not None and family.distilled_guidance
    if not distilled and body.distilled_cfg_scale is not None:
        raise InvalidRequest(
            f"invalid distilled_cfg_scale={body.distilled_cfg_scale:g}: only models with distilled "
            "guidance (FLUX.1-dev, FLUX.1 Kontext) use it; use cfg_scale",
            field="distilled_cfg_scale",
            value=body.distilled_cfg_scale,
        )
    if family is None or not _takes_true_cfg(family):
        return {"guidance_scale": body.cfg_scale}
    real = None if body.cfg_scale in (None, 1) else body.cfg_scale
    if body.negative_prompt and real is None:
        raise InvalidRequest(
            f"invalid negative_prompt: {family.title} runs a negative prompt only with real CFG (Forge's "
            "cfg_scale for FLUX, two passes a step); send cfg_scale above 1, or an empty negative_prompt",
            field="negative_prompt",
            value=shown_value(body.negative_prompt),
        )
    fields: dict[str, Any] = {"true_cfg_scale": real}
    if distilled:
        fields["guidance_scale"] = body.distilled_cfg_scale
    return fields


def to_generation_request(
    body: Txt2ImgRequest, state: ServerState
) -> tuple[GenerationRequest, Family | None]:
    """The A1111 request as a GenerationRequest, with errors naming A1111's fields; and the model's
    family (None: not found), detected once here and passed on to the answer's info."""
    check_fields(body)
    controls, unit_index = _control_units(body.alwayson_scripts or {}, state)
    fields: dict[str, Any] = {
        "prompt": body.prompt,
        "prompt_syntax": "a1111",
        "negative_prompt": body.negative_prompt,
        "steps": body.steps,
        "seed": None if body.seed < 0 else body.seed,
        "width": body.width,
        "height": body.height,
        "scheduler": _sampler(body),
        "num_images": body.batch_size * body.n_iter,
        "clip_skip": _clip_skip(body, state),
        "styles": list(body.styles or []),  # expanded by the engine from styles.csv
        "eta": _ddim_eta(body),
        "tiling": bool(body.tiling),
        **_variation_fields(body),
    }
    model = (body.override_settings or {}).get("sd_model_checkpoint")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest(f"invalid {OVERRIDE_MODEL}={model!r}: expected a model title (a string)",
                             field=OVERRIDE_MODEL, value=model)  # fmt: skip
    fields["model"] = (
        state.policy.model_reference(model, field=OVERRIDE_MODEL) if model else state.current_model
    )
    family = _model_family(state, fields["model"])
    fields.update(_guidance(body, family))
    overrides = body.override_settings or {}
    fields["vae"] = (
        vae_setting(overrides["sd_vae"], state, field=OVERRIDE_VAE)
        if "sd_vae" in overrides
        else state.current_vae
    )
    if _refiner(body):
        fields["refiner"] = body.refiner_checkpoint
        fields["refiner_at"] = body.refiner_switch_at
    if isinstance(body, Img2ImgRequest):
        if body.mask:
            fields.update(_inpaint_fields(body, state))
        if not body.init_images:
            raise InvalidRequest("init_images is required for img2img", field="init_images")
        if len(body.init_images) > 1:  # A1111 makes a batch of them; easel edits one picture
            raise InvalidRequest(
                f"invalid init_images: {len(body.init_images)} images; easel edits one init image per "
                "request (send one request per image)",
                field="init_images",
            )
        fields["init_image"] = state.policy.data_url(body.init_images[0], field="init_images")
        fields["strength"] = 0.75 if body.denoising_strength is None else body.denoising_strength
    if controls:
        fields["controls"] = controls
    hires = _hires_fields(body)
    if hires is not None:
        fields["hires"] = hires
    try:
        return state.policy.check(GenerationRequest.from_fields(fields)), family
    except InvalidRequest as error:
        raise _renamed(error, unit_index, names=_sent_names(body)) from None


# A1111 settings easel applies from override_settings (and POST /options)
APPLIED_OPTIONS = ("sd_model_checkpoint", "sd_vae", CLIP_OPTION)
# A1111 settings override_settings may carry at their default value, where the image is what A1111
# makes (eta_ancestral 1: easel's ancestral samplers; eta_ddim 0: diffusers' DDIM; ...); any other
# value, and any other setting, is refused naming override_settings.<key>
OPTION_DEFAULTS: dict[str, Any] = {
    "samples_format": "png", "enable_pnginfo": True, "eta_noise_seed_delta": 0, "eta_ancestral": 1.0,
    "eta_ddim": 0.0, "s_churn": 0.0, "s_tmin": 0.0, "s_noise": 1.0, "s_min_uncond": 0.0,
    "token_merging_ratio": 0.0, "img2img_fix_steps": False,
}  # fmt: skip
# A1111 fields easel does not build: (values at which they leave the image as A1111 makes it, why)
NOT_BUILT: dict[str, tuple[tuple[Any, ...], str]] = {
    "firstphase_width": ((0,), "easel's hires fix takes the first pass's size from width/height (0 only)"),
    "firstphase_height": ((0,), "easel's hires fix takes the first pass's size from width/height (0 only)"),
    "firstpass_image": ((None, ""), "easel's hires fix makes its own first pass; a given one is not built"),
    "restore_faces": ((False, None), "easel has no face restoration"),
    "script_name": ((None, "", "None"), "easel runs no A1111 scripts (GET /sdapi/v1/scripts lists none)"),
    "s_churn": ((0, None), "easel's samplers run without churn (A1111's default 0)"),
    "s_noise": ((1, None), "easel's samplers add noise at scale 1 (A1111's default)"),
    "s_min_uncond": ((0, None), "easel applies the negative prompt at every step (A1111's default 0)"),
    "disable_extra_networks": ((False,), "easel always applies the prompt's <lora:...> tags; remove them"),
    "infotext": ((None, ""), "easel reads no request fields from infotext; send them as fields"),
    "resize_mode": ((0,), "easel resizes the init image to width x height (0, just resize) only"),
    "initial_noise_multiplier": ((1, None), "easel adds the init image's noise at scale 1 (the default)"),
    "latent_mask": ((None, ""), "a separate latent mask is not built in easel"),
}  # fmt: skip
# diffusers scheduler classes whose noise A1111's eta scales, and the eta they run with here
ANCESTRAL = (
    "EulerAncestralDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverSinglestepScheduler",  # A1111's "DPM++ SDE"
)


def check_fields(body: Txt2ImgRequest) -> None:
    """Refuse (422 naming the field) what easel would otherwise accept and ignore: fields A1111
    does not have, features easel does not build set to anything but a value that leaves the
    image as A1111 makes it, override_settings easel cannot apply, other always-on scripts."""
    for name, value in (body.model_extra or {}).items():
        raise InvalidRequest(
            f"unknown field {name!r}: AUTOMATIC1111's API has no such field, and easel refuses what it "
            "would otherwise ignore",
            field=name,
            value=value,
        )
    for name, (accepted, why) in NOT_BUILT.items():
        value = getattr(body, name, None)
        if name in type(body).model_fields and not any(_same(value, ok) for ok in accepted):
            raise InvalidRequest(f"invalid {name}={shown_value(value)}: {why}", field=name, value=value)
    if body.refiner_switch_at is not None and not _refiner(body):
        raise InvalidRequest(
            f"invalid refiner_switch_at={body.refiner_switch_at!r}: it says where the refiner takes over; "
            "give refiner_checkpoint too",
            field="refiner_switch_at",
            value=body.refiner_switch_at,
        )
    _check_eta(body)
    if isinstance(body, Img2ImgRequest) and body.mask and not body.mask_round:
        raise InvalidRequest("invalid mask_round=False: easel's inpainting works with A1111's default (true)",
                             field="mask_round", value=False)  # fmt: skip
    for key, value in (body.override_settings or {}).items():
        if key not in APPLIED_OPTIONS and not (key in OPTION_DEFAULTS and _same(value, OPTION_DEFAULTS[key])):
            field = f"override_settings.{key}"
            default = OPTION_DEFAULTS.get(key)
            known = f" (accepted only at A1111's default, {default!r})" if key in OPTION_DEFAULTS else ""
            raise InvalidRequest(
                f"invalid {field}={shown_value(value)}: easel cannot apply this setting{known}; it applies "
                + ", ".join(APPLIED_OPTIONS),
                field=field,
                value=value,
            )
    for name, script in (body.alwayson_scripts or {}).items():
        args = script.get("args") if isinstance(script, dict) else None
        if name.lower() != "controlnet" and not (isinstance(args, list) and (not args or args[0] is False)):
            raise InvalidRequest(
                f"invalid alwayson_scripts.{name}: easel runs no always-on script but ControlNet "
                '(a disabled one, {"args": []} or {"args": [false, ...]}, is accepted)',
                field=f"alwayson_scripts.{name}",
            )


# the hires fix's fields and the values at which they leave it off or "as the first pass" (A1111's
# defaults, the "Use same ..." choices, and what webuiapi sends)
HR_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "hr_scale": (2,), "hr_upscaler": (None, "", "Latent"), "hr_second_pass_steps": (0,), "hr_resize_x": (0,),
    "hr_resize_y": (0,), "hr_checkpoint_name": (None, "", "Use same checkpoint"),
    "hr_sampler_name": (None, "", "Use same sampler"), "hr_scheduler": (None, "", "Use same scheduler"),
    "hr_prompt": ("",), "hr_negative_prompt": ("",), "hr_cfg": (None,),
}  # fmt: skip
HR_STRENGTH = 0.7  # A1111's hires denoising strength when denoising_strength is not sent


def _hires_fields(body: Txt2ImgRequest) -> dict[str, Any] | None:
    """enable_hr and the hr_* fields -> the request's `hires` (None: off). With enable_hr false an
    hr_* field set to anything but its default is refused, naming it, rather than ignored."""

    def default(name: str) -> bool:
        return any(_same(getattr(body, name), ok) for ok in HR_DEFAULTS[name])

    if not body.enable_hr:
        for name in HR_DEFAULTS:
            if not default(name):
                value = getattr(body, name)
                raise InvalidRequest(
                    f"invalid {name}={shown_value(value)}: it sets the hires fix, which is off; send "
                    "enable_hr=true too (or leave it at its default)",
                    field=name,
                    value=value,
                )
        return None
    if isinstance(body, Img2ImgRequest):
        raise InvalidRequest("invalid enable_hr=True: the hires fix is a txt2img feature (A1111's img2img "
                             "has none)", field="enable_hr", value=True)  # fmt: skip
    if not default("hr_checkpoint_name"):
        raise InvalidRequest(
            f"invalid hr_checkpoint_name={shown_value(body.hr_checkpoint_name)}: a second-pass checkpoint is "
            "not built in easel; the hires fix uses the same checkpoint ('Use same checkpoint')",
            field="hr_checkpoint_name",
            value=body.hr_checkpoint_name,
        )
    hires: dict[str, Any] = {
        "upscaler": body.hr_upscaler or "Latent",
        "strength": HR_STRENGTH if body.denoising_strength is None else body.denoising_strength,
    }
    x, y = body.hr_resize_x, body.hr_resize_y
    if x > 0 and y > 0 and (body.width is None or body.height is None or x * body.height != y * body.width):
        raise InvalidRequest(
            f"invalid hr_resize_y={y}: with both hr_resize_x and hr_resize_y, A1111 crops to that aspect "
            "ratio, which easel does not build; send one of them (the other follows width x height's ratio)",
            field="hr_resize_y",
            value=y,
        )
    if x > 0 or y > 0:
        hires.update(width=x or None, height=y or None)
    else:
        hires["scale"] = body.hr_scale
    if body.hr_second_pass_steps:
        hires["steps"] = body.hr_second_pass_steps
    if body.hr_prompt:
        hires["prompt"] = body.hr_prompt
    if body.hr_negative_prompt:
        hires["negative_prompt"] = body.hr_negative_prompt
    if body.hr_cfg is not None:
        hires["guidance_scale"] = body.hr_cfg
    if not (default("hr_sampler_name") and default("hr_scheduler")):
        first = body.sampler_name or body.sampler_index
        name = body.hr_sampler_name if not default("hr_sampler_name") else first
        schedule = body.hr_scheduler if not default("hr_scheduler") else body.scheduler
        if not name:
            raise InvalidRequest(
                f"invalid hr_scheduler={body.hr_scheduler!r}: name the sampler it applies to "
                "(hr_sampler_name or sampler_name)",
                field="hr_scheduler",
                value=body.hr_scheduler,
            )
        hires["scheduler"] = sampler_label(name, schedule, field="hr_scheduler")
    return hires


def _same(value: Any, accepted: Any) -> bool:
    """`value` equals an accepted value as JSON means it (1 == 1.0, but true is not 1)."""
    if isinstance(value, bool) or isinstance(accepted, bool):
        return isinstance(value, bool) and isinstance(accepted, bool) and value == accepted
    return value == accepted


def _refiner(body: Txt2ImgRequest) -> bool:
    return bool(body.refiner_checkpoint) and body.refiner_checkpoint.lower() not in ("none", "")


def _check_eta(body: Txt2ImgRequest) -> None:
    """eta is honoured for DDIM (the request's eta, see _ddim_eta) and accepted where it leaves the
    sampler as easel runs it: 1 for the ancestral and SDE samplers (A1111's eta_ancestral
    default), any value for samplers it does not touch; without a sampler named, easel cannot
    tell, so only null."""
    from easel.schedulers import scheduler_spec

    if body.eta is None:
        return
    sampler = _sampler(body)
    spec = scheduler_spec(sampler) if sampler else None
    if sampler and spec is None:
        return  # the unknown sampler is refused, naming its field
    if spec is None:
        raise InvalidRequest(f"invalid eta={body.eta!r}: name the sampler (sampler_name) it applies to",
                             field="eta", value=body.eta)  # fmt: skip
    kind, config = spec
    sde = str(config.get("algorithm_type", "")).startswith("sde-")
    runs_with = 1.0 if kind in ANCESTRAL or sde else None
    if runs_with is not None and body.eta != runs_with:
        raise InvalidRequest(
            f"invalid eta={body.eta!r}: easel's {sampler} runs with eta {runs_with:g} (A1111's default "
            "for it)",
            field="eta",
            value=body.eta,
        )


def _ddim_eta(body: Txt2ImgRequest) -> float | None:
    """A1111's eta for a DDIM sampler -> the request's eta (DDIM's); other samplers' eta was
    checked by _check_eta and does not reach the request."""
    from easel.schedulers import scheduler_spec

    sampler = _sampler(body) if body.eta is not None else None
    spec = scheduler_spec(sampler) if sampler else None
    return body.eta if spec is not None and spec[0] == "DDIMScheduler" else None


def _variation_fields(body: Txt2ImgRequest) -> dict[str, Any]:
    """subseed (-1, any negative: random, drawn by the engine and recorded), subseed_strength and
    seed_resize_from_w/h (on when both are above 0, A1111's rule; one alone is refused rather than
    ignored) -> the variation fields (see easel.noise)."""
    width, height = body.seed_resize_from_w, body.seed_resize_from_h
    resize = None
    if width > 0 or height > 0:
        sides = {"seed_resize_from_w": width, "seed_resize_from_h": height}
        for name, side in sides.items():
            if side > 0 and (side % 8 or side > MAX_SIDE):
                raise InvalidRequest(f"invalid {name}={side}: must be a multiple of 8 between 8 and "
                                     f"{MAX_SIDE}", field=name, value=side)  # fmt: skip
        for name, side in sides.items():
            other = next(key for key in sides if key != name)
            if side > 0 and sides[other] <= 0:
                raise InvalidRequest(
                    f"invalid {name}={side}: seed resize needs {other} too (both above 0; both 0 or -1: off)",
                    field=name,
                    value=side,
                )
        resize = (width, height)
    return {
        "variation_seed": None if body.subseed < 0 else body.subseed,
        "variation_strength": body.subseed_strength,
        "seed_resize_from": resize,
    }


def _clip_skip(body: Txt2ImgRequest, state: ServerState) -> int | None:
    """override_settings.CLIP_stop_at_last_layers, else the /options setting; 1 (no skip) -> None."""
    overrides = body.override_settings or {}
    value = overrides.get(CLIP_OPTION, state.current_clip_skip)
    if CLIP_OPTION in overrides and (
        not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CLIP_SKIP
    ):
        raise InvalidRequest(
            f"invalid {OVERRIDE_CLIP}={shown_value(value)}: expected a whole number from 1 (no skip) to "
            f"{MAX_CLIP_SKIP}",
            field=OVERRIDE_CLIP,
            value=value,
        )
    return None if value in (None, 1) else value


def _inpaint_fields(body: Img2ImgRequest, state: ServerState) -> dict[str, Any]:
    """A1111's inpainting fields as GenerationRequest fields (A1111's own meanings: a
    `mask_blur` sets both directions; easel blurs both alike, so different ones are refused)."""
    from easel.inpaint import A1111_INPAINTING_FILL

    blur_x, blur_y = (body.mask_blur, body.mask_blur) if body.mask_blur is not None else (
        body.mask_blur_x, body.mask_blur_y)  # fmt: skip
    if blur_x != blur_y:
        raise InvalidRequest(
            f"invalid mask_blur_x={blur_x}, mask_blur_y={blur_y}: easel blurs the mask alike in both "
            "directions; send mask_blur (or equal values)",
            field="mask_blur_x",
            value=blur_x,
        )
    assert body.mask is not None
    return {
        "mask_image": state.policy.data_url(body.mask, field="mask"),
        "mask_blur": blur_x,
        "masked_content": A1111_INPAINTING_FILL[body.inpainting_fill],
        "inpaint_area": "masked" if body.inpaint_full_res else "whole",
        "inpaint_padding": body.inpaint_full_res_padding,
        "invert_mask": bool(body.inpainting_mask_invert),
    }


def _model_field(body: Txt2ImgRequest) -> str:
    """Where this request named its model: override_settings, or the /options setting."""
    named = (body.override_settings or {}).get("sd_model_checkpoint")
    return OVERRIDE_MODEL if named else "sd_model_checkpoint"


def _sent_names(body: Txt2ImgRequest) -> dict[str, str]:
    """Our fields -> the A1111 field this request set them with, where that depends on the
    request: the model and clip skip (override_settings or /options), the sampler (sampler_name
    or, when that is empty, sampler_index)."""
    clip = OVERRIDE_CLIP if "CLIP_stop_at_last_layers" in (body.override_settings or {}) else CLIP_OPTION
    sampler = "sampler_index" if not body.sampler_name and body.sampler_index else "sampler_name"
    return {"model": _model_field(body), "clip_skip": clip, "scheduler": sampler}


def _renamed(
    error: InvalidRequest, unit_index: list[int] | None = None, *, names: dict[str, str] | None = None
) -> InvalidRequest:
    """The error with the A1111 name of its field (controls[i].x -> the ControlNet unit's;
    `names`: what this request used, see _sent_names)."""
    unit = re.fullmatch(r"controls\[(\d+)\]\.(\w+)", error.field or "")
    if unit is not None and unit_index:
        position = unit_index[int(unit.group(1))] if int(unit.group(1)) < len(unit_index) else unit.group(1)
        name = UNIT_FIELD.get(unit.group(2), unit.group(2))
        theirs = f"alwayson_scripts.controlnet.args[{position}].{name}"
        message = str(error).replace(error.field or "", theirs, 1)
        return InvalidRequest(message, field=theirs, value=error.value)
    if (error.field or "").startswith("styles["):  # an unknown style: A1111's field is the list
        return InvalidRequest(str(error), field="styles", value=error.value)
    theirs = {**A1111_FIELD, "model": "sd_model_checkpoint", **(names or {})}.get(error.field or "")
    if theirs is None:
        return error
    message = str(error).replace(f"invalid {error.field}=", f"invalid {theirs}=", 1)
    return InvalidRequest(message.replace(f"{error.field} is required", f"{theirs} is required"),
                          field=theirs, value=error.value)  # fmt: skip


def _sampler(body: Txt2ImgRequest) -> str | None:
    """sampler_name (or sampler_index) and A1111 >= 1.9's separate schedule type (`scheduler`) as
    easel's one label ("DPM++ 2M" + "Karras" -> "DPM++ 2M Karras"); a schedule type easel cannot
    run, or one that contradicts the sampler's own suffix, is refused naming `scheduler`."""
    return sampler_label(body.sampler_name or body.sampler_index, body.scheduler, field="scheduler")


def sampler_label(name: str | None, schedule: str | None, *, field: str) -> str | None:
    """An A1111 sampler name plus a separate schedule type -> easel's scheduler label; errors
    about the schedule type name `field` (the unknown sampler is left for the request's own
    validation, which names the sampler's field)."""
    from easel.schedulers import REFUSED_SCHEDULE_TYPES, SCHEDULE_TYPES, scheduler_problem, split_label

    known = {label.casefold(): label for label in (*SCHEDULE_TYPES, *REFUSED_SCHEDULE_TYPES)}
    # A1111 takes a schedule type by label ("SGM Uniform") or by name ("sgm_uniform")
    label = known.get((schedule or "Automatic").strip().casefold().replace("_", " "))
    if label is None:
        raise InvalidRequest(
            f"invalid {field}={schedule!r}: unknown schedule type; easel runs " + ", ".join(SCHEDULE_TYPES),
            field=field,
            value=schedule,
        )
    if label in REFUSED_SCHEDULE_TYPES:
        raise InvalidRequest(
            f"invalid {field}={schedule!r}: {REFUSED_SCHEDULE_TYPES[label]}; easel runs "
            + ", ".join(SCHEDULE_TYPES),
            field=field,
            value=schedule,
        )
    if label == "Automatic":
        return name
    parts = None if not name else split_label(name)
    if parts is None:
        if not name or scheduler_problem(name) is None:  # no sampler, or a diffusers class name
            raise InvalidRequest(
                f"invalid {field}={schedule!r}: a schedule type applies to an A1111 sampler; name one in "
                "sampler_name (e.g. 'DPM++ 2M')",
                field=field,
                value=schedule,
            )
        return name  # an unknown sampler: refused naming the sampler's field
    sampler, suffix = parts
    if suffix is not None and suffix != label:
        raise InvalidRequest(
            f"invalid {field}={schedule!r}: the sampler {name!r} already says schedule type {suffix!r}",
            field=field,
            value=schedule,
        )
    problem = scheduler_problem(f"{sampler} {label}")
    if problem is not None:
        raise InvalidRequest(f"invalid {field}={schedule!r}: {problem}", field=field, value=schedule)
    return f"{sampler} {label}"


def _enabled_units(scripts: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(index in `args`, unit) of each enabled sd-webui-controlnet unit; a script, `args` or
    unit of the wrong JSON type is refused naming it, never skipped."""
    enabled: list[tuple[int, dict[str, Any]]] = []
    for name, script in scripts.items():
        if name.lower() != "controlnet":
            continue
        if not isinstance(script, dict):
            raise InvalidRequest(
                f'invalid alwayson_scripts.{name}: expected an object {{"args": [unit, ...]}}, '
                f"got {type(script).__name__}",
                field=f"alwayson_scripts.{name}",
            )
        args = script.get("args")
        if args is not None and not isinstance(args, list):
            raise InvalidRequest(
                f"invalid alwayson_scripts.{name}.args: expected a list of ControlNet units, "
                f"got {type(args).__name__}",
                field=f"alwayson_scripts.{name}.args",
            )
        for position, unit in enumerate(args or []):
            where = f"alwayson_scripts.{name}.args[{position}]"
            if not isinstance(unit, dict):
                raise InvalidRequest(
                    f"invalid {where}: expected a ControlNet unit (an object), got {type(unit).__name__}",
                    field=where,
                )
            if unit.get("enabled", True):
                enabled.append((position, unit))
    return enabled


def _control_units(scripts: dict[str, Any], state: ServerState) -> tuple[list[dict[str, Any]], list[int]]:
    """sd-webui-controlnet units -> ControlUnit fields, and each unit's index in `args`
    (disabled units are skipped, so errors can still name the unit the client sent)."""
    units: list[dict[str, Any]] = []
    positions: list[int] = []
    for position, unit in _enabled_units(scripts):
        where = f"alwayson_scripts.controlnet.args[{position}]"
        image = unit.get("image") or unit.get("input_image")
        if isinstance(image, dict):  # {"image": ..., "mask": ...}, as the A1111 UI sends it
            image = image.get("image")
        if not image:
            raise InvalidRequest(f"{where}.image is required (base64 image)", field=f"{where}.image")
        if not isinstance(image, str):
            raise InvalidRequest(
                f"invalid {where}.image: expected a base64 image (a string), got {type(image).__name__}",
                field=f"{where}.image",
            )
        if unit.get("mask") or unit.get("mask_image"):
            raise UnsupportedFeature(f"{where}.mask: ControlNet masks are not supported yet")
        module = str(unit.get("module") or "none").strip().lower()
        fields: dict[str, Any] = {
            "model": _control_model(unit.get("model"), field=f"{where}.model"),
            "image": state.policy.data_url(image, field=f"{where}.image"),
            "preprocessor": A1111_MODULES.get(module, module),
        }
        for theirs, ours in (("weight", "conditioning_scale"), ("guidance_start", "guidance_start"),
                             ("guidance_end", "guidance_end")):  # fmt: skip
            if unit.get(theirs) is not None:
                fields[ours] = unit[theirs]
        if fields["preprocessor"] == "canny":  # A1111: threshold_a/b; -1 means the default
            for theirs, ours in (("threshold_a", "canny_low"), ("threshold_b", "canny_high")):
                value = unit.get(theirs)
                if isinstance(value, int | float) and value >= 0:
                    fields[ours] = int(value)
        units.append(fields)
        positions.append(position)
    return units, positions


def _control_model(value: Any, *, field: str) -> str:
    """A1111 ControlNet model names ("control_v11p_sd15_canny [d14c016b]") -> hub repo ids."""
    name = str(value or "").split(" [", 1)[0].strip()
    if not name or name.lower() == "none":
        raise InvalidRequest(
            f"{field} is required: name a ControlNet (e.g. control_v11p_sd15_canny)", field=field
        )
    if name in ("demo", "easel-demo-controlnet"):
        return "demo"
    if "/" not in name and re.fullmatch(r"control_[\w.-]+", name):
        return f"lllyasviel/{name}"  # A1111's names are the lllyasviel repositories' names
    return name  # a hub repo id (the door policy refuses anything else)


async def _run(state: ServerState, request: GenerationRequest, body: Txt2ImgRequest) -> Job:
    """Queue and wait; the job's errors name the A1111 fields `body` sent."""
    job = await state.queue.wait(await submit(state, request, "a1111"))
    error = job.exception()
    names = _sent_names(body)
    model_field = names["model"]
    if isinstance(error, InvalidRequest):
        positions = [position for position, _ in _enabled_units(body.alwayson_scripts or {})]
        raise _renamed(error, positions, names=names)
    if isinstance(error, ModelNotFound) and request.model and repr(request.model) in str(error):
        error.field = model_field  # type: ignore[attr-defined]  # the 404 names what the client sent
    if getattr(error, "field", None) == "vae":  # a VAE that failed to load: the option that named it
        error.field = OVERRIDE_VAE if "sd_vae" in (body.override_settings or {}) else "sd_vae"  # type: ignore[union-attr]
    # a model that cannot skip; FLUX's real CFG where its pipeline has none: the A1111 field
    theirs = {"clip_skip": names["clip_skip"], "true_cfg_scale": "cfg_scale"}.get(getattr(error, "field", ""))
    if error is not None and theirs is not None:
        error = type(error)(str(error).replace(str(getattr(error, "field", "")), theirs, 1))
        error.field = theirs  # type: ignore[attr-defined]
    if error is not None:
        raise error
    return job


def _response(state: ServerState, job: Job, body: BaseModel, family: Family | None) -> dict[str, Any]:
    """{"images", "parameters", "info"} as A1111 answers; info is a JSON string. `family`: what
    to_generation_request detected (None: not found)."""
    from easel.model_names import vae_display_name
    from easel.models.hashing import short_hash

    summary = job.summary or {}
    request = summary.get("request", {})
    seeds = [image["seed"] for image in job.images]
    count = len(job.images)
    variation = request.get("variation_seed")  # A1111's subseed of image i: subseed + i
    subseeds = seeds if variation is None else [variation + index for index in range(count)]
    images = [
        base64.b64encode(gallery_entry(state, image["id"]).path.read_bytes()).decode("ascii")
        for image in job.images
        if getattr(body, "send_images", True)  # false: A1111 answers without images
    ]
    info = {
        "prompt": request.get("prompt", ""),
        "all_prompts": [request.get("prompt", "")] * count,
        "negative_prompt": request.get("negative_prompt", ""),
        "all_negative_prompts": [request.get("negative_prompt", "")] * count,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": subseeds[0],
        "all_subseeds": subseeds,
        "subseed_strength": request.get("variation_strength", 0),
        "width": request.get("width"),
        "height": request.get("height"),
        "sampler_name": summary.get("sampler", ""),
        **_guidance_info(request, family),
        "steps": request.get("steps"),
        "batch_size": getattr(body, "batch_size", 1),
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": summary.get("model", ""),
        "sd_model_hash": short_hash((summary.get("model_hashes") or {}).get("base")),
        "sd_vae_name": None if request.get("vae") is None else vae_display_name(request["vae"]),
        "sd_vae_hash": short_hash((summary.get("model_hashes") or {}).get("vae")),
        "seed_resize_from_w": (request.get("seed_resize_from") or (-1, -1))[0],
        "seed_resize_from_h": (request.get("seed_resize_from") or (-1, -1))[1],
        "denoising_strength": (request.get("hires") or {}).get("strength", request.get("strength")),
        "extra_generation_params": _hires_info(request),
        "index_of_first_image": 0,
        "infotexts": [image["parameters"] for image in job.images],
        "styles": list(getattr(body, "styles", None) or []),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": request.get("clip_skip") or 1,
        "is_using_inpainting_conditioning": bool(summary.get("inpainting_conditioning", False)),
        "version": f"easel-{_easel_version()}",
    }
    parameters = body.model_dump()
    for uploaded in ("init_images", "mask"):  # A1111 echoes uploaded images only when asked to
        if uploaded in parameters and not getattr(body, "include_init_images", False):
            parameters[uploaded] = None
    return {"images": images, "parameters": parameters, "info": json.dumps(info, ensure_ascii=False)}


def _guidance_info(request: dict[str, Any], family: Family | None) -> dict[str, Any]:
    """cfg_scale (FLUX.1: its real CFG, 1 when off) and, for distilled guidance, Forge's
    distilled_cfg_scale, of the answer's info."""
    if not _takes_true_cfg(family):
        return {"cfg_scale": request.get("guidance_scale")}
    info = {"cfg_scale": request.get("true_cfg_scale") or 1.0}
    if family is not None and family.distilled_guidance:
        info["distilled_cfg_scale"] = request.get("guidance_scale")
    return info


def _hires_info(request: dict[str, Any]) -> dict[str, Any]:
    """The hires fix's infotext entries (A1111 lists them in extra_generation_params), from the
    job's concrete request; {} without the hires fix."""
    if not request.get("hires"):
        return {}
    from easel.storage.metadata import hires_parameters

    entries = hires_parameters(GenerationRequest.from_fields(request))
    entries.pop("Denoising strength", None)  # info has its own denoising_strength
    return entries


def _after(state: ServerState, job: Job, body: Txt2ImgRequest) -> None:
    """What A1111 does after answering: without save_images it keeps no file, so the gallery lets
    the images go (the answer already holds them); with override_settings_restore_afterwards
    false, the settings easel applied stay set (as POST /options would set them)."""
    if not body.save_images:
        for image in job.images:
            state.gallery.delete(image["id"])
    overrides = body.override_settings or {}
    if not body.override_settings_restore_afterwards and overrides:
        from easel.server.a1111_options import remember_applied

        remember_applied(state, overrides)  # kept, as POST /options would keep them
        request = job.request
        if "sd_model_checkpoint" in overrides:
            state.current_model = request.model
        if "sd_vae" in overrides:
            state.current_vae = request.vae
        if CLIP_OPTION in overrides:
            state.current_clip_skip = request.clip_skip


def _easel_version() -> str:
    from easel.server.state import _version

    return _version()


def build_router() -> APIRouter:
    """The routes of this API, built per app (create_app), so no router is shared module state."""
    router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"])

    @router.post("/txt2img", **documented(A1111, api.A1111Images, *api.GENERATION))
    async def txt2img(body: Txt2ImgRequest, state: State) -> dict[str, Any]:
        request, family = to_generation_request(body, state)
        job = await _run(state, request, body)
        answer = _response(state, job, body, family)
        _after(state, job, body)
        return answer

    @router.post("/img2img", **documented(A1111, api.A1111Images, *api.GENERATION))
    async def img2img(body: Img2ImgRequest, state: State) -> dict[str, Any]:
        request, family = to_generation_request(body, state)
        job = await _run(state, request, body)
        answer = _response(state, job, body, family)
        _after(state, job, body)
        return answer

    @router.get("/sd-models", **documented(A1111, list[api.A1111Model]))
    async def sd_models(state: State) -> list[dict[str, Any]]:
        return [
            {"title": m.title, "model_name": m.name, "hash": None, "sha256": None, "filename": m.title,
             "config": None}
            for m in state.models()
        ]  # fmt: skip

    @router.get("/loras", **documented(A1111, list[api.A1111Lora]))
    async def loras(state: State) -> list[dict[str, Any]]:
        """A1111's LoRA list; `name` is what <lora:name:weight> takes."""
        from starlette.concurrency import run_in_threadpool

        from easel.server.state import public_loras

        entries = await run_in_threadpool(public_loras, state)
        return [
            {"name": e["name"], "alias": e["name"], "path": f"{e['name']}.safetensors", "metadata": {}}
            for e in entries
        ]

    @router.post("/refresh-loras", **documented(A1111, api.NULL))
    async def refresh_loras() -> None:
        """The LoRA folder is read on every request; nothing to refresh."""

    @router.get("/embeddings", **documented(A1111, api.A1111Embeddings))
    async def embeddings(state: State) -> dict[str, Any]:
        """A1111's embedding list: every readable file in the embeddings folder under `loaded`
        (easel loads one when a prompt first names it, into whichever model runs), unreadable
        ones under `skipped` with easel's `reason`."""
        from starlette.concurrency import run_in_threadpool

        from easel.server.state import public_embeddings

        entries = await run_in_threadpool(public_embeddings, state)
        listed: dict[str, dict[str, Any]] = {"loaded": {}, "skipped": {}}
        for e in entries:
            record = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                      "shape": e["width"], "vectors": e["vectors"]}  # fmt: skip
            if e["error"] is None:
                listed["loaded"][e["name"]] = record
            else:
                listed["skipped"][e["name"]] = {**record, "reason": e["error"]}
        return listed

    @router.post("/refresh-embeddings", **documented(A1111, api.NULL))
    async def refresh_embeddings() -> None:
        """The embeddings folder is read on every request; nothing to refresh."""

    @router.post("/refresh-checkpoints", **documented(A1111, api.NULL))
    async def refresh_checkpoints() -> None:
        """Models are listed fresh on every request; nothing to refresh."""

    @router.get("/options", **documented(A1111, api.A1111Options))
    async def get_options(state: State) -> dict[str, Any]:
        """Every stored setting, with the ones easel applies at their current values."""
        from easel.server.a1111_options import current_options

        return await asyncio.to_thread(current_options, state)

    @router.post("/options", **documented(A1111, api.A1111OptionsStored, 404, *api.BODY))
    async def set_options(body: OptionsUpdate, state: State) -> dict[str, list[str]]:
        """Stores every setting sent (EASEL_HOME/a1111-options.json; kept across restarts).
        sd_model_checkpoint (a model easel can find), sd_vae (a listed VAE, or Automatic/None)
        and CLIP_stop_at_last_layers (clip skip, 1-12) are applied, checked first: a bad one is
        a 422 naming it and nothing is stored. The answer lists the keys `applied` and the keys
        only stored (`not_applied`: they change nothing here)."""
        from easel.server.a1111_options import store_options

        sent = {name: getattr(body, name) for name in body.model_fields_set}
        sent = {name: value for name, value in sent.items() if value is not None}  # null: unchanged
        return await asyncio.to_thread(store_options, state, {**sent, **(body.model_extra or {})})

    @router.get("/sd-vae", **documented(A1111, list[api.A1111Vae]))
    async def sd_vae() -> list[dict[str, Any]]:
        """The VAEs sd_vae may name: AutoencoderKL repos in the HF cache (by repo id; no paths)."""
        from easel.server.policy import list_vaes

        names = await asyncio.to_thread(list_vaes)
        return [{"model_name": repo_id, "filename": repo_id} for repo_id in names]

    @router.post("/refresh-vae", **documented(A1111, api.NULL))
    async def refresh_vae() -> None:
        """VAEs are listed fresh on every request; nothing to refresh."""

    @router.get("/samplers", **documented(A1111, list[api.A1111Sampler]))
    async def samplers() -> list[dict[str, Any]]:
        """The A1111 samplers easel runs; `aliases` are the combined labels it also accepts (the
        sampler with each schedule type it can run, "DPM++ 2M Karras"), `options` the diffusers
        class and config it builds."""
        from easel.schedulers import A1111_SAMPLERS, schedule_types_for

        return [
            {
                "name": name,
                "aliases": [f"{name} {t}" for t in schedule_types_for(cls) if t != "Automatic"],
                "options": {"class": cls, **options},
            }
            for name, (cls, options) in A1111_SAMPLERS.items()
        ]

    @router.get("/schedulers", **documented(A1111, list[api.A1111Scheduler]))
    async def schedulers() -> list[dict[str, Any]]:
        """The schedule types easel runs (others, such as Polyexponential, are refused by name)."""
        from easel.schedulers import SCHEDULE_TYPES

        return [
            {"name": label.lower().replace(" ", "_"), "label": label, "aliases": None,
             "default_rho": 7.0 if label == "Karras" else -1, "need_inner_model": False}
            for label in SCHEDULE_TYPES
        ]  # fmt: skip

    @router.get("/latent-upscale-modes", **documented(A1111, list[api.A1111LatentUpscaleMode]))
    async def latent_upscale_modes() -> list[dict[str, str]]:
        """The hires fix's latent upscalers (hr_upscaler also takes GET /upscalers' names)."""
        from easel.upscalers import LATENT_UPSCALERS

        return [{"name": name} for name in LATENT_UPSCALERS]

    @router.get("/scripts", **documented(A1111, api.A1111Scripts))
    async def scripts() -> dict[str, list[str]]:
        """No A1111 scripts; webuiapi reads this to decide which extensions to talk to."""
        return {"txt2img": [], "img2img": []}

    @router.get("/progress", **documented(A1111, api.A1111Progress, 422))  # skip_current_image: a bool
    async def progress(state: State, skip_current_image: bool = False) -> dict[str, Any]:
        """The running job's progress; `current_image`: its latest live preview (base64 PNG of the
        first image, easel serve --preview-every), unless skip_current_image=true."""
        now = state.queue.state()
        job: Job | None = now["running"]
        preview = None if job is None or skip_current_image else job.preview  # read once: it may go
        fraction = job.step / job.total if job is not None and job.total else 0.0
        count = now["queued"] + (1 if job is not None else 0)
        eta = 0.0
        if job is not None and job.started_at and fraction > 0:
            from datetime import datetime, timezone

            elapsed = (datetime.now(timezone.utc) - datetime.fromisoformat(job.started_at)).total_seconds()
            eta = elapsed * (1 - fraction) / fraction  # this job only, as A1111 reports it
        return {
            "progress": round(fraction, 4),
            "eta_relative": round(eta, 2),
            "state": {
                "skipped": False, "interrupted": bool(job and job.cancel.is_set()),
                "job": job.id if job else "",
                "job_count": count, "job_timestamp": "0", "job_no": 0,
                "sampling_step": job.step if job else 0, "sampling_steps": job.total if job else 0,
            },
            "current_image": None if preview is None else base64.b64encode(preview).decode("ascii"),
            "textinfo": None,
            "current_task": job.id if job else None,
        }  # fmt: skip

    @router.post("/interrupt", **documented(A1111, api.NULL))
    async def interrupt(state: State) -> None:
        """Stop the running generation at its next step (queued jobs still run, as in A1111)."""
        state.queue.interrupt()

    @router.post("/skip", **documented(A1111, api.NULL))
    async def skip(state: State) -> None:
        """A1111 skips the current image of a batch; easel's batches are one run, so: interrupt."""
        state.queue.interrupt()

    @router.post("/png-info", **documented(A1111, api.A1111PngInfo, *api.BODY))
    async def png_info(body: PngInfoRequest, state: State) -> dict[str, Any]:
        """The A1111 parameters (and their parsed items) an image carries."""
        import io

        from easel.storage.metadata import read_metadata

        data = base64.b64decode(state.policy.data_url(body.image, field="image").partition(",")[2])
        metadata = read_metadata(io.BytesIO(data))
        parsed = metadata.parsed_parameters() or {}
        parameters: dict[str, Any] = {}
        if metadata.parameters is not None:
            parameters = {
                "Prompt": parsed.get("prompt", ""),
                "Negative prompt": parsed.get("negative_prompt", ""),
                **parsed.get("settings", {}),
            }
        items = {"parameters": metadata.parameters} if metadata.parameters is not None else {}
        return {"info": metadata.parameters or "", "items": items, "parameters": parameters}

    from easel.server import a1111_info

    a1111_info.add_routes(router)  # cmd-flags, memory, prompt-styles, ... (and /interrogate refused)
    from easel.server import upscaling

    upscaling.add_a1111_routes(router)  # upscalers, realesrgan-models, extra-single-image, extra-batch-images

    # the sd-webui-controlnet extension's own routes (webuiapi's ControlNet helpers use them)
    controlnet = APIRouter(prefix="/controlnet", tags=["ControlNet (sd-webui-controlnet)"])

    @controlnet.get("/version", **documented(A1111, api.ControlNetVersion))
    async def controlnet_version() -> dict[str, int]:
        return {"version": 2}

    @controlnet.get("/module_list", **documented(A1111, api.ControlNetModules))
    async def controlnet_module_list() -> dict[str, list[str]]:
        """The module names units may use (each maps to an easel preprocessor)."""
        return {"module_list": sorted(A1111_MODULES)}

    @controlnet.get("/model_list", **documented(A1111, api.ControlNetModels))
    async def controlnet_model_list() -> dict[str, list[str]]:
        from easel.server.policy import list_control_models

        return {"model_list": list_control_models()}

    both = APIRouter()
    both.include_router(router)
    both.include_router(controlnet)
    return both

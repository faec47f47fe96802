"""GenerationRequest: the public contract every door speaks, validated once, here.

The field names are the API: the CLI flags, the native HTTP JSON and the Python call all
map onto them one to one. Validation is pure (no file or network I/O, see the architecture
rules); whatever needs I/O (reading the init image, finding the model) is checked by the
engine and reported with the same field names.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from easel.errors import InvalidRequest
from easel.schedulers import known_scheduler_names, scheduler_spec

MAX_SIDE = 4096
MAX_SEED = 2**63 - 1


def effective_steps(steps: int, strength: float | None) -> int:
    """Denoising steps actually run: diffusers' img2img runs int(steps * strength)."""
    return steps if strength is None else int(steps * strength)


MAX_CONTROLS = 8
MAX_CONTROL_SCALE = 2.0  # A1111's weight slider range; beyond it ControlNets only add artifacts


class FieldProblem(ValueError):
    """A cross-field problem inside a nested model (a ControlUnit), raised as a ValueError so
    pydantic records where it happened; invalid_request_from names `controls[i].<field>`."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(reason)
        self.field, self.value, self.reason = field, value, reason


class UnitError(InvalidRequest, ValueError):
    """InvalidRequest from a ControlUnit; a ValueError so a request holding the unit can say
    which unit (controls[i]) it came from."""


class ControlUnit(BaseModel):
    """One ControlNet: a control model steered by a control image. Several units in one
    request run together (MultiControlNet), each with its own image, scale and schedule.

    `image` is read as given unless `preprocessor` turns it into the map the model expects
    (`canny` edges with OpenCV, or a controlnet_aux detector such as `openpose`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        ...,
        description="ControlNet: hub repo id, local folder (config.json inside), .safetensors file, "
        "or 'demo' for the bundled demo ControlNet",
    )
    image: str = Field(..., description="Control image: path, http(s) URL or data URL")
    preprocessor: str = Field("none", description="none | canny | openpose | depth | ... (see README)")
    conditioning_scale: float = Field(
        1.0, ge=0, le=MAX_CONTROL_SCALE, description="How strongly the control steers (0 = not at all)"
    )
    guidance_start: float = Field(0.0, ge=0, le=1, description="Fraction of the schedule where it starts")
    guidance_end: float = Field(1.0, ge=0, le=1, description="Fraction of the schedule where it stops")
    canny_low: int = Field(100, ge=0, le=255, description="canny: lower hysteresis threshold")
    canny_high: int = Field(200, ge=0, le=255, description="canny: upper hysteresis threshold")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            # a ValueError too, so inside a GenerationRequest pydantic records the unit's index
            problem = invalid_request_from(error)
            raise UnitError(str(problem), field=problem.field, value=problem.value) from None

    @field_validator("model", "image")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("preprocessor")
    @classmethod
    def _known_preprocessor(cls, value: str) -> str:
        from easel.control.preprocessors import PREPROCESSORS

        if value not in PREPROCESSORS:
            raise ValueError("unknown preprocessor; known: " + ", ".join(PREPROCESSORS))
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ControlUnit:
        if self.guidance_start >= self.guidance_end:
            raise FieldProblem(
                "guidance_start",
                self.guidance_start,
                f"must be below guidance_end={self.guidance_end!r} (0 <= start < end <= 1)",
            )
        if self.canny_low > self.canny_high:
            raise FieldProblem("canny_low", self.canny_low, f"must not exceed canny_high={self.canny_high!r}")
        return self


class GenerationRequest(BaseModel):
    """Everything needed to make (and later remake) a set of images.

    `None` means "the default of the model's family" (size, steps, guidance) or "the model's
    own scheduler"; `seed=None` (or -1, the A1111 habit) draws a random seed, which the
    engine records in the concrete request it returns.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(
        None,
        description="Hub repo id, local diffusers folder, or .safetensors file; None = bundled demo model",
    )
    prompt: str = Field(..., description="What to draw")
    negative_prompt: str = Field("", description="What to steer away from")
    prompt_syntax: Literal["compel", "a1111", "plain"] = Field(
        "compel", description="Weighting syntax of prompt and negative_prompt: compel | a1111 | plain"
    )
    width: int | None = Field(None, description="Output width in pixels, a multiple of 8")
    height: int | None = Field(None, description="Output height in pixels, a multiple of 8")
    steps: int | None = Field(None, ge=1, le=1000, description="num_inference_steps")
    guidance_scale: float | None = Field(None, ge=0, le=100, description="Classifier-free guidance")
    seed: int | None = Field(None, ge=-1, le=MAX_SEED, description="Seed of image 0; image i uses seed+i")
    num_images: int = Field(1, ge=1, le=64, description="Images in the batch")
    scheduler: str | None = Field(None, description="Diffusers class or A1111 sampler name")
    init_image: str | None = Field(None, description="Path or http(s)/data URL: makes this image-to-image")
    strength: float | None = Field(None, ge=0, le=1, description="img2img: 1.0 ignores the init image")
    safety_checker: bool = Field(True, description="Run the model's safety checker when it has one")
    controls: list[ControlUnit] = Field(
        default_factory=list,
        max_length=MAX_CONTROLS,
        description="ControlNet units; several = MultiControlNet (families without ControlNet refuse them)",
    )
    # Family-only fields (FAMILY_FIELDS): None = not used / the family's default. A family that
    # cannot use one refuses the request (families.base.Family.check_request).
    refiner: str | None = Field(
        None,
        description="SDXL: refiner model that finishes the base's denoising (ensemble of experts)",
    )
    refiner_at: float | None = Field(
        None, gt=0, lt=1, description="SDXL + refiner: fraction of denoising done by the base (default 0.8)"
    )
    aesthetic_score: float | None = Field(
        None, ge=0, le=10, description="SDXL refiner: aesthetic score conditioning (default 6.0)"
    )
    negative_aesthetic_score: float | None = Field(
        None, ge=0, le=10, description="SDXL refiner: negative aesthetic score (default 2.5)"
    )
    original_size: tuple[int, int] | None = Field(
        None, description="SDXL micro-conditioning (height, width) of the 'original' image"
    )
    target_size: tuple[int, int] | None = Field(
        None, description="SDXL micro-conditioning (height, width) of the target image"
    )
    crops_coords_top_left: tuple[int, int] | None = Field(
        None, description="SDXL micro-conditioning crop coordinates (top, left); (0, 0) looks centred"
    )
    prior: str | None = Field(
        None, description="Kandinsky 2.2: prior model (default: the one the decoder's model card names)"
    )
    prior_steps: int | None = Field(
        None,
        ge=2,
        le=1000,
        description="Kandinsky 2.2: prior denoising steps (default 25; its scheduler needs 2+)",
    )
    prior_guidance_scale: float | None = Field(
        None, ge=0, le=100, description="Kandinsky 2.2: prior guidance scale (default 4.0)"
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise invalid_request_from(error) from None

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> GenerationRequest:
        """Validate a mapping (JSON body, replayed metadata); errors are InvalidRequest."""
        return cls(**data)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and (value < 8 or value > MAX_SIDE or value % 8):
            raise ValueError(f"must be a multiple of 8 between 8 and {MAX_SIDE}")
        return value

    @field_validator("seed")
    @classmethod
    def _minus_one_is_random(cls, value: int | None) -> int | None:
        return None if value == -1 else value

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        if value is not None and scheduler_spec(value) is None:
            raise ValueError("unknown scheduler; known: " + ", ".join(known_scheduler_names()))
        return value

    @field_validator("original_size", "target_size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not all(1 <= side <= 4 * MAX_SIDE for side in value):
            raise ValueError(f"must be (height, width), each between 1 and {4 * MAX_SIDE}")
        return value

    @field_validator("crops_coords_top_left")
    @classmethod
    def _crop_coordinates(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not all(0 <= side <= 4 * MAX_SIDE for side in value):
            raise ValueError(f"must be (top, left), each between 0 and {4 * MAX_SIDE}")
        return value

    @field_validator("refiner", "prior")
    @classmethod
    def _model_reference(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must name a model (repo id, folder or .safetensors file)")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_is_text(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("contains a NUL character")
        return value

    @model_validator(mode="after")
    def _refiner_at_needs_a_refiner(self) -> GenerationRequest:
        if self.refiner_at is not None and self.refiner is None:
            raise InvalidRequest(
                f"invalid refiner_at={self.refiner_at!r}: it says where the refiner takes over; "
                "give refiner too",
                field="refiner_at",
                value=self.refiner_at,
            )
        return self

    @model_validator(mode="after")
    def _img2img_runs_a_step(self) -> GenerationRequest:
        if self.strength is not None and self.init_image is None:
            raise ValueError("strength is only used for image-to-image; give init_image too")
        if self.init_image is not None and self.steps is not None:
            strength = self.strength if self.strength is not None else DEFAULT_STRENGTH
            if effective_steps(self.steps, strength) < 1:
                raise InvalidRequest(
                    f"steps x strength = {self.steps} x {strength} runs "
                    f"int({self.steps * strength:g}) = 0 denoising steps; raise steps or strength",
                    field="strength",
                    value=strength,
                )
        return self

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None


DEFAULT_STRENGTH = 0.8  # diffusers' img2img default

# Fields only some families use; the family detected for the model refuses the rest.
FAMILY_FIELDS = (
    "refiner",
    "refiner_at",
    "aesthetic_score",
    "negative_aesthetic_score",
    "original_size",
    "target_size",
    "crops_coords_top_left",
    "prior",
    "prior_steps",
    "prior_guidance_scale",
)


def invalid_request_from(error: ValidationError) -> InvalidRequest:
    """One readable line naming the first bad field and its value."""
    first = error.errors()[0]
    # ("controls", 0, "guidance_end") -> "controls[0].guidance_end"
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"])
    field = field.removeprefix(".") or "request"
    message = first["msg"].removeprefix("Value error, ")
    original = (first.get("ctx") or {}).get("error")
    if isinstance(original, InvalidRequest):
        if field == "request" or original.field is None:
            return original
        inner = f"{field}.{original.field}"  # a nested unit's error, now naming its place
        message = str(original)
        name = original.field
        for prefix in (f"invalid {name}=", f"{name} is", f"unknown field {name!r}"):
            if message.startswith(prefix):
                message = message.replace(original.field, inner, 1)
                break
        return InvalidRequest(message, field=inner, value=original.value)
    if isinstance(original, FieldProblem):
        field = f"{field}.{original.field}" if field != "request" else original.field
        return InvalidRequest(
            f"invalid {field}={original.value!r}: {original.reason}", field=field, value=original.value
        )
    if first["type"] == "missing":
        return InvalidRequest(f"{field} is required", field=field)
    if first["type"] == "extra_forbidden":
        return InvalidRequest(f"unknown field {field!r}", field=field, value=first.get("input"))
    value = first.get("input")
    return InvalidRequest(f"invalid {field}={value!r}: {message}", field=field, value=value)

"""GenerationRequest: the public contract every door speaks, validated once, here.

The field names are the API: the CLI flags, the native HTTP JSON and the Python call all
map onto them one to one. Validation is pure (no file or network I/O, see the architecture
rules); whatever needs I/O (reading the init image, finding the model) is checked by the
engine and reported with the same field names.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from easel.errors import InvalidRequest
from easel.schedulers import known_scheduler_names, scheduler_spec

MAX_SIDE = 4096
MAX_SEED = 2**63 - 1


def effective_steps(steps: int, strength: float | None) -> int:
    """Denoising steps actually run: diffusers' img2img runs int(steps * strength)."""
    return steps if strength is None else int(steps * strength)


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

    @field_validator("prompt")
    @classmethod
    def _prompt_is_text(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("contains a NUL character")
        return value

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


def invalid_request_from(error: ValidationError) -> InvalidRequest:
    """One readable line naming the first bad field and its value."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "request"
    message = first["msg"].removeprefix("Value error, ")
    original = (first.get("ctx") or {}).get("error")
    if isinstance(original, InvalidRequest):
        return original
    if first["type"] == "missing":
        return InvalidRequest(f"{field} is required", field=field)
    if first["type"] == "extra_forbidden":
        return InvalidRequest(f"unknown field {field!r}", field=field, value=first.get("input"))
    value = first.get("input")
    return InvalidRequest(f"invalid {field}={value!r}: {message}", field=field, value=value)

"""GenerationRequest: the public contract every door speaks, validated once, here.

The field names are the API: the CLI flags, the native HTTP JSON and the Python call all
map onto them one to one. Validation is pure (no file or network I/O, see the architecture
rules); whatever needs I/O (reading the init image, finding the model) is checked by the
engine and reported with the same field names.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from easel.errors import InvalidRequest
from easel.prompts.checks import MAX_PROMPT_CHARS
from easel.schedulers import scheduler_problem, scheduler_spec

MAX_SIDE = 4096
MAX_SEED = 2**63 - 1
# what the width/height validator enforces, for the JSON schema (as constraints pydantic's own
# messages would replace the validator's)
SIDE_SCHEMA: dict[str, Any] = {"multipleOf": 8, "minimum": 8, "maximum": MAX_SIDE}
SIZE_PAIR_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "array", "minItems": 2, "maxItems": 2, "prefixItems": [
    {"type": "integer", "minimum": 1, "maximum": 4 * MAX_SIDE}] * 2}, {"type": "null"}]}  # fmt: skip
CROP_PAIR_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "array", "minItems": 2, "maxItems": 2, "prefixItems": [
    {"type": "integer", "minimum": 0, "maximum": 4 * MAX_SIDE}] * 2}, {"type": "null"}]}  # fmt: skip
RESIZE_FROM_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "array", "minItems": 2, "maxItems": 2,
    "prefixItems": [{"type": "integer", **SIDE_SCHEMA}] * 2}, {"type": "null"}]}  # fmt: skip
MAX_MASK_BLUR = 64  # A1111's slider range


def _known_scheduler(value: str | None) -> str | None:
    """A scheduler easel can build (a diffusers class, or an A1111 sampler label), else why not."""
    problem = None if value is None else scheduler_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# the first pass's scheduler and the hires fix's second-pass one, validated alike
SchedulerName = Annotated[str | None, AfterValidator(_known_scheduler)]
MAX_INPAINT_PADDING = 256
OUTPAINT_SIDE: dict[str, Any] = {"type": "integer", "multipleOf": 8, "minimum": 0, "maximum": MAX_SIDE}
OUTPAINT_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "array", "minItems": 4, "maxItems": 4,
    "prefixItems": [OUTPAINT_SIDE] * 4}, {"type": "null"}]}  # fmt: skip


def effective_steps(steps: int, strength: float | None) -> int:
    """Denoising steps actually run: diffusers' img2img runs int(steps * strength)."""
    return steps if strength is None else int(steps * strength)


MAX_CLIP_SKIP = 12  # A1111's slider range; CLIP ViT-L has 12 layers
MAX_STYLES = 32
MAX_CONTROLS = 8
MAX_REFERENCE_IMAGES = 8  # instruction editing: the most any family takes (each family says its own)
MAX_CONTROL_SCALE = 2.0  # A1111's weight slider range; beyond it ControlNets only add artifacts
# the control types of the FLUX.1 union ControlNets (InstantX, Shakker-Labs Union-Pro), by index
UNION_MODES = ("canny", "tile", "depth", "blur", "pose", "gray", "lq")


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
        1.0,
        ge=0,
        le=MAX_CONTROL_SCALE,
        strict=True,
        description="How strongly the control steers (0 = not at all)",
    )
    guidance_start: float = Field(
        0.0, ge=0, le=1, strict=True, description="Fraction of the schedule where it starts"
    )
    guidance_end: float = Field(
        1.0, ge=0, le=1, strict=True, description="Fraction of the schedule where it stops"
    )
    canny_low: int = Field(100, ge=0, le=255, strict=True, description="canny: lower hysteresis threshold")
    canny_high: int = Field(200, ge=0, le=255, strict=True, description="canny: upper hysteresis threshold")
    mode: int | str | None = Field(
        None,
        description="Union ControlNets (FLUX.1 InstantX/Shakker union: a config with num_mode) only: the "
        "control type, an index or its name (canny, tile, depth, blur, pose, gray, lq); refused for others",
    )

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

    @field_validator("mode", mode="before")
    @classmethod
    def _known_mode(cls, value: Any) -> int | str | None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | str)):
            raise ValueError("must be a control type's index (0 or more) or its name")
        if isinstance(value, int) and value < 0:
            raise ValueError("must be a control type's index (0 or more) or its name")
        if isinstance(value, str) and value.strip().lower() not in UNION_MODES:
            raise ValueError("unknown union control type; known: " + ", ".join(UNION_MODES))
        return value.strip().lower() if isinstance(value, str) else value

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


MAX_LORAS = 16
MAX_LORA_WEIGHT = 2.0  # A1111's usual slider range; beyond it LoRAs only break images


class LoraSpec(BaseModel):
    """One LoRA applied to the base model for this request (never fused into its weights).

    `name`: a name in the LoRA folder (EASEL_LORA_DIR, file name without .safetensors), a path
    to a .safetensors file, or a hub file `org/repo/file.safetensors`. `sha256` is filled in by
    the engine in the concrete request; when given, the file found must have it (replay).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, max_length=512, description="LoRA folder name, path or hub file")
    weight: float = Field(
        1.0, ge=-MAX_LORA_WEIGHT, le=MAX_LORA_WEIGHT, strict=True, description="Strength (0 = off)"
    )
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="The file's sha256; when given, it must match"
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            problem = invalid_request_from(error)
            raise UnitError(str(problem), field=problem.field, value=problem.value) from None

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


MAX_HIRES_SCALE = 8.0
DEFAULT_HIRES_STRENGTH = 0.7  # A1111's UI default for the hires fix's denoising strength


class HiresFix(BaseModel):
    """A1111's hires fix: generate at the request's size, upscale (the latents, or the decoded
    picture with a picture upscaler), then denoise again at the bigger size as image-to-image.

    The target size is `scale` times the first pass's size (A1111 rounds: int(side * scale) // 8
    * 8), or `width` x `height` (one alone keeps the aspect ratio). None on the other fields means
    "as the first pass" (A1111's "use same"), recorded as None so replay builds the same again.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float | None = Field(
        None, ge=1, le=MAX_HIRES_SCALE, strict=True, description="Upscale factor (2 without width/height)"
    )
    width: int | None = Field(
        None, strict=True, json_schema_extra=SIDE_SCHEMA, description="Target width (instead of scale)"
    )
    height: int | None = Field(
        None, strict=True, json_schema_extra=SIDE_SCHEMA, description="Target height (instead of scale)"
    )
    upscaler: str = Field(
        "Latent", min_length=1, max_length=512, description="A latent mode (Latent, Latent (bicubic), ...) "
        "or a picture upscaler (None, Lanczos, Nearest, a model in the upscaler folder)"
    )
    steps: int | None = Field(
        None, ge=0, le=1000, strict=True, description="Second-pass steps; None or 0 = the first pass's"
    )
    strength: float = Field(
        DEFAULT_HIRES_STRENGTH, ge=0, le=1, strict=True, description="Denoising strength of the second pass"
    )
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="None = the first pass's")
    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="None = the first pass's"
    )
    scheduler: SchedulerName = Field(None, description="Second-pass scheduler; None = the first pass's")
    guidance_scale: float | None = Field(
        None, ge=0, le=100, strict=True, description="Second-pass guidance; None = the first pass's"
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            problem = invalid_request_from(error)
            raise UnitError(str(problem), field=problem.field, value=problem.value) from None

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and (value < 8 or value > MAX_SIDE or value % 8):
            raise ValueError(f"must be a multiple of 8 between 8 and {MAX_SIDE}")
        return value

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt_is_text(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("contains a NUL character")
        return value

    @model_validator(mode="after")
    def _scale_or_size(self) -> HiresFix:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise FieldProblem(
                "scale", self.scale, "give either scale or width/height (the target size), not both"
            )
        return self

    def second_steps(self, first_steps: int) -> int:
        """Steps of the second pass before strength (A1111: 0 = the first pass's)."""
        return self.steps or first_steps

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the second pass for a first pass of `width` x `height`, as A1111
        computes it: int(side * scale) // 8 * 8, or the given side(s), the missing one following
        the aspect ratio (rounded down to a multiple of 8)."""
        if self.width is None and self.height is None:
            scale = 2.0 if self.scale is None else self.scale
            return int(width * scale) // 8 * 8, int(height * scale) // 8 * 8
        if self.height is None:
            assert self.width is not None
            return self.width, self.width * height // width // 8 * 8
        if self.width is None:
            return self.height * width // height // 8 * 8, self.height
        return self.width, self.height


class GenerationRequest(BaseModel):
    """Everything needed to make (and later remake) a set of images.

    `None` means "the default of the model's family" (size, steps, guidance) or "the model's
    own scheduler"; `seed=None` (or -1, the A1111 habit) draws a random seed, which the
    engine records in the concrete request it returns.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(
        None,
        description="Hub repo id, local diffusers folder, .safetensors file, or FLUX.1 / SD 3.5 transformer "
        "file (.gguf or .safetensors, see base_model); None = bundled demo model",
    )
    vae: str | None = Field(
        None,
        description="VAE override (an AutoencoderKL): hub repo id (a VAE repo, or a pipeline repo's vae "
        "folder), local folder, or .safetensors file; None = the model's own VAE",
    )
    base_model: str | None = Field(
        None,
        description="With a transformer file as model (.gguf, or a FLUX.1 / SD 3.5 transformer "
        ".safetensors): the diffusers repo id or folder the rest of the pipeline (text encoders, VAE, "
        "configs) comes from; None = inferred from the file's tensors",
    )
    quantize: str | None = Field(
        None,
        description="Load the denoiser and the big text encoders quantised: none | int8 | nf4 (bitsandbytes, "
        "CUDA) | torchao-int8 | torchao-fp8 (torchao; fp8: compute capability 8.9+); None = the server's "
        "default (EASEL_QUANTIZE); the concrete request records what was used (None: not quantised)",
    )
    prompt: str = Field(..., max_length=MAX_PROMPT_CHARS, description="What to draw")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="What to steer away from")
    styles: list[str] = Field(
        default_factory=list,
        max_length=MAX_STYLES,
        description="A1111 prompt styles (names in styles.csv, EASEL_STYLES_FILE) merged into prompt and "
        "negative_prompt, in order; the engine expands them, and the concrete request it records holds "
        "the expanded prompts with styles emptied, so replay never reads the styles file",
    )
    prompt_syntax: Literal["compel", "a1111", "plain"] = Field(
        "compel", description="Weighting syntax of prompt and negative_prompt: compel | a1111 | plain"
    )
    width: int | None = Field(
        None,
        strict=True,
        json_schema_extra=SIDE_SCHEMA,
        description="Output width in pixels, a multiple of 8",
    )
    height: int | None = Field(
        None,
        strict=True,
        json_schema_extra=SIDE_SCHEMA,
        description="Output height in pixels, a multiple of 8",
    )
    steps: int | None = Field(None, ge=1, le=1000, strict=True, description="num_inference_steps")
    guidance_scale: float | None = Field(
        None, ge=0, le=100, strict=True, description="Classifier-free guidance"
    )
    seed: int | None = Field(
        None, ge=-1, le=MAX_SEED, strict=True, description="Seed of image 0; image i uses seed+i"
    )
    num_images: int = Field(1, ge=1, le=64, strict=True, description="Images in the batch")
    # Variation seeds (A1111's subseed, subseed_strength, seed_resize_from_w/h): see easel.noise
    variation_seed: int | None = Field(
        None,
        ge=-1,
        le=MAX_SEED,
        strict=True,
        description="Seed whose noise is blended into the seed's (image i: variation_seed+i); None or -1 "
        "with variation_strength > 0 draws a random one, recorded in the concrete request",
    )
    variation_strength: float = Field(
        0.0,
        ge=0,
        le=1,
        strict=True,
        description="How much of the variation seed's noise: 0 = the seed's image, 1 = the variation seed's",
    )
    seed_resize_from: tuple[StrictInt, StrictInt] | None = Field(
        None,
        json_schema_extra=RESIZE_FROM_SCHEMA,
        description="(width, height): draw the seed's noise at this size and paste it centred, so the "
        "image keeps the composition the seed gave at that size",
    )
    tiling: bool = Field(False, strict=True, description="Seamless tiling: edges continue each other")
    scheduler: SchedulerName = Field(
        None,
        description="Diffusers class, or A1111 sampler name optionally followed by its schedule type "
        "('DPM++ 2M', 'DPM++ 2M Karras', 'Euler SGM Uniform')",
    )
    eta: float | None = Field(
        None,
        ge=0,
        le=1,
        strict=True,
        description="DDIM's eta (0 = deterministic DDIM, 1 = DDPM-like noise); only a DDIM scheduler uses "
        "it, so others refuse it; None = 0",
    )
    clip_skip: int | None = Field(
        None,
        ge=1,
        le=MAX_CLIP_SKIP,
        strict=True,
        description="Clip skip as A1111 counts it: 1 = the text encoder layer the model uses (no skip), "
        "2 = the layer before it ('Clip skip: 2'), ...; None = 1",
    )
    init_image: str | None = Field(None, description="Path or http(s)/data URL: makes this image-to-image")
    reference_images: list[str] = Field(
        default_factory=list,
        max_length=MAX_REFERENCE_IMAGES,
        description="Instruction editing (task edit): the image(s) the prompt describes a change to, each a "
        "path or http(s)/data URL; edit-capable families only (FLUX.1 Kontext, Qwen-Image-Edit: one; "
        "Qwen-Image-Edit-2509: up to 3; FLUX.2 [klein]: up to 4)",
    )
    strength: float | None = Field(
        None, ge=0, le=1, strict=True, description="img2img: 1.0 ignores the init image"
    )
    # Inpainting and outpainting (task "inpaint"): they edit init_image (see easel.inpaint)
    mask_image: str | None = Field(
        None,
        description="Inpainting mask (path, http(s)/data URL): white = repaint, black = keep, grey = soft; "
        "needs init_image",
    )
    mask_blur: int = Field(
        4, ge=0, le=MAX_MASK_BLUR, strict=True, description="Gaussian blur of the mask in pixels (A1111's 4)"
    )
    invert_mask: bool = Field(False, strict=True, description="Repaint the black part of the mask instead")
    inpaint_area: Literal["whole", "masked"] = Field(
        "whole",
        description="whole: the whole picture; masked: a padded box around the mask, worked at the model's "
        "native size and pasted back (A1111 'only masked')",
    )
    inpaint_padding: int = Field(
        32,
        ge=0,
        le=MAX_INPAINT_PADDING,
        strict=True,
        description="inpaint_area=masked: pixels of context around the mask's box",
    )
    masked_content: Literal["original", "fill", "latent_noise", "latent_nothing"] = Field(
        "original",
        description="What the masked area starts from: the original pixels, their blurred colours (fill), "
        "latent noise or zero latents (A1111's inpainting_fill)",
    )
    outpaint: tuple[StrictInt, StrictInt, StrictInt, StrictInt] | None = Field(
        None,
        json_schema_extra=OUTPAINT_SCHEMA,
        description="Outpainting: pixels to add (left, top, right, bottom), multiples of 8; needs init_image",
    )
    paste_back: bool = Field(
        True,
        strict=True,
        description="Inpainting: keep the original pixels outside the (blurred) mask exactly",
    )
    safety_checker: bool = Field(
        True, strict=True, description="Run the model's safety checker when it has one"
    )
    controls: list[ControlUnit] = Field(
        default_factory=list,
        max_length=MAX_CONTROLS,
        description="ControlNet units; several = MultiControlNet (families without ControlNet refuse them)",
    )
    loras: list[LoraSpec] = Field(
        default_factory=list,
        max_length=MAX_LORAS,
        description="LoRAs on the base model, each with a weight; A1111-syntax prompts may carry them as "
        "<lora:name:weight> tags instead, which are moved here",
    )
    hires: HiresFix | None = Field(
        None,
        description="Hires fix (text-to-image): upscale the first pass and denoise it again at the bigger "
        "size as image-to-image (A1111's enable_hr)",
    )
    # Family-only fields (FAMILY_FIELDS): None = not used / the family's default. A family that
    # cannot use one refuses the request (families.base.Family.check_request).
    refiner: str | None = Field(
        None,
        description="SDXL: refiner model that finishes the base's denoising (ensemble of experts)",
    )
    refiner_at: float | None = Field(
        None,
        gt=0,
        lt=1,
        strict=True,
        description="SDXL + refiner: fraction of denoising done by the base (default 0.8)",
    )
    aesthetic_score: float | None = Field(
        None, ge=0, le=10, strict=True, description="SDXL refiner: aesthetic score conditioning (default 6.0)"
    )
    negative_aesthetic_score: float | None = Field(
        None, ge=0, le=10, strict=True, description="SDXL refiner: negative aesthetic score (default 2.5)"
    )
    original_size: tuple[StrictInt, StrictInt] | None = Field(
        None,
        json_schema_extra=SIZE_PAIR_SCHEMA,
        description="SDXL micro-conditioning (height, width) of the 'original' image",
    )
    target_size: tuple[StrictInt, StrictInt] | None = Field(
        None,
        json_schema_extra=SIZE_PAIR_SCHEMA,
        description="SDXL micro-conditioning (height, width) of the target image",
    )
    crops_coords_top_left: tuple[StrictInt, StrictInt] | None = Field(
        None,
        json_schema_extra=CROP_PAIR_SCHEMA,
        description="SDXL micro-conditioning crop coordinates (top, left); (0, 0) looks centred",
    )
    prior: str | None = Field(
        None, description="Kandinsky 2.2: prior model (default: the one the decoder's model card names)"
    )
    prior_steps: int | None = Field(
        None,
        ge=2,
        le=1000,
        strict=True,
        description="Kandinsky 2.2: prior denoising steps (default 25; its scheduler needs 2+)",
    )
    prior_guidance_scale: float | None = Field(
        None, ge=0, le=100, strict=True, description="Kandinsky 2.2: prior guidance scale (default 4.0)"
    )
    true_cfg_scale: float | None = Field(
        None,
        ge=1,
        le=100,
        strict=True,
        description="FLUX.1 (dev, schnell, Kontext): real classifier-free guidance against negative_prompt "
        "(diffusers' true_cfg_scale; above 1: two transformer passes a step); None or 1 = off. "
        "guidance_scale stays FLUX.1-dev's distilled guidance; families whose guidance_scale is real CFG "
        "refuse it",
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

    @model_validator(mode="before")
    @classmethod
    def _lora_tags_into_loras(cls, data: Any) -> Any:
        """A1111 syntax: `<lora:name:w>` tags leave the prompt and join `loras`, as A1111
        applies them (its text encoder never sees the tag)."""
        if not isinstance(data, dict) or data.get("prompt_syntax") != "a1111":
            return data
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or "<" not in prompt:
            return data
        from easel.prompts.extra_networks import TagError, extract_lora_tags

        try:
            text, tags = extract_lora_tags(prompt)
        except TagError as error:
            raise InvalidRequest(f"invalid prompt: {error}", field="prompt") from None
        if not tags:
            return data
        given = data.get("loras") or []
        if not isinstance(given, list):
            return data  # the field's own validation says what is wrong
        names = [
            entry.get("name") if isinstance(entry, dict) else getattr(entry, "name", None) for entry in given
        ]
        for tag in tags:
            if tag.name in names:
                raise InvalidRequest(
                    f"invalid prompt: LoRA {tag.name!r} is given twice ({tag.text} and loras)",
                    field="prompt",
                )
            names.append(tag.name)
        added = [{"name": tag.name, "weight": tag.weight} for tag in tags]
        return {**data, "prompt": text, "loras": [*given, *added]}

    @field_validator("loras")
    @classmethod
    def _each_lora_once(cls, value: list[LoraSpec]) -> list[LoraSpec]:
        names = [lora.name for lora in value]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise InvalidRequest(
                    f"invalid loras[{index}].name={name!r}: this LoRA is already in the request",
                    field=f"loras[{index}].name",
                    value=name,
                )
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and (value < 8 or value > MAX_SIDE or value % 8):
            raise ValueError(f"must be a multiple of 8 between 8 and {MAX_SIDE}")
        return value

    @field_validator("seed", "variation_seed")
    @classmethod
    def _minus_one_is_random(cls, value: int | None) -> int | None:
        return None if value == -1 else value

    @field_validator("seed_resize_from")
    @classmethod
    def _resize_from_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not all(8 <= side <= MAX_SIDE and side % 8 == 0 for side in value):
            raise ValueError(f"must be (width, height), each a multiple of 8 between 8 and {MAX_SIDE}")
        return value

    @model_validator(mode="after")
    def _variation_for_text2img(self) -> GenerationRequest:
        """Variation needs the text-to-image pipelines' initial latents (easel/noise.py):
        image-to-image and inpainting make their noise from the init image and the generator,
        so variation there is refused."""
        if self.init_image is None:
            return self
        for name in ("variation_seed", "variation_strength", "seed_resize_from"):
            value = getattr(self, name)
            if value is not None and value != 0:
                raise InvalidRequest(
                    f"invalid {name}={value!r}: variation seeds work for text-to-image only (image-to-image "
                    "and inpainting noise the init image itself); remove it or the init image",
                    field=name,
                    value=value,
                )
        return self

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

    @field_validator("refiner", "prior", "vae", "base_model")
    @classmethod
    def _model_reference(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must name a model (repo id, folder or .safetensors file)")
        return value

    @field_validator("quantize")
    @classmethod
    def _known_quantization(cls, value: str | None) -> str | None:
        from easel.config import QUANTIZE

        if value is not None and value not in QUANTIZE:
            raise ValueError(f"unknown quantization; use one of {', '.join(QUANTIZE)}")
        return value

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt_is_text(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("contains a NUL character")
        return value

    @field_validator("reference_images")
    @classmethod
    def _references_named(cls, value: list[str]) -> list[str]:
        for index, reference in enumerate(value):
            if not reference.strip():
                raise InvalidRequest(
                    f"invalid reference_images[{index}]='': must name an image (path, URL or data URL)",
                    field=f"reference_images[{index}]",
                    value=reference,
                )
        return value

    @model_validator(mode="after")
    def _edit_alone(self) -> GenerationRequest:
        """Instruction editing changes the reference images as the prompt says; the edit pipelines
        have no init image, strength, mask, hires pass or ControlNet, so each is refused by name
        rather than ignored."""
        if not self.reference_images:
            return self
        clashes = (("init_image", self.init_image), ("hires", self.hires),
                   ("controls", self.controls or None))  # fmt: skip
        for name, value in clashes:
            if value is not None:
                raise InvalidRequest(
                    f"invalid {name}: instruction editing (reference_images) takes no {name}; the edit "
                    f"pipeline works from the reference images and the prompt alone; drop {name} or "
                    "reference_images",
                    field=name,
                    value=value if isinstance(value, str) else None,
                )
        return self

    @field_validator("mask_image")
    @classmethod
    def _mask_reference(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must name an image (path, URL or data URL)")
        return value

    @field_validator("outpaint")
    @classmethod
    def _outpaint_sides(cls, value: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if value is None:
            return value
        if not all(0 <= side <= MAX_SIDE and side % 8 == 0 for side in value):
            raise ValueError(
                f"must be (left, top, right, bottom), each a multiple of 8 between 0 and {MAX_SIDE}"
            )
        if not any(value):
            raise ValueError("adds nothing: give at least one side above 0")
        return value

    @model_validator(mode="after")
    def _inpainting_edits_an_init_image(self) -> GenerationRequest:
        for name in ("mask_image", "outpaint"):
            value = getattr(self, name)
            if value is not None and self.init_image is None:
                raise InvalidRequest(
                    f"invalid {name}={shown_value(value)}: inpainting edits an image; give init_image too",
                    field=name,
                    value=value,
                )
        if not self.is_inpaint:
            for name, default in INPAINT_DEFAULTS.items():
                if getattr(self, name) != default:
                    raise InvalidRequest(
                        f"invalid {name}={getattr(self, name)!r}: only used for inpainting; give mask_image "
                        "(or outpaint) too",
                        field=name,
                        value=getattr(self, name),
                    )
        if self.invert_mask and self.mask_image is None:
            raise InvalidRequest(
                "invalid invert_mask=True: there is no mask_image to invert (outpaint makes its own mask)",
                field="invert_mask",
                value=True,
            )
        if self.outpaint is not None:
            left, top, right, bottom = self.outpaint
            for name, side, added in (
                ("width", self.width, left + right),
                ("height", self.height, top + bottom),
            ):
                if side is not None and side - added < 8:
                    raise InvalidRequest(
                        f"invalid outpaint={self.outpaint!r}: with outpaint, {name}={side} is the size of "
                        f"the extended image, which leaves {side - added} pixels for the init image",
                        field="outpaint",
                        value=self.outpaint,
                    )
        return self

    @model_validator(mode="after")
    def _hires_fix_fits(self) -> GenerationRequest:
        """The hires fix upscales a text-to-image first pass: refused with an init image (or a
        ControlNet or refiner, which it does not carry into the second pass), and checked for
        a target size within MAX_SIDE and a second pass that runs at least one step once the
        first pass's size and steps are known."""
        hires = self.hires
        if hires is None:
            return self
        for name, value in (("init_image", self.init_image), ("refiner", self.refiner)):
            if value is not None:
                what = "image-to-image" if name == "init_image" else "the SDXL refiner hand-off"
                raise InvalidRequest(
                    f"invalid hires: the hires fix upscales a text-to-image first pass and is not built "
                    f"for {what} ({name} is given); drop hires or {name}",
                    field="hires",
                    value=hires.model_dump(),
                )
        if self.controls:
            raise InvalidRequest(
                "invalid hires: the hires fix is not built together with ControlNet (controls) yet; "
                "drop hires or controls",
                field="hires",
                value=hires.model_dump(),
            )
        if self.width is not None and self.height is not None:
            target = hires.target_size(self.width, self.height)
            field = "hires.scale" if hires.width is None and hires.height is None else "hires.width"
            if hires.width is None and hires.height is not None:
                field = "hires.height"
            if not all(8 <= side <= MAX_SIDE for side in target):
                value = getattr(hires, field.split(".")[1])
                raise InvalidRequest(
                    f"invalid {field}={value!r}: the hires target size {target[0]}x{target[1]} (from the "
                    f"first pass's {self.width}x{self.height}) must be between 8 and {MAX_SIDE} on each side",
                    field=field,
                    value=value,
                )
        if self.steps is not None:
            steps = hires.second_steps(self.steps)
            if effective_steps(steps, hires.strength) < 1:
                raise InvalidRequest(
                    f"invalid hires.strength={hires.strength!r}: hires steps x strength = {steps} x "
                    f"{hires.strength} runs int({steps * hires.strength:g}) = 0 denoising steps; raise "
                    "hires.steps or hires.strength",
                    field="hires.strength",
                    value=hires.strength,
                )
        return self

    @model_validator(mode="after")
    def _eta_is_ddims(self) -> GenerationRequest:
        """Of diffusers' schedulers only DDIM reads the pipelines' `eta`; anywhere else it would
        change nothing, so it is refused rather than ignored."""
        if self.eta is None:
            return self
        spec = None if self.scheduler is None else scheduler_spec(self.scheduler)
        if spec is None or spec[0] != "DDIMScheduler":
            raise InvalidRequest(
                f"invalid eta={self.eta!r}: eta is DDIM's; give scheduler='DDIM' (scheduler="
                f"{self.scheduler!r} does not use it)",
                field="eta",
                value=self.eta,
            )
        return self

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
        """Whether an init image is given (image-to-image, inpainting and outpainting)."""
        return self.init_image is not None

    @property
    def is_inpaint(self) -> bool:
        return self.mask_image is not None or self.outpaint is not None

    @property
    def task(self) -> str:
        """text2img | img2img | inpaint (a mask or outpaint on an init image) | edit (reference images)."""
        if self.reference_images:
            return "edit"
        return "inpaint" if self.is_inpaint else "img2img" if self.is_img2img else "text2img"


DEFAULT_STRENGTH = 0.8  # diffusers' img2img default

# Inpainting-only fields and their defaults: other values without a mask (or outpaint) are refused
INPAINT_DEFAULTS: dict[str, object] = {
    "mask_blur": 4,
    "invert_mask": False,
    "inpaint_area": "whole",
    "inpaint_padding": 32,
    "masked_content": "original",
    "paste_back": True,
}

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
    "true_cfg_scale",
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
    return InvalidRequest(f"invalid {field}={shown_value(value)}: {message}", field=field, value=value)


def shown_value(value: object, limit: int = 80) -> str:
    """A value as an error message shows it: its repr, cut to `limit` characters (a 4 MB
    prompt is not echoed back)."""
    text = repr(value)
    if isinstance(value, str) and len(value) > limit:
        text = repr(value[: limit - 20]) + f"… ({len(value)} characters)"
    return text if len(text) <= limit + 30 else text[:limit] + "…"

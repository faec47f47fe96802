"""Stable Diffusion XL: the base (text-to-image and image-to-image, 1024x1024) and the refiner
(image-to-image only, aesthetic-score conditioned), and the base -> refiner hand-off.

The hand-off is diffusers' "ensemble of experts": the base denoises the high-noise part
(denoising_end=refiner_at) and hands its latents, never decoded, to the refiner, which
finishes from denoising_start=refiner_at. The refiner is leased from the cache beside the
base and shares the base's VAE and second text encoder when their configs match (the
official checkpoints ship the same ones), which saves loading them twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest, UnsupportedFeature
from easel.families.base import INPAINTING_TASKS, Family, Identify, RunOutput

if TYPE_CHECKING:
    from PIL.Image import Image

    from easel.families.base import Loaded
    from easel.models.reference import ModelSource
    from easel.request import GenerationRequest

CONDITIONING = ("original_size", "target_size", "crops_coords_top_left")
AESTHETIC = ("aesthetic_score", "negative_aesthetic_score")
DEFAULT_REFINER_AT = 0.8  # the split diffusers' SDXL documentation uses
DEFAULT_AESTHETIC_SCORE = 6.0  # diffusers' defaults
DEFAULT_NEGATIVE_AESTHETIC_SCORE = 2.5
SMALL_AREA_FRACTION = 0.5  # warn below half the native pixel count (e.g. 1024x1024 -> 724x724)
SHAREABLE = ("vae", "text_encoder_2", "tokenizer_2")


@dataclass(frozen=True)
class SDXLFamily(Family):
    """Behaviour shared by the SDXL base and refiner."""

    refiner: bool = False  # SDXL base and refiner share the img2img class: this tells them apart

    def matches(self, model_index: Mapping[str, Any]) -> bool:
        """The refiner is the SDXL model that requires aesthetic-score conditioning."""
        requires_aesthetics = bool(model_index.get("requires_aesthetics_score", False))
        return super().matches(model_index) and requires_aesthetics == self.refiner

    def prompt_encoders(self, pipe: Any) -> list[tuple[Any, Any, str, bool]]:
        """Both CLIP encoders' penultimate hidden states, concatenated, plus the second's
        pooled output; the refiner has only the second encoder."""
        kind = "PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED"
        encoders = []
        if getattr(pipe, "text_encoder", None) is not None:
            encoders.append((pipe.tokenizer, pipe.text_encoder, kind, False))
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2, kind, True))
        return encoders

    def embedding_targets(self, pipe: Any) -> list[tuple[str, Any, Any]]:
        """An SDXL embedding's clip_l vectors go to the first text encoder (the refiner has
        none), its clip_g vectors to the second."""
        targets = []
        if getattr(pipe, "text_encoder", None) is not None:
            targets.append(("clip_l", pipe.tokenizer, pipe.text_encoder))
        targets.append(("clip_g", pipe.tokenizer_2, pipe.text_encoder_2))
        return targets

    def call_arguments(
        self, pipe: Any, request: GenerationRequest, init_image: Image | None
    ) -> dict[str, Any]:
        arguments = super().call_arguments(pipe, request, init_image)
        for name in CONDITIONING:
            if getattr(request, name) is not None:
                arguments[name] = tuple(getattr(request, name))
        return arguments

    def size_warnings(self, pipe: Any, request: GenerationRequest) -> list[str]:
        """SDXL degrades well below its training size: say so (a warning, not an error)."""
        native_width, native_height = self.default_size(pipe)
        assert request.width is not None and request.height is not None
        if request.width * request.height >= SMALL_AREA_FRACTION * native_width * native_height:
            return []
        return [
            f"{request.width}x{request.height} is much smaller than the {native_width}x{native_height} "
            f"SDXL was trained at; expect worse images (try {native_width}x{native_height})"
        ]


@dataclass(frozen=True)
class SDXLBaseFamily(SDXLFamily):
    """The SDXL base: text-to-image, image-to-image, optionally handing off to a refiner."""

    def check_request(self, request: GenerationRequest) -> None:
        super().check_request(request)
        if request.refiner is not None and request.is_inpaint:
            raise UnsupportedFeature(
                f"refiner={request.refiner!r}: the base -> refiner hand-off does not inpaint; inpaint with "
                "the base alone, or with the refiner as the model (it inpaints on its own)"
            )
        for name in AESTHETIC:
            if getattr(request, name) is not None and request.refiner is None:
                raise UnsupportedFeature(
                    f"{name}={getattr(request, name)!r} conditions the SDXL refiner, not the base: "
                    "give refiner too, or use the refiner as the model"
                )

    def companions(
        self, request: GenerationRequest, source: ModelSource, identify: Identify
    ) -> dict[str, tuple[ModelSource, Family]]:
        if request.refiner is None:
            return {}
        refiner_source, refiner_family = identify(request.refiner)
        if not isinstance(refiner_family, SDXLFamily):
            raise InvalidRequest(
                f"invalid refiner={request.refiner!r}: it is a {refiner_family.name} model; the "
                "refiner must be an SDXL model such as stabilityai/stable-diffusion-xl-refiner-1.0",
                field="refiner",
                value=request.refiner,
            )
        return {"refiner": (refiner_source, refiner_family)}

    def field_defaults(self, request: GenerationRequest) -> dict[str, Any]:
        if request.refiner is None:
            return {}
        return {
            "refiner_at": DEFAULT_REFINER_AT,
            "aesthetic_score": DEFAULT_AESTHETIC_SCORE,
            "negative_aesthetic_score": DEFAULT_NEGATIVE_AESTHETIC_SCORE,
        }

    def run(
        self,
        pipe: Any,
        arguments: dict[str, Any],
        *,
        request: GenerationRequest,
        companions: Mapping[str, Loaded],
    ) -> RunOutput:
        refiner = companions.get("refiner")
        if refiner is None:
            output = super().run(pipe, arguments, request=request, companions=companions)
        else:
            output = self._hand_off(pipe, arguments, request, refiner)
        output.warnings[:0] = self.size_warnings(pipe, request)
        return output

    def _hand_off(
        self, pipe: Any, arguments: dict[str, Any], request: GenerationRequest, refiner: Loaded
    ) -> RunOutput:
        """Base to denoising_end=refiner_at in latent space, refiner from there: the latents
        pass straight from one to the other, never decoded in between."""
        from types import SimpleNamespace

        from easel.request import effective_steps
        from easel.schedulers import build_scheduler

        assert request.steps is not None and request.refiner_at is not None
        callback = arguments["callback_on_step_end"]
        # Progress counts the steps of both stages against one total.
        total = SimpleNamespace(num_timesteps=effective_steps(request.steps, request.strength))
        done = {"base": 0}

        def base_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            done["base"] = step + 1
            return callback(total, step, timestep, tensors)

        def refiner_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            return callback(total, done["base"] + step, timestep, tensors)

        latents = pipe(
            **{**arguments, "callback_on_step_end": base_step},
            denoising_end=request.refiner_at,
            output_type="latent",
        ).images
        fresh_scheduler = build_scheduler(request.scheduler, refiner.pipeline.scheduler)
        # a VAE override decodes the refiner's output too (the base pipe carries it): the
        # refiner shares the base's latent space, and the image is decoded once, at the end
        overrides = {"vae": pipe.vae} if request.vae is not None else {}
        refiner_pipe = refiner.family.derive(
            refiner.pipeline, "img2img", scheduler=fresh_scheduler, **overrides
        )
        refiner_pipe.set_progress_bar_config(disable=True)
        refiner_arguments: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or None,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance_scale,
            "num_images_per_prompt": request.num_images,
            "image": latents,
            "denoising_start": request.refiner_at,
            "generator": arguments["generator"],
            "callback_on_step_end": refiner_step,
        }
        if refiner_pipe.config.requires_aesthetics_score:
            refiner_arguments.update(
                aesthetic_score=request.aesthetic_score,
                negative_aesthetic_score=request.negative_aesthetic_score,
            )
        for name in CONDITIONING:
            if getattr(request, name) is not None:
                refiner_arguments[name] = tuple(getattr(request, name))
        # the refiner encodes the prompts with its own text encoder (warnings came from the base)
        refiner.family.apply_prompts(
            refiner_pipe, request, refiner_arguments, refiner.state, first_step=done["base"]
        )
        return Family.run(refiner.family, refiner_pipe, refiner_arguments, request=request, companions={})


@dataclass(frozen=True)
class SDXLRefinerFamily(SDXLFamily):
    """The SDXL refiner: image-to-image only, conditioned on aesthetic scores. Loaded beside
    a base (as its refiner) it takes the base's VAE and second text encoder when they match."""

    def unsupported_task_message(self, task: str) -> str:
        if task == "edit":
            return super().unsupported_task_message(task)
        return (
            "the SDXL refiner only does image-to-image and inpainting: give an init image (--image), or "
            "use it as the refiner of an SDXL base (--model stabilityai/stable-diffusion-xl-base-1.0 "
            "--refiner stabilityai/stable-diffusion-xl-refiner-1.0)"
        )

    def field_defaults(self, request: GenerationRequest) -> dict[str, Any]:
        return {
            "aesthetic_score": DEFAULT_AESTHETIC_SCORE,
            "negative_aesthetic_score": DEFAULT_NEGATIVE_AESTHETIC_SCORE,
        }

    def call_arguments(
        self, pipe: Any, request: GenerationRequest, init_image: Image | None
    ) -> dict[str, Any]:
        arguments = super().call_arguments(pipe, request, init_image)
        if pipe.config.requires_aesthetics_score:
            arguments.update(
                aesthetic_score=request.aesthetic_score,
                negative_aesthetic_score=request.negative_aesthetic_score,
            )
        return arguments

    def shared_components(self, source: ModelSource, base: Any) -> dict[str, Any]:
        """The base's VAE, text_encoder_2 and tokenizer_2 where this checkpoint's own have
        the same class and configuration (true of the official base and refiner)."""
        shared: dict[str, Any] = {}
        for name in SHAREABLE:
            module = getattr(base, name, None)
            if module is not None and _same_component(source, name, module):
                shared[name] = module
        if "text_encoder_2" not in shared:
            shared.pop("tokenizer_2", None)  # a tokenizer only makes sense with its encoder
        return shared

    def run(
        self,
        pipe: Any,
        arguments: dict[str, Any],
        *,
        request: GenerationRequest,
        companions: Mapping[str, Loaded],
    ) -> RunOutput:
        output = super().run(pipe, arguments, request=request, companions=companions)
        output.warnings[:0] = self.size_warnings(pipe, request)
        return output


def _same_component(source: ModelSource, name: str, module: Any) -> bool:
    """Whether `source`'s component `name` is declared with the same class and config as
    `module`; reads small JSON files only."""
    index = source.read_model_index() or {}
    declared = index.get(name)
    if not declared or declared[-1] != type(module).__name__:
        return False
    if name.startswith("tokenizer"):
        return True  # decided together with its text encoder
    config = _component_config(source, name)
    if config is None:
        return False
    # diffusers configs are mappings; transformers configs save only their non-default values
    theirs = dict(module.config) if isinstance(module.config, Mapping) else module.config.to_diff_dict()
    return _essential(config) == _essential(json.loads(json.dumps(theirs, default=str)))


def _component_config(source: ModelSource, name: str) -> dict[str, Any] | None:
    try:
        if source.kind == "folder":
            path = Path(source.location) / name / "config.json"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source.location, f"{name}/config.json"))
        return json.loads(path.read_text("utf-8"))
    except Exception:  # no readable config: do not share, load the model's own
        return None


def _essential(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config without bookkeeping keys (versions, names, dtypes) that differ between
    identical modules saved at different times."""
    skip = {"architectures", "torch_dtype", "dtype", "transformers_version", "output_hidden_states"}
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in skip}


SDXL = SDXLBaseFamily(
    name="sdxl",
    pipeline_classes=(
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
    ),
    single_file_types=("xl_base", "xl_inpaint"),
    text2img_class="StableDiffusionXLPipeline",
    img2img_class="StableDiffusionXLImg2ImgPipeline",
    default_steps=50,
    default_guidance=5.0,
    tasks=INPAINTING_TASKS,
    options=("refiner", "refiner_at", *AESTHETIC, *CONDITIONING),
    controlnet_text2img_class="StableDiffusionXLControlNetPipeline",
    controlnet_img2img_class="StableDiffusionXLControlNetImg2ImgPipeline",
    control_addition_embed_types=("text_time",),
    inpaint_class="StableDiffusionXLInpaintPipeline",
    controlnet_inpaint_class="StableDiffusionXLControlNetInpaintPipeline",
    loras=True,
    embeddings=True,
)

SDXL_REFINER = SDXLRefinerFamily(
    name="sdxl_refiner",
    pipeline_classes=("StableDiffusionXLImg2ImgPipeline",),
    single_file_types=("xl_refiner",),
    text2img_class="StableDiffusionXLImg2ImgPipeline",  # loads the refiner (it has no text2img)
    img2img_class="StableDiffusionXLImg2ImgPipeline",
    default_steps=50,
    default_guidance=5.0,
    tasks=("img2img", "inpaint"),  # inpainting: StableDiffusionXLInpaintPipeline with its aesthetic scores
    options=(*AESTHETIC, *CONDITIONING),
    inpaint_class="StableDiffusionXLInpaintPipeline",
    embeddings=True,  # its one text encoder (OpenCLIP bigG) takes an SDXL embedding's clip_g
    refiner=True,
)

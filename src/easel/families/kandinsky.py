"""Kandinsky 2.2: a prior (text -> CLIP image embedding) and a decoder (embedding -> image).

The user names the decoder (kandinsky-community/kandinsky-2-2-decoder); its prior comes
from the decoder's model card (front matter `prior: [kandinsky-community/kandinsky-2-2-prior]`,
the same place diffusers' combined pipelines look) or from the request's `prior`. Decoder
and prior are cached as two models and joined per request into diffusers' combined
pipeline, so changing the prior never reloads the decoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest, UnsupportedFeature
from easel.families.base import Family, Identify, RunOutput

if TYPE_CHECKING:
    from PIL.Image import Image

    from easel.families.base import Loaded
    from easel.models.reference import ModelSource
    from easel.request import GenerationRequest

DEFAULT_PRIOR_STEPS = 25  # diffusers' combined-pipeline defaults
DEFAULT_PRIOR_GUIDANCE = 4.0
DEFAULT_SIDE = 512  # the combined pipelines' own height/width default
INPAINT_DECODER_ID = "kandinsky-community/kandinsky-2-2-decoder-inpaint"


@dataclass(frozen=True)
class KandinskyDecoderFamily(Family):
    """The decoder, run as diffusers' combined prior + decoder pipeline."""

    loader_class: str = "KandinskyV22Pipeline"  # the decoder alone; the prior is a companion

    def load_pipeline(
        self,
        source: ModelSource,
        *,
        dtype: Any,
        allow_pickle: bool,
        components: Mapping[str, Any] | None = None,
        **loading: Any,
    ) -> Any:
        """The decoder alone; `loading` passes further from_pretrained options (variant)."""
        import diffusers

        if source.kind == "single_file":
            raise UnsupportedFeature("Kandinsky 2.2 loads from a diffusers folder or repo, not a single file")
        return getattr(diffusers, self.loader_class).from_pretrained(
            source.location,
            dtype=dtype,
            use_safetensors=None if allow_pickle else True,
            **loading,
            **(components or {}),
        )

    def companions(
        self, request: GenerationRequest, source: ModelSource, identify: Identify
    ) -> dict[str, tuple[ModelSource, Family]]:
        reference = request.prior or prior_from_model_card(source)
        if reference is None:
            raise UnsupportedFeature(
                f"{source.reference!r} is a Kandinsky 2.2 decoder whose model card names no prior; "
                "give one with --prior (e.g. kandinsky-community/kandinsky-2-2-prior)"
            )
        prior_source, prior_family = identify(reference)
        if not isinstance(prior_family, KandinskyPriorFamily):
            raise InvalidRequest(
                f"invalid prior={reference!r}: it is a {prior_family.name} model, not a Kandinsky 2.2 "
                "prior (such as kandinsky-community/kandinsky-2-2-prior)",
                field="prior",
                value=reference,
            )
        return {"prior": (prior_source, prior_family)}

    def field_defaults(self, request: GenerationRequest) -> dict[str, Any]:
        return {"prior_steps": DEFAULT_PRIOR_STEPS, "prior_guidance_scale": DEFAULT_PRIOR_GUIDANCE}

    def derive(
        self, base: Any, task: str, *, companions: Mapping[str, Loaded] | None = None, **overrides: Any
    ) -> Any:
        """The combined pipeline from the cached decoder and prior; both schedulers fresh
        (they keep step state), every weight shared."""
        if not companions or "prior" not in companions:
            raise UnsupportedFeature("a Kandinsky 2.2 decoder needs its prior to generate")
        prior = companions["prior"].pipeline
        return self.pipeline_class(task)(
            unet=base.unet,
            scheduler=overrides.get("scheduler", base.scheduler),
            movq=base.movq,
            prior_prior=prior.prior,
            prior_image_encoder=prior.image_encoder,
            prior_text_encoder=prior.text_encoder,
            prior_tokenizer=prior.tokenizer,
            prior_scheduler=type(prior.scheduler).from_config(prior.scheduler.config),
            prior_image_processor=prior.image_processor,
        )

    def default_size(self, pipe: Any) -> tuple[int, int]:
        return DEFAULT_SIDE, DEFAULT_SIDE

    def unsupported_task_message(self, task: str) -> str:
        if task == "inpaint":
            return (
                f"mask_image/outpaint: {self.name} models cannot inpaint with this decoder (its UNet "
                f"takes no mask); use the inpainting decoder, {INPAINT_DECODER_ID}"
            )
        return super().unsupported_task_message(task)

    def check_request(self, request: GenerationRequest) -> None:
        """Kandinsky conditions on one CLIP image embedding made by its prior from the plain
        prompt text: per-word weights have nowhere to go, so a weighted prompt is refused
        instead of silently ignored."""
        super().check_request(request)
        from easel.prompts.encoding import plan_prompt

        if request.clip_skip not in (None, 1):  # the prior's CLIP encodes the text its own way
            error = UnsupportedFeature(
                f"clip_skip={request.clip_skip}: Kandinsky 2.2 cannot honour clip skip (its prior's text "
                "encoder makes one CLIP embedding from its last layer); leave clip_skip out or at 1"
            )
            error.field = "clip_skip"  # type: ignore[attr-defined]
            raise error
        for name in ("variation_seed", "variation_strength", "seed_resize_from"):  # see easel.noise
            if getattr(request, name) not in (None, 0):
                error = UnsupportedFeature(
                    f"{name}={getattr(request, name)!r}: Kandinsky 2.2 draws its decoder's noise after its "
                    "prior's from the same generator, so a variation's noise cannot equal the seed's; "
                    "variation seeds work with SD 1.x/2.x and SDXL models"
                )
                error.field = name  # type: ignore[attr-defined]
                raise error

        from easel.prompts.scheduling import parse_schedule

        for field, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
            if parse_schedule(text, request.prompt_syntax) is not None:
                error = UnsupportedFeature(
                    f"{field}={text!r} uses prompt editing or alternation ('[from:to:when]', '[a|b]'), which "
                    "Kandinsky 2.2 cannot honour (its prior makes one image embedding from the text before "
                    "the decoder's steps); write one prompt"
                )
                error.field = field  # type: ignore[attr-defined]
                raise error
            if plan_prompt(text, request.prompt_syntax, field=field).weighted:
                raise UnsupportedFeature(
                    f"{field}={text!r} uses {request.prompt_syntax} weighting syntax, which Kandinsky 2.2 "
                    "cannot honour (its prior encodes the plain text); remove the weights or use "
                    "prompt_syntax='plain'"
                )

    def apply_prompts(
        self, pipe: Any, request: GenerationRequest, arguments: dict[str, Any], state: dict[str, Any]
    ) -> list[str]:
        """Plain text to the prior, which truncates at 77 tokens: say how much is dropped."""
        from easel.prompts.encoding import CHUNK_TOKENS, count_tokens, plan_prompt

        warnings = []
        for field, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
            plan = plan_prompt(text, request.prompt_syntax, field=field)
            arguments[field] = plan.text or (None if field == "negative_prompt" else "")
            tokens = sum(count_tokens(pipe.prior_tokenizer, plan))
            if tokens > CHUNK_TOKENS:
                warnings.append(
                    f"{field} has {tokens} tokens; Kandinsky 2.2's prior reads only the first "
                    f"{CHUNK_TOKENS}, so {tokens - CHUNK_TOKENS} are dropped"
                )
        return warnings

    def call_arguments(
        self, pipe: Any, request: GenerationRequest, init_image: Image | None
    ) -> dict[str, Any]:
        arguments = super().call_arguments(pipe, request, init_image)
        if request.is_inpaint:
            arguments.pop("strength", None)  # the inpaint decoder always denoises from pure noise
        # img2img resizes the init image to width x height, so both tasks pass the size
        arguments.update(
            width=request.width,
            height=request.height,
            prior_num_inference_steps=request.prior_steps,
            prior_guidance_scale=request.prior_guidance_scale,
        )
        return arguments

    def run(
        self,
        pipe: Any,
        arguments: dict[str, Any],
        *,
        request: GenerationRequest,
        companions: Mapping[str, Loaded],
    ) -> RunOutput:
        """One combined-pipeline call per image, each with its own generator.

        Why: with a negative prompt the prior draws noise for prompt and negative prompt
        together (twice the batch), so diffusers cannot take one generator per image there;
        one image per call keeps easel's convention that image i is exactly the image seed+i
        gives alone. Progress counts the steps of all images against one total.
        """
        from types import SimpleNamespace

        callback = arguments["callback_on_step_end"]
        count = len(arguments["generator"])
        outputs: list[RunOutput] = []
        for index, generator in enumerate(arguments["generator"]):

            def on_step_end(
                pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any], index: int = index
            ) -> dict[str, Any]:
                per_image = int(pipeline.num_timesteps)
                total = SimpleNamespace(num_timesteps=per_image * count)
                return callback(total, index * per_image + step, timestep, tensors)

            single = {
                **arguments,
                "generator": generator,
                "num_images_per_prompt": 1,
                "callback_on_step_end": on_step_end,
            }
            outputs.append(super().run(pipe, single, request=request, companions=companions))
        return RunOutput(
            images=[image for output in outputs for image in output.images],
            nsfw_content_detected=None,
            warnings=list(dict.fromkeys(w for output in outputs for w in output.warnings)),
        )

    def decode_float32(self, pipe: Any, latents: Any) -> Any:
        """Decode with MoVQ in float32, as KandinskyV22Pipeline does."""
        import torch

        movq = pipe.movq
        original = movq.dtype
        try:
            movq.to(dtype=torch.float32)
            with torch.inference_mode():
                image = movq.decode(latents.to(movq.device, torch.float32), force_not_quantize=True)["sample"]
                image = (image * 0.5 + 0.5).clamp(0, 1)
                return image.cpu().permute(0, 2, 3, 1).float().numpy()
        finally:
            movq.to(dtype=original)


@dataclass(frozen=True)
class KandinskyInpaintDecoderFamily(KandinskyDecoderFamily):
    """The inpainting decoder (a 9-channel UNet: latents, masked-image latents, mask), run as
    diffusers' KandinskyV22InpaintCombinedPipeline with the prior its model card names. It
    only inpaints, always from pure noise: there is no strength, and the masked content
    cannot change the start (so only `original` is taken)."""

    loader_class: str = "KandinskyV22InpaintPipeline"

    def check_request(self, request: GenerationRequest) -> None:
        super().check_request(request)
        if request.strength not in (None, 1.0):
            raise UnsupportedFeature(
                f"strength={request.strength!r}: the Kandinsky 2.2 inpainting decoder always repaints from "
                "noise (strength 1); leave strength out"
            )
        if request.masked_content != "original":
            raise UnsupportedFeature(
                f"masked_content={request.masked_content!r}: the Kandinsky 2.2 inpainting decoder starts "
                "from pure noise, so the masked content changes nothing; leave it at original"
            )

    def field_defaults(self, request: GenerationRequest) -> dict[str, Any]:
        return {**super().field_defaults(request), "strength": 1.0}


@dataclass(frozen=True)
class KandinskyPriorFamily(Family):
    """A Kandinsky 2.2 prior: no images of its own, only a companion of a decoder."""

    def unsupported_task_message(self, task: str) -> str:
        return (
            "this is a Kandinsky 2.2 prior, which makes image embeddings, not images: use the decoder "
            "as the model (kandinsky-community/kandinsky-2-2-decoder) and this as its --prior"
        )


def prior_from_model_card(source: ModelSource) -> str | None:
    """The prior a decoder's README.md front matter names (`prior: [org/name]`), if any."""
    if source.kind == "single_file":
        return None
    try:
        if source.kind == "folder":
            card = Path(source.location) / "README.md"
        else:
            from huggingface_hub import hf_hub_download

            card = Path(hf_hub_download(source.location, "README.md"))
        from huggingface_hub.repocard import metadata_load

        metadata = metadata_load(card) or {}
    except Exception:  # no card, or not readable: the caller asks for --prior
        return None
    prior = metadata.get("prior")
    if isinstance(prior, list):
        prior = prior[0] if prior else None
    return str(prior) if prior else None


KANDINSKY22 = KandinskyDecoderFamily(
    name="kandinsky22",
    pipeline_classes=("KandinskyV22Pipeline", "KandinskyV22CombinedPipeline", "KandinskyV22Img2ImgPipeline"),
    single_file_types=(),
    text2img_class="KandinskyV22CombinedPipeline",
    img2img_class="KandinskyV22Img2ImgCombinedPipeline",
    default_steps=100,
    default_guidance=4.0,
    options=("prior", "prior_steps", "prior_guidance_scale"),
)

KANDINSKY22_INPAINT = KandinskyInpaintDecoderFamily(
    name="kandinsky22_inpaint",
    pipeline_classes=("KandinskyV22InpaintPipeline", "KandinskyV22InpaintCombinedPipeline"),
    single_file_types=(),
    text2img_class="KandinskyV22InpaintCombinedPipeline",  # loads nothing: loader_class does
    img2img_class="KandinskyV22InpaintCombinedPipeline",
    default_steps=100,
    default_guidance=4.0,
    tasks=("inpaint",),
    options=("prior", "prior_steps", "prior_guidance_scale"),
    inpaint_class="KandinskyV22InpaintCombinedPipeline",
)

KANDINSKY22_PRIOR = KandinskyPriorFamily(
    name="kandinsky22_prior",
    pipeline_classes=("KandinskyV22PriorPipeline",),
    single_file_types=(),
    text2img_class="KandinskyV22PriorPipeline",
    img2img_class="KandinskyV22PriorPipeline",
    default_steps=25,
    default_guidance=4.0,
    tasks=(),
)

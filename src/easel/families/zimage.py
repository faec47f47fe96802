"""Z-Image Turbo (Tongyi-MAI/Z-Image-Turbo): a single-stream DiT reading one Qwen3 text encoder.

What differs from the SD families, and what easel does about it:

- model_index.json says ZImagePipeline; image-to-image (ZImageImg2ImgPipeline) and inpainting
  (ZImageInpaintPipeline) are derived from the base with from_pipe, sharing its modules.
- Turbo is distilled to 8 transformer evaluations without guidance. In diffusers 0.42 the
  pipeline's num_inference_steps is the number of evaluations (its sigmas are linspace(1, 1/N, N)
  plus the final 0), so the default is 8 steps: the schedule the model card's "9 steps (8 DiT
  forwards)" ran on the pipeline it was written for, and diffusers 0.42's own example. Guidance
  defaults to 0.
- guidance_scale is real classifier-free guidance, written diffusers' way: above 0 the pipeline
  runs the negative prompt beside the prompt and predicts pos + g * (pos - neg) (so g = 0 is no
  CFG, where SD 3.5's is at 1). At 0 a negative prompt would be ignored: it is refused, naming
  negative_prompt. (SD 3.5's checks and call arguments, with the threshold at 0.)
- Prompts are plain text: the pipeline wraps each in the Qwen chat template and reads the Qwen3
  encoder's second-to-last layer. Weighting and BREAK, prompt editing, clip skip, the SD samplers,
  variation seeds, tiling, the hires fix, the latent masked-content fills and textual inversion are
  refused by name (the FLUX.1 checks). The window is max_sequence_length (512) Qwen tokens, the chat template
  included: a longer prompt gets a warning saying how many tokens are dropped; Easel.count_tokens
  counts the prompt's own Qwen tokens against that window.
- LoRAs go through easel's adapter mechanism (diffusers' ZImageLoraLoaderMixin loads them).
- ControlNet: ZImageControlNetModel (alibaba-pai's Z-Image-Turbo-Fun-Controlnet-Union 1.0 / 2.0 / 2.1,
  as a folder or hub repo with config.json or as the published single .safetensors file, whose config
  diffusers fetches by the file's keys) with ZImageControlNetPipeline, text-to-image. That pipeline
  takes one ControlNet, one control image and one scale, and no guidance start/end: a second unit and
  a unit's guidance_start/guidance_end other than 0/1 are refused by name, and so is `mode` (the
  union model reads the kind of control from the image). The inpainting pipeline
  (ZImageControlNetInpaintPipeline) is not served: controls with a mask are refused.
  The ControlNet has no embedders or refiner layers of its own: ZImageControlNetModel.from_transformer,
  which the pipeline's __init__ calls, sets the transformer's (t_embedder, noise_refiner, ...) on it.
  So a cached ControlNet is attached to the base it runs with on every derive (from_pipe), and run()
  takes those modules off it again afterwards (release_shared): a cached ControlNet never keeps an
  evicted base's layers alive or runs with another model's. A ControlNet made for another base is
  refused from its config (class, then width, heads, patches against the transformer, its control
  layers against the transformer's depth, its control input against the latent channels) before its
  weights load; a single file once loaded, before anything runs.
- Latents are (batch, 16, h/8, w/8), not packed: live previews use the least-squares fit of the VAE;
  decoding is FLUX's (scaling, then shift).
- Native size: the pipeline's own default, 1024x1024 (it has no default_sample_size); sizes are
  multiples of 2 x the VAE factor (16), which the pipeline requires.
- dtype auto on a GPU: bfloat16 (the model card's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest
from easel.families.base import INPAINTING_TASKS, Family, Loaded, RunOutput
from easel.families.dit_control import beyond, config_of, refuse_mode, refuse_unfit
from easel.families.sd3 import SD3Family

if TYPE_CHECKING:
    from collections.abc import Mapping

    from easel.models.reference import ModelSource
    from easel.request import GenerationRequest

NATIVE_SIDE = 1024  # ZImagePipeline: `height = height or 1024`
# what ZImageControlNetModel.from_transformer sets on a ControlNet: the transformer's own modules
SHARED_WITH_TRANSFORMER = (
    "t_scale",
    "t_embedder",
    "all_x_embedder",
    "cap_embedder",
    "rope_embedder",
    "noise_refiner",
    "context_refiner",
    "x_pad_token",
    "cap_pad_token",
)


@dataclass(frozen=True)
class ZImageFamily(SD3Family):
    """Z-Image: text-to-image, image-to-image and inpainting. SD 3.5's guidance, negative prompt
    and call arguments (CFG from above 0 here), FLUX.1's prompt checks and float32 re-decode; its
    own size, token window (the chat template) and no CLIP encoder."""

    title: str = "Z-Image Turbo"
    max_sequence_length: int = 512  # the pipeline's default
    t5_tokenizer: str = "tokenizer"  # the Qwen tokenizer: the one whose window counts
    window_encoder: str = "Qwen"
    clip_reads: str = ""  # no CLIP encoder
    encoders: str = "its Qwen3 text encoder, through a chat template"
    latents_note: str = "not checked against its 16-channel latents yet"
    cfg_threshold: float = 0.0  # the pipeline's do_classifier_free_guidance: guidance_scale > 0

    # what a Z-Image ControlNet shares with the transformer whose embedders and refiners it borrows:
    # the width and heads of its blocks (the transformer's rope covers one head), the patches
    CONTROL_KEYS = ("dim", "n_heads", "n_kv_heads", "all_patch_size", "all_f_patch_size")

    def variant(self, source: ModelSource) -> Family:
        """One model (Turbo) so far: this family."""
        return self

    def check_request(self, request: GenerationRequest) -> None:
        """SD 3.5's checks, then what ZImageControlNetPipeline cannot run: a second unit (it takes one
        ControlNet and one image) and a unit's guidance start/end (it runs the ControlNet every step)."""
        super().check_request(request)
        if len(request.controls) > 1:
            raise InvalidRequest(
                f"invalid controls: {len(request.controls)} units, and {self.title} takes one "
                "(ZImageControlNetPipeline runs one ControlNet on one control image); send one unit",
                field="controls",
                value=len(request.controls),
            )
        for index, unit in enumerate(request.controls):
            for name, value, default in (
                ("guidance_start", unit.guidance_start, 0.0),
                ("guidance_end", unit.guidance_end, 1.0),
            ):
                if value != default:
                    raise InvalidRequest(
                        f"invalid controls[{index}].{name}={value!r}: ZImageControlNetPipeline runs its "
                        f"ControlNet on every step (it takes no control_{name}); leave {name} at {default:g}",
                        field=f"controls[{index}].{name}",
                        value=value,
                    )

    def check_control(
        self,
        index: int,
        reference: str,
        config: Mapping[str, Any] | None,
        unet_config: Mapping[str, Any] | None = None,
        *,
        mode: int | str | None = None,
    ) -> None:
        """No union mode; a single file (config None) is checked once loaded; else the class and
        CONTROL_KEYS (Family.check_control), then, against the transformer's config, its control layers'
        places (each a layer the transformer has) and its control input (at least the latent channels:
        the pipeline pads the encoded control image with zeros up to control_in_dim)."""
        refuse_mode(self.title, index, reference, mode)
        if config is None:
            return
        config = config_of(config, self.control_classes[0])
        Family.check_control(self, index, reference, config, unet_config)
        if unet_config is None:
            return
        reasons = []
        layers, refiners = unet_config.get("n_layers"), unet_config.get("n_refiner_layers")
        if beyond(config.get("control_layers_places"), layers):
            reasons.append(
                f"control_layers_places {config.get('control_layers_places')} vs the model's {layers} layers"
            )
        if beyond(config.get("control_refiner_layers_places"), refiners):
            reasons.append(
                f"control_refiner_layers_places {config.get('control_refiner_layers_places')} vs the model's "
                f"{refiners} refiner layers"
            )
        channels = unet_config.get("in_channels")
        if channels is not None and int(config.get("control_in_dim") or 0) < int(channels):
            reasons.append(
                f"control_in_dim {config.get('control_in_dim')} vs the model's {channels} latent channels"
            )
        refuse_unfit(index, reference, self.denoiser, reasons)

    def control_arguments(
        self, request: GenerationRequest, control_images: list[Any], *, img2img: bool
    ) -> dict[str, Any]:
        """ZImageControlNetPipeline's: the one image as control_image and its scale (check_request
        refused other units and guidance start/end)."""
        if not control_images:
            return {}
        return {
            "control_image": control_images[0],
            "controlnet_conditioning_scale": request.controls[0].conditioning_scale,
        }

    def run(
        self,
        pipe: Any,
        arguments: dict[str, Any],
        *,
        request: GenerationRequest,
        companions: Mapping[str, Loaded],
    ) -> RunOutput:
        """Family.run (the control image is encoded with the VAE's mode: no sample to seed, unlike
        SD 3.5's), then the transformer's modules taken off the ControlNet (release_shared)."""
        try:
            return Family.run(self, pipe, arguments, request=request, companions=companions)
        finally:
            controlnet = getattr(pipe, "controlnet", None)
            if controlnet is not None:
                release_shared(controlnet)

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """The pipeline's own default (it has no default_sample_size): 1024x1024."""
        return NATIVE_SIDE, NATIVE_SIDE

    def window_tokens(self, pipe: Any, text: str) -> int:
        """Tokens of `text` as the pipeline feeds them to the encoder: in the chat template (a
        user turn, then the assistant's generation prompt)."""
        return chat_template_tokens(pipe.tokenizer, text, thinking=True)


def release_shared(controlnet: Any) -> None:
    """Take the transformer's modules (SHARED_WITH_TRANSFORMER) off a ZImageControlNetModel, as it was
    loaded: the next derive attaches the base it runs with, and the cache holds its own weights only."""
    for name in SHARED_WITH_TRANSFORMER:
        setattr(controlnet, name, None)


def chat_template_tokens(tokenizer: Any, text: str, *, thinking: bool) -> int:
    """Tokens of `text` in a Qwen3 chat template as a pipeline feeds it to its encoder: a user turn,
    then the assistant's generation prompt (`thinking`: the template's enable_thinking, which
    ZImagePipeline sets and Flux2KleinPipeline does not)."""
    turn = [{"role": "user", "content": text}]
    templated = tokenizer.apply_chat_template(
        turn, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
    )
    return len(tokenizer(templated).input_ids)


ZIMAGE_TURBO = ZImageFamily(
    name="zimage_turbo",
    pipeline_classes=("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"),
    single_file_types=(),
    text2img_class="ZImagePipeline",
    img2img_class="ZImageImg2ImgPipeline",
    tasks=INPAINTING_TASKS,
    inpaint_class="ZImageInpaintPipeline",
    controlnet_text2img_class="ZImageControlNetPipeline",
    control_classes=("ZImageControlNetModel",),
    denoiser="transformer",
    loras=True,  # ZImageLoraLoaderMixin: transformer adapters
    default_steps=8,  # 8 transformer evaluations, what Turbo is distilled for (see above)
    default_guidance=0.0,  # no CFG
    accelerator_dtype="bfloat16",  # the model card's
)

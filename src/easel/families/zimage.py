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
  variation seeds, tiling, the hires fix, the latent masked-content fills, ControlNet (diffusers'
  ZImageControlNetPipeline is not built in easel) and textual inversion are refused by name (the
  FLUX.1 checks). The window is max_sequence_length (512) Qwen tokens, the chat template
  included: a longer prompt gets a warning saying how many tokens are dropped; Easel.count_tokens
  counts the prompt's own Qwen tokens against that window.
- LoRAs go through easel's adapter mechanism (diffusers' ZImageLoraLoaderMixin loads them).
- Latents are (batch, 16, h/8, w/8), not packed: live previews use the least-squares fit of the VAE;
  decoding is FLUX's (scaling, then shift).
- Native size: the pipeline's own default, 1024x1024 (it has no default_sample_size); sizes are
  multiples of 2 x the VAE factor (16), which the pipeline requires.
- dtype auto on a GPU: bfloat16 (the model card's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from easel.families.base import INPAINTING_TASKS, Family
from easel.families.sd3 import SD3Family

if TYPE_CHECKING:
    from easel.models.reference import ModelSource

NATIVE_SIDE = 1024  # ZImagePipeline: `height = height or 1024`


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

    def variant(self, source: ModelSource) -> Family:
        """One model (Turbo) so far: this family."""
        return self

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """The pipeline's own default (it has no default_sample_size): 1024x1024."""
        return NATIVE_SIDE, NATIVE_SIDE

    def window_tokens(self, pipe: Any, text: str) -> int:
        """Tokens of `text` as the pipeline feeds them to the encoder: in the chat template (a
        user turn, then the assistant's generation prompt)."""
        return chat_template_tokens(pipe.tokenizer, text, thinking=True)


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
    loras=True,  # ZImageLoraLoaderMixin: transformer adapters
    default_steps=8,  # 8 transformer evaluations, what Turbo is distilled for (see above)
    default_guidance=0.0,  # no CFG
    accelerator_dtype="bfloat16",  # the model card's
)

"""An image-only Qwen2VLProcessor, so Qwen-Image-Edit loads without torchvision.

Why it exists: the Edit pipelines (QwenImageEditPipeline, QwenImageEditPlusPipeline) read the prompt and the
reference images through a transformers Qwen2VLProcessor (`processor`, saved in the model's processor/
folder). In transformers 5.24 that processor always builds a video processor too, and its class,
Qwen2VLVideoProcessor, requires torchvision: Qwen2VLProcessor.from_pretrained, AutoProcessor and so the
pipelines' own from_pretrained fail with "Qwen2VLVideoProcessor requires the Torchvision library".
easel does not install torchvision (PyPI's must match the user's torch build). The pipelines only ever call
`processor(text=..., images=...)` (no videos), so this subclass leaves the video half out: its __init__
takes the image processor and the tokenizer alone (ProcessorMixin reads the sub-processors from __init__'s
signature), the image processor is transformers' own PIL implementation (Qwen2VLImageProcessorPil, what
Qwen2VLImageProcessor falls back to without torchvision), and the text and image handling is
Qwen2VLProcessor's, unchanged. A video passed to it fails naming the missing video processor.

Imported only when an Edit model loads (it imports transformers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

PROCESSOR_FOLDER = "processor"  # where the Edit repos keep it (model_index.json: Qwen2VLProcessor)


class QwenImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor (which needs torchvision): tokenizer + image processor."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        # Qwen2VLProcessor.__init__'s token attributes, then ProcessorMixin's with the two sub-processors
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs: Any) -> str:
        raise ValueError("videos: this processor reads images only (a video processor needs torchvision)")


def load_image_only_processor(location: str | Path, **kwargs: Any) -> QwenImageOnlyProcessor:
    """The model's processor/ folder (a repo id in the HF cache or a local folder) as an image-only
    processor: its tokenizer and its image processor config read with the PIL image processor."""
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessorPil

    tokenizer = Qwen2Tokenizer.from_pretrained(location, subfolder=PROCESSOR_FOLDER, **kwargs)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(location, subfolder=PROCESSOR_FOLDER, **kwargs)
    return QwenImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer)

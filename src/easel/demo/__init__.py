"""The bundled demo model: a tiny Stable-Diffusion-1.5-architecture model trained here.

Why it exists: no pretrained weights can be downloaded where easel is built and tested, and a
random model only draws noise. This model is trained (by `python -m easel.demo.train`) on
procedurally drawn 64x64 images of one coloured shape on a coloured background
("a red circle on a blue background"), so easel shows real prompt, guidance, negative-prompt,
img2img and ControlNet behaviour offline, and tests can check what the pipelines DO.
It is easel's default model when no --model is given.
"""

from __future__ import annotations

from pathlib import Path


def demo_model_path() -> Path:
    """Folder of the shipped diffusers StableDiffusionPipeline (save_pretrained layout)."""
    return Path(__file__).resolve().parent / "model"


def demo_inpaint_model_path() -> Path:
    """Folder of the shipped StableDiffusionInpaintPipeline: the demo model fine-tuned with a
    9-channel UNet (easel.demo.train_inpaint); `--model easel-demo-inpaint`."""
    return Path(__file__).resolve().parent / "inpaint"


def demo_lora_path() -> Path:
    """Folder of the shipped LoRAs: easel-demo-outline (every shape drawn as an outline),
    trained by easel.demo.train_lora; `--lora easel-demo-outline:0.8`."""
    return Path(__file__).resolve().parent / "lora"


def demo_controlnet_path() -> Path:
    """Folder of the shipped ControlNetModel (conditioned on a white-on-black shape mask)."""
    return Path(__file__).resolve().parent / "controlnet"

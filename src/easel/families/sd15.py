"""Stable Diffusion 1.x/2.x: the seed document's first family (512x512, 50 steps, CFG 7.5)."""

from easel.families.base import Family

SD15 = Family(
    name="sd15",
    pipeline_classes=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    single_file_types=("v1", "v2"),
    text2img_class="StableDiffusionPipeline",
    img2img_class="StableDiffusionImg2ImgPipeline",
    default_steps=50,
    default_guidance=7.5,
    controlnet_text2img_class="StableDiffusionControlNetPipeline",
    controlnet_img2img_class="StableDiffusionControlNetImg2ImgPipeline",
)

"""Stable Diffusion 1.x/2.x: the seed document's first family (512x512, 50 steps, CFG 7.5)."""

from easel.families.base import INPAINTING_TASKS, Family

SD15 = Family(
    name="sd15",
    # a dedicated inpainting checkpoint (stable-diffusion-v1-5/stable-diffusion-inpainting) names
    # its inpaint pipeline; it loads as the same base and only inpaints (Family.check_unet)
    pipeline_classes=(
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    ),
    single_file_types=("v1", "v2", "inpainting", "inpainting_v2"),
    text2img_class="StableDiffusionPipeline",
    img2img_class="StableDiffusionImg2ImgPipeline",
    default_steps=50,
    default_guidance=7.5,
    tasks=INPAINTING_TASKS,
    controlnet_text2img_class="StableDiffusionControlNetPipeline",
    controlnet_img2img_class="StableDiffusionControlNetImg2ImgPipeline",
    inpaint_class="StableDiffusionInpaintPipeline",
    controlnet_inpaint_class="StableDiffusionControlNetInpaintPipeline",
    loras=True,
    embeddings=True,
)

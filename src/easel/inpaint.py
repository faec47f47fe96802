"""Inpainting and outpainting: the mask, the picture the pipeline sees, and the paste-back.

The procedure is AUTOMATIC1111's (modules/processing.py, StableDiffusionProcessingImg2Img),
run through diffusers' inpaint pipelines:

1. The mask is read as A1111 reads one (storage.images.as_mask: alpha of a transparent mask,
   else luminance; white = repaint), resized to the init image when only its size differs,
   inverted with invert_mask, and blurred by mask_blur pixels with A1111's gaussian
   (cv2.GaussianBlur, sigma = mask_blur, kernel 2*int(2.5*sigma+0.5)+1, along x then y).
2. Outpainting puts the init image on a larger canvas, fills the new border from the image's
   edge pixels and makes the border the mask (a mask_image, if given, still marks the image).
3. masked_content: `fill` replaces the masked area by the picture's blurred colours (A1111's
   masking.fill, and like A1111 also under the latent modes); `latent_noise` / `latent_nothing`
   replace the masked area of the encoded image by the image's own seeded noise / zeros before
   the noise of the first step is added (see install_latent_fill).
4. inpaint_area `whole` works on the whole picture; `masked` works on a box around the blurred
   mask, padded by inpaint_padding and grown to the model's native aspect ratio, at the model's
   native size: exactly what diffusers' padding_mask_crop does (its own get_crop_region and
   "fill" resize), done here so the pipeline can return numpy images for the NaN check.
5. The pipeline gets the blurred mask and binarises it (>= 0.5) for the latents, as A1111
   rounds its latent mask. Paste-back composites the result over the original through the
   blurred mask (A1111 doubles it for the whole picture, so everything the latent mask
   repaints shows fully) with diffusers' apply_overlay, A1111's premultiplied compositing:
   where the blurred mask is 0 the original pixels are kept exactly.

Differences from A1111, by design of diffusers: its schedulers add the first step's noise as
x_t = sqrt(a) x0 + sqrt(1 - a) noise (k-diffusion: x0 + sigma noise), and strength 1 starts
from pure noise, so the masked content matters only below strength 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL.Image import Image

    from easel.request import GenerationRequest

ASPECT_TOLERANCE = 0.02  # as control images: rounding sides to multiples of 8 is no mismatch
# A1111's img2img API and infotext: inpainting_fill index -> masked_content, and the words
# its `parameters` text uses for each value
A1111_INPAINTING_FILL = ("fill", "original", "latent_noise", "latent_nothing")
A1111_MASKED_CONTENT = {
    "original": "original",
    "fill": "fill",
    "latent_noise": "latent noise",
    "latent_nothing": "latent nothing",
}
FILL_BLURS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))  # (radius, times): A1111's fill


def load_mask(request: GenerationRequest, *, stored_inputs: Path | None = None) -> Image | None:
    """The request's mask_image as an L image (path, URL, data URL, stored input); errors
    name mask_image."""
    if request.mask_image is None:
        return None
    from easel.storage.images import load_image

    return load_image(request.mask_image, field="mask_image", stored_inputs=stored_inputs, mask=True)


def check_inputs(request: GenerationRequest, init_image: Image | None, mask: Image | None) -> list[str]:
    """What can be refused before any weights load: a mask of another shape than the init
    image, a mask with nothing to repaint, an outpainted canvas beyond the size limit.
    Returns warnings (a mask of the same shape but another size is resized)."""
    from PIL import ImageOps

    from easel.request import MAX_SIDE

    if not request.is_inpaint or init_image is None:
        return []
    warnings = []
    if mask is not None:
        ours, theirs = init_image.width / init_image.height, mask.width / mask.height
        if abs(theirs - ours) / ours > ASPECT_TOLERANCE:
            raise InvalidRequest(
                f"invalid mask_image size {mask.width}x{mask.height}: its shape does not match the init "
                f"image's {init_image.width}x{init_image.height}; the mask must cover the same picture",
                field="mask_image",
                value=f"{mask.width}x{mask.height}",
            )
        if mask.size != init_image.size:
            warnings.append(
                f"mask_image is {mask.width}x{mask.height} and the init image "
                f"{init_image.width}x{init_image.height}: the mask was resized to match"
            )
        marked = ImageOps.invert(mask) if request.invert_mask else mask
        if request.outpaint is None and marked.getextrema()[1] == 0:
            inverted = " once inverted (invert_mask: it is all white)" if request.invert_mask else ""
            raise InvalidRequest(
                f"invalid mask_image: nothing to repaint, the mask is all black{inverted}; "
                "white marks what to repaint",
                field="mask_image",
                value=request.mask_image if len(request.mask_image or "") <= 200 else None,
            )
    if request.outpaint is not None:
        width, height = canvas_size(request, init_image.width, init_image.height)
        width, height = request.width or width, request.height or height
        if max(width, height) > MAX_SIDE:
            raise InvalidRequest(
                f"invalid outpaint={request.outpaint!r}: the extended image would be {width}x{height}, "
                f"more than {MAX_SIDE} pixels on a side",
                field="outpaint",
                value=request.outpaint,
            )
    return warnings


def canvas_size(request: GenerationRequest, init_width: int, init_height: int) -> tuple[int, int]:
    """The output size an init image of that size gives (multiples of 8, outpaint added)."""
    left, top, right, bottom = request.outpaint or (0, 0, 0, 0)
    return max(8, init_width // 8 * 8) + left + right, max(8, init_height // 8 * 8) + top + bottom


def init_size(request: GenerationRequest) -> tuple[int | None, int | None]:
    """The size the init image is fitted to: the output size, less the outpainted border."""
    if request.outpaint is None or request.width is None or request.height is None:
        return request.width, request.height
    left, top, right, bottom = request.outpaint
    return request.width - left - right, request.height - top - bottom


def blur_mask(mask: Image, radius: int) -> Image:
    """A1111's mask blur: a gaussian of sigma `radius` along x, then along y (OpenCV)."""
    if radius <= 0:
        return mask
    import cv2
    import numpy as np
    from PIL import Image as PILImage

    kernel = 2 * int(2.5 * radius + 0.5) + 1
    array = cv2.GaussianBlur(np.asarray(mask), (kernel, 1), radius)
    array = cv2.GaussianBlur(array, (1, kernel), radius)
    return PILImage.fromarray(array)


def fill_masked(image: Image, mask: Image) -> Image:
    """The masked area replaced by the picture's own colours, blurred ever finer from the
    unmasked area inwards (A1111's masked content "fill"); unmasked pixels stay as they are."""
    from PIL import Image as PILImage
    from PIL import ImageFilter, ImageOps

    kept = PILImage.new("RGBa", image.size)  # premultiplied: masked pixels carry no colour
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    filled = PILImage.new("RGBA", image.size)
    for radius, times in FILL_BLURS:
        layer = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            filled.alpha_composite(layer)
    return filled.convert("RGB")


def outpaint_canvas(image: Image, outpaint: tuple[int, int, int, int]) -> Image:
    """`image` on a larger canvas whose border repeats the image's edge pixels."""
    import numpy as np
    from PIL import Image as PILImage

    left, top, right, bottom = outpaint
    array = np.pad(np.asarray(image.convert("RGB")), ((top, bottom), (left, right), (0, 0)), mode="edge")
    return PILImage.fromarray(array)


@dataclass
class InpaintJob:
    """One inpainting run, prepared: what the pipeline is given and how its output is put back."""

    image: Image  # the pipeline's `image`: the picture (canvas, fill and crop applied)
    mask: Image  # the pipeline's `mask_image`: the blurred mask (cropped for inpaint_area=masked)
    size: tuple[int, int]  # (width, height) the pipeline works at
    original: Image  # the whole picture being edited (the canvas when outpainting)
    overlay: Image  # paste-back mask, at the original's size
    crop: tuple[int, int, int, int] | None  # inpaint_area=masked: the box worked on
    processor: Any  # the pipeline's VaeImageProcessor (apply_overlay)
    paste_back: bool = True
    latent_fill: str | None = None  # latent_noise | latent_nothing
    user_mask: Image | None = None  # mask_image fitted to the init image, as read (the gallery keeps it)

    def arguments(self) -> dict[str, Any]:
        """The pipeline arguments beside image and strength."""
        return {"mask_image": self.mask, "width": self.size[0], "height": self.size[1]}

    def crop_controls(self, images: list[Image]) -> list[Image]:
        """Control images (fitted to the output size) cropped as the picture is, as the
        ControlNet inpaint pipelines do with padding_mask_crop."""
        if self.crop is None:
            return images
        width, height = self.size
        return [self.processor.resize(i.crop(self.crop), height, width, resize_mode="fill") for i in images]

    def compose(self, images: list[Image], flagged: list[bool] | None = None) -> list[Image]:
        """The outputs put back over the original: through the blurred mask (paste_back), or,
        without paste-back, as they came (inpaint_area=masked: the whole box pasted in). An
        image the safety checker `flagged` stays as the checker left it (black)."""
        if not self.paste_back and self.crop is None:
            return list(images)
        overlay = self.overlay
        if not self.paste_back:
            from PIL import Image as PILImage

            overlay = PILImage.new("L", self.original.size, 0)
            overlay.paste(255, self.crop)
        flagged = flagged or [False] * len(images)
        return [
            image if hidden else self.processor.apply_overlay(overlay, self.original, image, self.crop)
            for image, hidden in zip(images, flagged, strict=True)
        ]

    def install_latent_fill(self, pipe: Any) -> None:
        """latent_noise / latent_nothing: wrap this request's pipeline's prepare_latents so
        the masked area of the image latents is the image's noise (A1111 draws it from the
        image's seed, as the first step's noise is) or zero before the first step's noise is
        added. The blend of the known region each step uses the unchanged image latents, which
        only matter outside the mask. No extra random numbers are drawn."""
        if self.latent_fill is None:
            return
        prepare = pipe.prepare_latents
        width, height = self.size
        fill, mask_image = self.latent_fill, self.mask

        def prepare_latents(*args: Any, **kwargs: Any) -> Any:
            given = (len(args) > 7 and args[7] is not None) or kwargs.get("latents") is not None
            if kwargs.get("is_strength_max", True) or given or not kwargs.get("add_noise", True):
                return prepare(*args, **kwargs)  # pure noise (strength 1): nothing to replace
            latents, noise, image_latents = prepare(
                *args, **{**kwargs, "return_noise": True, "return_image_latents": True}
            )
            import torch.nn.functional as functional

            mask = pipe.mask_processor.preprocess(mask_image, height=height, width=width)
            mask = functional.interpolate(mask, size=tuple(latents.shape[-2:])).to(latents)
            start = image_latents * (1 - mask)
            if fill == "latent_noise":
                start = start + noise * mask
            outputs = (pipe.scheduler.add_noise(start, noise, kwargs["timestep"]),)
            if kwargs.get("return_noise"):
                outputs += (noise,)
            if kwargs.get("return_image_latents"):
                outputs += (image_latents,)
            return outputs

        pipe.prepare_latents = prepare_latents


def prepare(
    request: GenerationRequest,
    init_image: Image,
    mask: Image | None,
    pipe: Any,
    native_size: tuple[int, int],
) -> InpaintJob:
    """The inpainting job for a concrete request: `init_image` fitted to init_size(request),
    `mask` as loaded (load_mask), `pipe` the task pipeline (its image processors),
    `native_size` the model's (inpaint_area=masked works at it)."""
    from PIL import Image as PILImage
    from PIL import ImageOps

    processor = getattr(pipe, "image_processor", None)
    if not hasattr(processor, "apply_overlay"):  # Kandinsky's combined pipelines have none
        from diffusers.image_processor import VaeImageProcessor

        processor = VaeImageProcessor()
    marked = None
    if mask is not None:
        if mask.size != init_image.size:
            mask = mask.resize(init_image.size, PILImage.Resampling.LANCZOS)
        marked = ImageOps.invert(mask) if request.invert_mask else mask
    if request.outpaint is not None:
        left, top, _, _ = request.outpaint
        original = outpaint_canvas(init_image, request.outpaint)
        full = PILImage.new("L", original.size, 255)
        if marked is not None:
            full.paste(marked, (left, top))
        else:
            full.paste(0, (left, top, left + init_image.width, top + init_image.height))
    else:
        assert marked is not None  # a request is inpainting with a mask or outpaint
        original, full = init_image, marked
    blurred = blur_mask(full, request.mask_blur)
    job = InpaintJob(
        image=original,
        mask=blurred,
        size=original.size,
        original=original,
        overlay=_doubled(blurred),
        crop=None,
        processor=processor,
        paste_back=request.paste_back,
        latent_fill=request.masked_content if request.masked_content.startswith("latent_") else None,
        user_mask=mask,
    )
    if request.inpaint_area == "masked":
        width, height = native_size
        job.crop = processor.get_crop_region(blurred, width, height, pad=request.inpaint_padding)
        job.image = processor.resize(original.crop(job.crop), height, width, resize_mode="fill")
        mask_processor = getattr(pipe, "mask_processor", processor)
        job.mask = mask_processor.resize(blurred.crop(job.crop), height, width, resize_mode="fill")
        job.size = (width, height)
        job.overlay = blurred  # A1111 (and diffusers) paste a masked box back through the mask as is
    if request.masked_content != "original":  # A1111 fills for the latent modes too
        job.image = fill_masked(job.image, job.mask)
    return job


def _doubled(mask: Image) -> Image:
    """A1111's paste-back mask for the whole picture: the blurred mask x 2, so what the
    binarised latent mask repaints (>= 50%) shows fully and the blur fades outside it."""
    return mask.point(lambda value: min(255, value * 2))

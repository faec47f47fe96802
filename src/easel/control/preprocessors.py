"""Control-image preprocessors: an input picture -> the map a ControlNet was trained on.

`none` passes the image through (it already is a pose/depth/edge map, as in the diffusers
OpenPose example); `canny` is OpenCV's edge detector (what diffusers' and A1111's canny
examples use, so the same thresholds give the same edges); the other names are detectors from
controlnet_aux, an optional extra (`pip install 'easel[detectors]'`) because it pulls
torchvision and timm, and their weights live in the hub repo lllyasviel/Annotators.
Names are plain data so the request can validate them without importing anything heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from easel.errors import UnsupportedFeature

if TYPE_CHECKING:
    from PIL.Image import Image

ANNOTATORS_REPO = "lllyasviel/Annotators"
# preprocessor name -> controlnet_aux detector class (loaded from ANNOTATORS_REPO)
DETECTORS = {
    "openpose": "OpenposeDetector",
    "depth": "MidasDetector",
    "hed": "HEDDetector",
    "lineart": "LineartDetector",
    "mlsd": "MLSDdetector",
    "normalbae": "NormalBaeDetector",
}
PREPROCESSORS = ("none", "canny", *DETECTORS)
DEFAULT_CANNY_LOW = 100  # the thresholds diffusers' ControlNet documentation uses
DEFAULT_CANNY_HIGH = 200


def preprocess(image: Image, name: str, *, canny_low: int, canny_high: int, field: str) -> Image:
    """The conditioning image for `image` under preprocessor `name`, at `image`'s size.

    `field` ("controls[0].preprocessor") names the request field in error messages."""
    if name == "none":
        return image
    if name == "canny":
        return canny(image, canny_low, canny_high)
    return _detect(image, name, field=field)


def canny(image: Image, low: int, high: int) -> Image:
    """OpenCV Canny edges of the RGB pixels as a white-on-black RGB image (the diffusers
    ControlNet example's exact steps, so its canny ControlNets see what they were trained on)."""
    import cv2
    import numpy as np
    from PIL import Image as PILImage

    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return PILImage.fromarray(np.stack([edges] * 3, axis=2))


def _detect(image: Image, name: str, *, field: str) -> Image:
    """Run a controlnet_aux detector; a missing package or missing weights is a message
    saying what to install or download, never a traceback."""
    try:
        import controlnet_aux
    except Exception as error:  # ImportError, or torchvision failing to import inside it
        raise UnsupportedFeature(
            f"{field}={name!r} needs the controlnet_aux detectors, which are not usable here "
            f"({type(error).__name__}: {error}); install them with: pip install 'easel[detectors]' "
            "(it pulls torchvision and timm, which must match your torch), or preprocess the image "
            "yourself and use --preprocess none"
        ) from None
    detector_class = getattr(controlnet_aux, DETECTORS[name])
    try:
        detector = detector_class.from_pretrained(ANNOTATORS_REPO)
    except Exception as error:
        raise UnsupportedFeature(
            f"{field}={name!r}: the detector's weights are not available ({type(error).__name__}: "
            f"{error}); download them once with: hf download {ANNOTATORS_REPO} (they go to the "
            "Hugging Face cache, then work offline)"
        ) from None
    try:
        detected = detector(image)
    except Exception as error:
        raise UnsupportedFeature(
            f"{field}={name!r}: the detector failed ({type(error).__name__}: {error})"
        ) from None
    return detected.convert("RGB").resize(image.size)

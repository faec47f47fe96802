"""easel: local image generation on Hugging Face diffusers.

    from easel import Easel, GenerationRequest
    result = Easel().generate(GenerationRequest(prompt="a red circle on a blue background", seed=1))
    result.images[0].save("out.png")

Importing easel is cheap: torch and diffusers load when the first image is made.
"""

from easel.config import Settings
from easel.engine import Easel
from easel.errors import (
    Cancelled,
    EaselError,
    GenerationFailed,
    InvalidRequest,
    ModelNotFound,
    UnsupportedFeature,
)
from easel.request import ControlUnit, GenerationRequest
from easel.result import GenerationResult, Progress

__all__ = [
    "Cancelled",
    "ControlUnit",
    "Easel",
    "EaselError",
    "GenerationFailed",
    "GenerationRequest",
    "GenerationResult",
    "InvalidRequest",
    "ModelNotFound",
    "Progress",
    "Settings",
    "UnsupportedFeature",
]

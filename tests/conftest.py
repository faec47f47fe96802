"""Test setup: offline, one torch thread, tiny models in a temporary HF cache.

The Hugging Face environment must be set before huggingface_hub is imported (it reads it
once), so it is set in pytest_configure, which runs before any test module is imported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

TINY_SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY_SD15_OLD_ID = "runwayml/stable-diffusion-v1-5"
TINY_FLAGGING = "CompVis/stable-diffusion-v1-4"  # its safety checker flags every image


def pytest_configure(config: pytest.Config) -> None:
    root = Path(tempfile.mkdtemp(prefix="easel-tests-"))
    config._easel_root = root  # type: ignore[attr-defined]
    os.environ["HF_HOME"] = str(root / "hf")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["EASEL_HOME"] = str(root / "easel-home")
    os.environ["EASEL_THREADS"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_unconfigure(config: pytest.Config) -> None:
    root = getattr(config, "_easel_root", None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def hf_home() -> Path:
    """The temporary HF cache, with tiny SD 1.5 models installed under real repo ids."""
    import torch

    torch.set_num_threads(1)
    from easel.testing.tiny_models import build_tiny_sd15, install_into_hf_cache, install_tiny_sd15

    home = Path(os.environ["HF_HOME"])
    install_tiny_sd15(home, (TINY_SD15, TINY_SD15_OLD_ID), safety="never")
    install_into_hf_cache(build_tiny_sd15("always"), home, TINY_FLAGGING)
    return home


@pytest.fixture(scope="session")
def engine(hf_home: Path):
    """One engine for the session, as a long-running server would have."""
    from easel import Easel, Settings

    return Easel(Settings.from_env())


@pytest.fixture(scope="session")
def init_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x64 RGB picture: left half red, right half blue."""
    from PIL import Image

    path = tmp_path_factory.mktemp("inputs") / "init.png"
    image = Image.new("RGB", (64, 64), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 32, 64))
    image.save(path)
    return path


TINY_SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
TINY_SDXL_REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
TINY_KANDINSKY = "kandinsky-community/kandinsky-2-2-decoder"
TINY_KANDINSKY_PRIOR = "kandinsky-community/kandinsky-2-2-prior"


@pytest.fixture(scope="session")
def sdxl_models(hf_home: Path) -> dict[str, Path]:
    """Tiny SDXL base and refiner (64x64 native) under their real repo ids; snapshot folders."""
    from easel.testing.tiny_models import install_tiny_sdxl

    base, refiner = install_tiny_sdxl(hf_home)
    return {TINY_SDXL: base, TINY_SDXL_REFINER: refiner}


@pytest.fixture(scope="session")
def kandinsky_models(hf_home: Path) -> dict[str, Path]:
    """Tiny Kandinsky 2.2 decoder (whose model card names its prior) and prior; snapshot folders."""
    from easel.testing.tiny_models import install_tiny_kandinsky

    decoder, prior = install_tiny_kandinsky(hf_home)
    return {TINY_KANDINSKY: decoder, TINY_KANDINSKY_PRIOR: prior}


TINY_OPENPOSE = "lllyasviel/control_v11p_sd15_openpose"
TINY_CANNY = "lllyasviel/sd-controlnet-canny"
TINY_DEPTH = "lllyasviel/control_v11f1p_sd15_depth"
TINY_SDXL_CANNY = "diffusers/controlnet-canny-sdxl-1.0"


@pytest.fixture(scope="session")
def controlnet_models(hf_home: Path, sdxl_models: dict[str, Path]) -> dict[str, Path]:
    """Tiny ControlNets (from_unet on the tiny SD 1.5 / SDXL UNets, output convolutions
    randomised so they do steer) under real ControlNet repo ids; snapshot folders."""
    from easel.testing.tiny_models import install_tiny_controlnets

    return install_tiny_controlnets(hf_home)


TINY_SD15_INPAINT = "stable-diffusion-v1-5/stable-diffusion-inpainting"
TINY_SDXL_INPAINT = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
TINY_KANDINSKY_INPAINT = "kandinsky-community/kandinsky-2-2-decoder-inpaint"


@pytest.fixture(scope="session")
def inpaint_models(
    hf_home: Path, sdxl_models: dict[str, Path], kandinsky_models: dict[str, Path]
) -> dict[str, Path]:
    """Tiny dedicated inpainting models (9-channel UNets: SD 1.5, SDXL, the Kandinsky 2.2
    decoder, whose card names the prior) under their real repo ids, beside the tiny SD 1.5, SDXL
    and Kandinsky bases (the 4-channel SD/SDXL UNets inpaint too); snapshot folders."""
    from easel.testing.tiny_models import install_tiny_inpainting

    return install_tiny_inpainting(hf_home)


TINY_FLUX_DEV = "black-forest-labs/FLUX.1-dev"
TINY_FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"


@pytest.fixture(scope="session")
def flux_models(hf_home: Path) -> dict[str, Path]:
    """Tiny FLUX.1-dev (guidance_embeds) and FLUX.1-schnell under their real repo ids (CLIP + T5
    tokenizers built offline, 256x256 native); snapshot folders."""
    from easel.testing.tiny_flux import install_tiny_flux

    return install_tiny_flux(hf_home)


TINY_FLUX_KONTEXT = "black-forest-labs/FLUX.1-Kontext-dev"


@pytest.fixture(scope="session")
def flux_kontext_models(hf_home: Path) -> dict[str, Path]:
    """Tiny FLUX.1 Kontext [dev] (FLUX.1-dev's components, FluxKontextPipeline's model_index.json,
    256x256 native) under its real repo id; built only when a test asks; snapshot folders."""
    from easel.testing.tiny_flux import install_tiny_flux_kontext

    return install_tiny_flux_kontext(hf_home)


TINY_SD35_MEDIUM = "stabilityai/stable-diffusion-3.5-medium"


@pytest.fixture(scope="session")
def sd3_models(hf_home: Path) -> dict[str, Path]:
    """Tiny SD 3.5 medium (CLIP-L + CLIP-G + T5, tokenizers built offline, 16-channel VAE, 64x64
    native) under its real repo id; snapshot folders."""
    from easel.testing.tiny_sd3 import install_tiny_sd3

    return install_tiny_sd3(hf_home)


TINY_ZIMAGE_TURBO = "Tongyi-MAI/Z-Image-Turbo"


@pytest.fixture(scope="session")
def zimage_models(hf_home: Path) -> dict[str, Path]:
    """Tiny Z-Image Turbo (Qwen3 encoder, Qwen tokenizer with its chat template built offline,
    16-channel VAE) under its real repo id; built only when a test asks; snapshot folders."""
    from easel.testing.tiny_zimage import install_tiny_zimage

    return install_tiny_zimage(hf_home)


TINY_QWEN_IMAGE = "Qwen/Qwen-Image"


@pytest.fixture(scope="session")
def qwen_image_models(hf_home: Path) -> dict[str, Path]:
    """Tiny Qwen-Image (Qwen2.5-VL encoder, Qwen tokenizer with ChatML and vision tokens built
    offline, 4-channel 5-D VAE, 664x664 native) under its real repo id; built only when a test
    asks; snapshot folders."""
    from easel.testing.tiny_qwen_image import install_tiny_qwen_image

    return install_tiny_qwen_image(hf_home)


TINY_FLUX2_KLEIN = "black-forest-labs/FLUX.2-klein-4B"
TINY_FLUX2_KLEIN_BASE = "black-forest-labs/FLUX.2-klein-base-9B"


@pytest.fixture(scope="session")
def flux2_models(hf_home: Path) -> dict[str, Path]:
    """Tiny FLUX.2 [klein] (distilled) and [klein] base (Qwen3 encoder, Qwen tokenizer with its chat
    template built offline, batch-normalised VAE, 256x256 native) under their real repo ids; built
    only when a test asks; snapshot folders."""
    from easel.testing.tiny_flux2 import install_tiny_flux2

    return install_tiny_flux2(hf_home)
